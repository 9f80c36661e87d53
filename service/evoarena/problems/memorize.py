"""The memorization benchmark (seed 003): learn random labels for random images.

Inputs are N(0, 1) images, labels uniform over the classes, both fixed by `data_seed`, so the
only way to score well is to memorize. Fitness is minus the mean training cross-entropy; the
validation set (never trained on) shows that nothing but memorization is possible.

Seed 003's parameters: 64x64x3 images, 10 classes, batches of 32, 16 training batches and 2
validation batches, convolutions 8/4/3 with channels 32/64/64 and strides 4/2/1, hidden 512.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import nets

EVAL_CHUNK = 512  # images per forward pass when scoring; bounds activation memory


@dataclass(frozen=True)
class MemorizeData:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor


def make_data(problem: dict, device: torch.device | str = "cpu") -> MemorizeData:
    """The dataset of a `problem` spec (as a dict): the same on every machine for the same data_seed."""
    rng = np.random.default_rng(problem["data_seed"])
    n_train = problem["batch_size"] * problem["train_batches"]
    n_val = problem["batch_size"] * problem["val_batches"]
    shape = tuple(problem["image"])
    x = rng.standard_normal((n_train + n_val, *shape), dtype=np.float32)
    y = rng.integers(0, problem["classes"], size=n_train + n_val)
    x_t, y_t = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    return MemorizeData(x_t[:n_train], y_t[:n_train], x_t[n_train:], y_t[n_train:])


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


@torch.no_grad()
def evaluate(arch: dict, flat: torch.Tensor, data: MemorizeData) -> dict:
    """Fitness and metrics of the network whose weights are `flat`."""
    run = lambda x: nets.forward(arch, flat, x)  # noqa: E731
    train_loss, train_acc = score(run, data.train_x, data.train_y)
    val_loss, val_acc = score(run, data.val_x, data.val_y)
    return {
        "fitness": -train_loss,
        "train_loss": train_loss,
        "train_accuracy": train_acc,
        "val_loss": val_loss,
        "val_accuracy": val_acc,
    }


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
