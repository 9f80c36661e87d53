"""The arena's gradient ops on generators and discriminators, as pure torch functions.

A *generator* maps a latent ``z ~ N(0, I)`` of shape ``arch["input"]`` to a sample; a
*discriminator* maps a sample to ONE logit (output shape ``[1]``); a logit > 0 means "real".
Both are ``(arch, flat)`` pairs as in ``nets``; no function here modifies a flat it is given.

An individual's meta-parameters are ``{"optimizer": "adam"|"sgd"|"rmsprop", "lr": float,
"loss": "ns"|"ls"|"hinge"}``. ``loss`` is the generator's loss, one of E-GAN's variation
operators (Wang et al. 2018), with ``l = D(G(z))``:

    ns     non-saturating (seed 004): maximise log sigmoid(l), i.e. BCE-with-logits against 1
    ls     least squares on the sigmoid output: mean((sigmoid(l) - 1)^2)
    hinge  mean(-l)

The discriminator always minimises the binary cross-entropy on logits:
``BCE(D(x_real), 1) + BCE(D(G(z)), 0)``, real and fake in separate forward passes (so a
batch-normalising discriminator never mixes their statistics). Optimizers: Adam with betas
(0.5, 0.999), SGD with momentum 0.9, RMSprop with torch's defaults; ``lr`` from the meta.

Ops, one step each per iteration:

    train_pair           discriminator step (fakes detached), then a generator step through
                         the just-updated discriminator, reusing the same fakes
    train_generator      generator steps against a FROZEN foreign discriminator
    train_discriminator  discriminator steps against a frozen foreign generator's samples
    match_block          every generator's samples scored by every discriminator

Everything random (latents, indices of real batches, drawn with replacement) comes from ONE
``torch.Generator`` seeded with the op's ``seed`` on the networks' device (each step draws the
latents first, then the real batch's indices), so the same call gives bit-identical results on
CPU. In a match, generator i of the block draws from its own sub-seed of (seed, i), so its
samples do not depend on the block's other members.

A training op returns the new flat(s) and a trace, one dict of plain floats per step:
``g_loss``, ``d_loss``, ``d_real_acc`` (share of the real batch with logit > 0) and
``d_fake_acc`` (share of the fake batch with logit < 0), those of them the op measures.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from evoarena.encoding import nets
from evoarena.seeding import derived_seed

EVAL_CHUNK = 4096  # samples per forward pass outside training; bounds activation memory

GENERATOR_LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "ns": lambda logit: F.softplus(-logit).mean(),  # -log sigmoid(l)
    "ls": lambda logit: (torch.sigmoid(logit) - 1).pow(2).mean(),
    "hinge": lambda logit: (-logit).mean(),
}

OPTIMIZERS: dict[str, Callable] = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999)),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "rmsprop": lambda params, lr: torch.optim.RMSprop(params, lr=lr),
}


# ---------------------------------------------------------------- arguments


def make_optimizer(meta: dict, params) -> torch.optim.Optimizer:
    """The optimizer `meta` names, over `params`, with the learning rate `meta["lr"]`."""
    kind = meta.get("optimizer")
    if kind not in OPTIMIZERS:
        raise ValueError(f"meta optimizer = {kind!r}: unknown; accepted: {sorted(OPTIMIZERS)}")
    lr = meta.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or lr == float("inf"):
        raise ValueError(f"meta lr = {lr!r}: must be a finite number > 0")
    return OPTIMIZERS[kind](params, float(lr))


def generator_loss(meta: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """The generator loss `meta["loss"]` names, as a function of the discriminator's logits."""
    kind = meta.get("loss")
    if kind not in GENERATOR_LOSSES:
        raise ValueError(f"meta loss = {kind!r}: unknown; accepted: {sorted(GENERATOR_LOSSES)}")
    return GENERATOR_LOSSES[kind]


def _check_schedule(steps: int, batch_size: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps = {steps!r}: must be an integer >= 1")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size = {batch_size!r}: must be an integer >= 1")


def _check_real(real: torch.Tensor, d_arch: dict) -> None:
    if len(real) == 0:
        raise ValueError("real holds no samples")
    if tuple(real.shape[1:]) != tuple(d_arch["input"]):
        raise ValueError(f"real samples have shape {tuple(real.shape[1:])}; the discriminator takes {tuple(d_arch['input'])}")


def _logits(out: torch.Tensor) -> torch.Tensor:
    """A discriminator's output [N, 1] as N logits; any other shape is not a discriminator."""
    if out.shape[1:] != (1,):
        raise ValueError(f"a discriminator must output one logit per sample; this one outputs shape {tuple(out.shape[1:])}")
    return out.view(-1)


