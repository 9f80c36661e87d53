"""The memorization benchmark (seed 003): learn random labels for random images.

Inputs are N(0, 1) images, labels uniform over the classes, both fixed by `data_seed`, so the
only way to score well is to memorize. The validation set (never trained on) shows that nothing
but memorization is possible. Fitness is one of FITNESS_KINDS (problem.fitness), from the
network's logits over the training set (`fitness_of`, the one rule every evaluation path calls):
    cross_entropy     minus the mean training cross-entropy (the default)
    memorized         points memorized: training points whose largest logit is their label's
    memorized_margin  memorized + (1 + m / (1 + |m|)) / 2, where m is the mean over the training
                      points of (the label's logit - the largest other logit), clamped to
                      [-MARGIN_CLAMP, MARGIN_CLAMP]. The added term lies in (0, 1), so one more
                      point memorized always wins and the margin only breaks ties. A softsign
                      rather than a logistic sigmoid: in float64 the logistic is exactly 1.0 once
                      m passes ~37, where the tie-break would equal a whole point.

Seed 003's parameters: 64x64x3 images, 10 classes, batches of 32, 16 training batches and 2
validation batches, convolutions 8/4/3 with channels 32/64/64 and strides 4/2/1, hidden 512.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from evoarena.encoding import batched, nets

EVAL_CHUNK = 512  # images per forward pass when scoring; bounds activation memory
FITNESS_KINDS = ("cross_entropy", "memorized", "memorized_margin")
MARGIN_CLAMP = 1e6  # |m| above this would round the tie-break term up to 1.0


@dataclass(frozen=True)
class MemorizeData:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    fitness: str = "cross_entropy"  # one of FITNESS_KINDS


def make_data(problem: dict, device: torch.device | str = "cpu") -> MemorizeData:
    """The dataset of a `problem` spec (as a dict): the same on every machine for the same data_seed."""
    rng = np.random.default_rng(problem["data_seed"])
    n_train = problem["batch_size"] * problem["train_batches"]
    n_val = problem["batch_size"] * problem["val_batches"]
    shape = tuple(problem["image"])
    x = rng.standard_normal((n_train + n_val, *shape), dtype=np.float32)
    y = rng.integers(0, problem["classes"], size=n_train + n_val)
    x_t, y_t = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    return MemorizeData(x_t[:n_train], y_t[:n_train], x_t[n_train:], y_t[n_train:], problem.get("fitness", "cross_entropy"))


def architecture(problem: dict, network: dict) -> dict:
    """The network of seed 003's family for this problem and `network` spec (both as dicts)."""
    return nets.convnet(problem["image"], network["convs"], network["hidden"], problem["classes"])