def _sub_seed(seed: int, index: int) -> int:
    return derived_seed("match", seed, index)


# ---------------------------------------------------------------- the losses and steps


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """BCE on logits: real labelled 1, fake labelled 0 (softplus(-l) = -log sigmoid(l))."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def _latents(arch: dict, n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(n, *arch["input"], generator=generator, device=generator.device)


def _real_batch(real: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    return real[torch.randint(len(real), (batch_size,), generator=generator, device=generator.device)]


def _accuracies(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Share of real logits > 0 and of fake logits < 0, over the last dimension (a batch, or each
    step's batch of a (steps, batch) stack: a mean of 0s and 1s is exact either way)."""
    return (real_logits > 0).float().mean(-1), (fake_logits < 0).float().mean(-1)


def _trace(keys: tuple[str, ...], rows: list[torch.Tensor] | torch.Tensor) -> list[dict]:
    # one device->host transfer for the whole run, not one per step
    rows = rows if isinstance(rows, torch.Tensor) else torch.stack(rows)
    return [dict(zip(keys, row)) for row in rows.tolist()]


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.Tensor]) -> None:
    optimizer.zero_grad()
    loss.backward(inputs=params)  # only these get gradients: the other network is left alone
    optimizer.step()


def _trainable(arch: dict, flat: torch.Tensor, meta: dict) -> tuple[torch.nn.Module, list[torch.Tensor], torch.optim.Optimizer]:
    """A trainable copy of `(arch, flat)`, its parameters, and the optimizer its meta names."""
    module = nets.to_module(arch, flat)
    params = list(module.parameters())
    return module, params, make_optimizer(meta, params)


# ---------------------------------------------------------------- the ops


@torch.no_grad()
def generate(arch: dict, flat: torch.Tensor, n: int, generator: torch.Generator, chunk: int = EVAL_CHUNK) -> torch.Tensor:
    """`n` samples of the generator `(arch, flat)`, latents drawn from `generator` (any device).

    All latents are drawn first, so the samples do not depend on `chunk`, which only bounds how
    many go through the network at once (unless the network has a ``bnorm`` layer: that one
    normalises with each chunk's statistics).
    """
    if n < 1 or chunk < 1:
        raise ValueError(f"n = {n}, chunk = {chunk}: both must be >= 1")
    z = _latents(arch, n, generator).to(flat.device)
    return torch.cat([nets.forward(arch, flat, part) for part in z.split(chunk)])