def score(logits_of: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of a network over (x, y)."""
    if len(x) == 0:
        return float("nan"), float("nan")
    loss, correct = 0.0, 0
    for i in range(0, len(x), EVAL_CHUNK):
        logits = logits_of(x[i : i + EVAL_CHUNK])
        loss += F.cross_entropy(logits, y[i : i + EVAL_CHUNK], reduction="sum").item()
        correct += (logits.argmax(1) == y[i : i + EVAL_CHUNK]).sum().item()
    return loss / len(x), correct / len(x)


def fitness_of(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The fitness of `kind` (module docstring) of networks whose logits over the N training
    points are `logits`, shape (..., N, classes), for `labels` (N,): one float64 per network,
    shape (...). A pure function: one network or a stacked group gives the same numbers."""
    if kind == "cross_entropy":
        return -cross_entropies(logits, labels).mean(-1)
    memorized = (logits.argmax(-1) == labels).sum(-1).double()
    if kind == "memorized":
        return memorized
    if kind == "memorized_margin":
        m = margins(logits, labels).mean(-1).clamp(-MARGIN_CLAMP, MARGIN_CLAMP)
        return memorized + (1 + m / (1 + m.abs())) / 2
    raise ValueError(f"fitness kind {kind!r} is unknown; accepted: {', '.join(FITNESS_KINDS)}")


def cross_entropies(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-point cross-entropy in float64, shape (..., N), of logits (..., N, classes)."""
    flat = logits.reshape(-1, logits.shape[-1])
    ce = F.cross_entropy(flat, labels.expand(logits.shape[:-1]).reshape(-1), reduction="none")
    return ce.view(logits.shape[:-1]).double()


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-point margin in float64, shape (..., N): the label's logit minus the largest other logit."""
    logits = logits.double()
    index = labels.expand(logits.shape[:-1]).unsqueeze(-1)
    own = logits.gather(-1, index).squeeze(-1)
    others = logits.scatter(-1, index, float("-inf")).amax(-1)
    return own - others


def training_metrics(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """What an evaluation reports of the training set, per network (shape (...) each): the
    fitness of `kind`, train_loss, train_accuracy and memorized (a count)."""
    memorized = (logits.argmax(-1) == labels).sum(-1)
    return {
        "fitness": fitness_of(kind, logits, labels),
        "train_loss": cross_entropies(logits, labels).mean(-1),
        "train_accuracy": memorized.double() / labels.shape[-1],
        "memorized": memorized,
    }


def logits_over(logits_of: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int = EVAL_CHUNK) -> torch.Tensor:
    """`logits_of` over all of x, `chunk` images per pass, joined along the image axis (the second
    last: (N, classes) for one network, (G, N, classes) for a stacked group)."""
    return torch.cat([logits_of(x[i : i + chunk]) for i in range(0, len(x), chunk)], dim=-2)


@torch.no_grad()
def evaluate(arch: dict, flat: torch.Tensor, data: MemorizeData) -> dict:
    """Fitness (of kind `data.fitness`) and metrics of the network whose weights are `flat`."""
    run = lambda x: nets.forward(arch, flat, x)  # noqa: E731
    train = training_metrics(data.fitness, logits_over(run, data.train_x), data.train_y)
    val_loss, val_acc = score(run, data.val_x, data.val_y)
    return {**{k: v.item() for k, v in train.items()}, "val_loss": val_loss, "val_accuracy": val_acc}


def score_many(logits_of: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
               chunk: int) -> tuple[list[float], list[float]]:
    """`score` for G networks at once (x not empty): `logits_of(x)` gives their logits as (G, len(x), classes)."""
    loss = correct = None
    for i in range(0, len(x), chunk):
        logits = logits_of(x[i : i + chunk])
        g, n, classes = logits.shape
        targets = y[i : i + chunk]
        ce = F.cross_entropy(logits.reshape(g * n, classes), targets.repeat(g), reduction="none").view(g, n)
        part_loss, part_correct = ce.sum(1).double(), (logits.argmax(2) == targets).sum(1)
        loss = part_loss if loss is None else loss + part_loss
        correct = part_correct if correct is None else correct + part_correct
    return (loss / len(x)).tolist(), (correct.double() / len(x)).tolist()


@torch.no_grad()
def evaluate_many(arch: dict, stacked: torch.Tensor, data: MemorizeData) -> list[dict]:
    """`evaluate` for each row of `stacked` (G flat weight vectors), in batched passes
    (batched.py); equal to G calls of `evaluate` within batched.FITNESS_ATOL."""
    run = batched.runner(arch, stacked)  # the kernels laid out once for all the passes
    chunk = batched.images_per_pass(len(stacked), EVAL_CHUNK)
    nan = [float("nan")] * len(stacked)
    # the training metrics by the same rule as `evaluate` (training_metrics, fitness_of), per row
    train = training_metrics(data.fitness, logits_over(run, data.train_x, chunk), data.train_y)
    rows = [dict(zip(train, values)) for values in zip(*(v.tolist() for v in train.values()))]
    val_loss, val_acc = score_many(run, data.val_x, data.val_y, chunk) if len(data.val_x) else (nan, nan)
    return [{**row, "val_loss": vl, "val_accuracy": va} for row, vl, va in zip(rows, val_loss, val_acc)]


def baseline(problem: dict, network: dict, epochs: int, lr: float, seed: int = 0,
             on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train the same network with Adam (the gradient baseline seed 003 compares against).

    Returns one record per epoch: the training cross-entropy measured after the epoch over the
    whole training set, validation loss and accuracy.
    """
    torch.manual_seed(seed)
    data = make_data(problem)
    arch = architecture(problem, network)
    flat = torch.empty(nets.layout(arch).size)
    nets.init_layers(arch, seed, flat)
    model = nets.to_module(arch, flat)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        for batch in torch.randperm(len(data.train_x), generator=order).split(problem["batch_size"]):
            optimizer.zero_grad()
            F.cross_entropy(model(data.train_x[batch]), data.train_y[batch]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            train_loss, train_acc = score(model, data.train_x, data.train_y)
            val_loss, val_acc = score(model, data.val_x, data.val_y)
        record = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                  "val_loss": val_loss, "val_accuracy": val_acc}
        history.append(record)
        if on_epoch:
            on_epoch(record)
    return history