def train_pair(g_arch: dict, g_flat: torch.Tensor, g_meta: dict, d_arch: dict, d_flat: torch.Tensor, d_meta: dict,
               real: torch.Tensor, steps: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Train a generator and a discriminator together; returns (new g_flat, new d_flat, trace)."""
    _check_schedule(steps, batch_size)
    _check_real(real, d_arch)
    g_loss_of = generator_loss(g_meta)
    (g, g_params, g_opt), (d, d_params, d_opt) = _trainable(g_arch, g_flat, g_meta), _trainable(d_arch, d_flat, d_meta)
    rng = torch.Generator(device=g_flat.device).manual_seed(seed)
    # bookkeeping: each step keeps its losses and logits; the trace is computed from them once, at the end
    g_losses, d_losses, real_seen, fake_seen = [], [], [], []
    for _ in range(steps):
        fake = g(_latents(g_arch, batch_size, rng))
        x = _real_batch(real, batch_size, rng)
        # discriminator step: the fakes are constants to it
        real_logits, fake_logits = _logits(d(x)), _logits(d(fake.detach()))
        d_loss = discriminator_loss(real_logits, fake_logits)
        _step(d_opt, d_loss, d_params)
        # generator step through the updated discriminator; G has not changed, so `fake` is current
        g_loss = g_loss_of(_logits(d(fake)))
        _step(g_opt, g_loss, g_params)
        g_losses.append(g_loss.detach())
        d_losses.append(d_loss.detach())
        real_seen.append(real_logits.detach())
        fake_seen.append(fake_logits.detach())
    real_acc, fake_acc = _accuracies(torch.stack(real_seen), torch.stack(fake_seen))
    rows = torch.stack([torch.stack(g_losses), torch.stack(d_losses), real_acc, fake_acc], dim=1)
    return nets.from_module(g_arch, g), nets.from_module(d_arch, d), _trace(("g_loss", "d_loss", "d_real_acc", "d_fake_acc"), rows)


def train_generator(g_arch: dict, g_flat: torch.Tensor, g_meta: dict, d_arch: dict, d_flat: torch.Tensor,
                    steps: int, batch_size: int, seed: int) -> tuple[torch.Tensor, list[dict]]:
    """Cross-train a generator against the frozen discriminator `(d_arch, d_flat)`.

    Returns (new g_flat, trace of ``g_loss`` and ``d_fake_acc``, the frozen discriminator's
    rejection rate of the batch before the step).
    """
    _check_schedule(steps, batch_size)
    g_loss_of = generator_loss(g_meta)
    g, g_params, g_opt = _trainable(g_arch, g_flat, g_meta)
    rng = torch.Generator(device=g_flat.device).manual_seed(seed)
    rows = []
    for _ in range(steps):
        # nets.forward runs on views of d_flat, which does not require grad: gradients reach G only
        logits = _logits(nets.forward(d_arch, d_flat, g(_latents(g_arch, batch_size, rng))))
        g_loss = g_loss_of(logits)
        _step(g_opt, g_loss, g_params)
        rows.append(torch.stack([g_loss.detach(), (logits.detach() < 0).float().mean()]))
    return nets.from_module(g_arch, g), _trace(("g_loss", "d_fake_acc"), rows)


def train_discriminator(d_arch: dict, d_flat: torch.Tensor, d_meta: dict, real: torch.Tensor, g_arch: dict,
                        g_flat: torch.Tensor, steps: int, batch_size: int, seed: int) -> tuple[torch.Tensor, list[dict]]:
    """Cross-train a discriminator against the frozen generator `(g_arch, g_flat)`'s samples.

    Returns (new d_flat, trace of ``d_loss``, ``d_real_acc`` and ``d_fake_acc``).
    """
    _check_schedule(steps, batch_size)
    _check_real(real, d_arch)
    d, d_params, d_opt = _trainable(d_arch, d_flat, d_meta)
    rng = torch.Generator(device=d_flat.device).manual_seed(seed)
    rows = []
    for _ in range(steps):
        with torch.no_grad():
            fake = nets.forward(g_arch, g_flat, _latents(g_arch, batch_size, rng))
        x = _real_batch(real, batch_size, rng)
        real_logits, fake_logits = _logits(d(x)), _logits(d(fake))
        d_loss = discriminator_loss(real_logits, fake_logits)
        _step(d_opt, d_loss, d_params)
        rows.append(torch.stack([d_loss.detach(), *_accuracies(real_logits.detach(), fake_logits.detach())]))
    return nets.from_module(d_arch, d), _trace(("d_loss", "d_real_acc", "d_fake_acc"), rows)


@torch.no_grad()
def acceptance(d_arch: dict, d_flat: torch.Tensor, x: torch.Tensor, chunk: int = EVAL_CHUNK) -> torch.Tensor:
    """The fraction of `x` the discriminator takes for real (logit > 0), as a 0-d float64 tensor
    (so that k / n reads back as the Python float k / n). A ``bnorm`` discriminator judges each
    chunk with that chunk's statistics."""
    if len(x) == 0:
        raise ValueError("no samples to judge")
    accepted = sum((_logits(nets.forward(d_arch, d_flat, part)) > 0).sum() for part in x.split(chunk))
    return accepted.double() / len(x)


def match_block(gens: list[tuple[dict, torch.Tensor]], discs: list[tuple[dict, torch.Tensor]], real_heldout: torch.Tensor,
                n_samples: int, seed: int, liars: frozenset[int] = frozenset()) -> dict:
    """Every generator's samples judged by every discriminator.

    Returns ``{"matrix": gens x discs fractions of samples taken for real, "real_accept": per
    discriminator the fraction of `real_heldout` taken for real, "samples": per generator its
    n_samples samples}``. A discriminator whose index is in `liars` reports the opposite
    verdict on both (1 - fraction).
    """
    if not gens or not discs:
        raise ValueError(f"a block needs at least one generator and one discriminator; got {len(gens)} and {len(discs)}")
    if n_samples < 1:
        raise ValueError(f"n_samples = {n_samples}: must be >= 1")
    bad = sorted(i for i in liars if not 0 <= i < len(discs))
    if bad:
        raise ValueError(f"liars {bad} are not indices of the block's {len(discs)} discriminators")
    samples = [generate(arch, flat, n_samples, torch.Generator(device=flat.device).manual_seed(_sub_seed(seed, i)))
               for i, (arch, flat) in enumerate(gens)]
    matrix = torch.stack([torch.stack([acceptance(d_arch, d_flat, s) for d_arch, d_flat in discs]) for s in samples])
    real = torch.stack([acceptance(d_arch, d_flat, real_heldout) for d_arch, d_flat in discs])
    lying = torch.tensor([i in liars for i in range(len(discs))], device=real.device)
    matrix = torch.where(lying, 1 - matrix, matrix)
    real = torch.where(lying, 1 - real, real)
    return {"matrix": matrix.tolist(), "real_accept": real.tolist(), "samples": samples}
