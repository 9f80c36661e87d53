"""Samples of a mixture of generators exported by `evoarena export NAME --mixture`, with torch and
safetensors only (evoarena need not be installed; numpy is not needed either).

    python sample_mixture.py mixture.safetensors N SEED out.npy    # N samples, float32, as .npy

or, from Python: ``samples, counts = sample_mixture("mixture.safetensors", n, seed)``.

The file holds member i's state dict under ``m{i}.`` and, in its metadata, ``archs`` (each member's
architecture: {"input": [...], "layers": [{"type": ...}, ...]}) and ``weights``. The sampling rule
is evoarena's (samples.mixture_samples), so the same file and seed give the same samples as
`evoarena sample NAME --mixture --seed SEED` does (on the same torch version):

1. one generator: ``g = torch.Generator().manual_seed(seed)`` (on the CPU);
2. the counts first: ``picks = torch.multinomial(torch.tensor(weights, dtype=torch.float64), n,
   replacement=True, generator=g)``, ``counts = torch.bincount(picks, minlength=len(weights))``;
3. then, for each member i in order with counts[i] > 0, its latents from the same generator,
   ``torch.randn(counts[i], *arch_i["input"], generator=g)``, through the member in chunks of
   4096 (only a ``bnorm`` layer, which normalises with its batch's statistics, sees the chunks);
4. the samples are member 0's, then member 1's, ... (grouped by member, not shuffled).
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

CHUNK = 4096  # latents per forward pass, as evoarena's gan.EVAL_CHUNK
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "lrelu": lambda: nn.LeakyReLU(0.2)}


class Resize(nn.Module):
    """Nearest-neighbour resize of a batch of images to a fixed spatial size."""

    def __init__(self, size):
        super().__init__()
        self.size = tuple(size)

    def forward(self, x):
        return F.interpolate(x, size=self.size, mode="nearest")


def layer(spec: dict, shape: tuple[int, ...]) -> nn.Module:
    """The torch module of one layer of an evoarena architecture, for an input of `shape` (no batch)."""
    kind = spec["type"]
    if kind == "conv":
        return nn.Conv2d(shape[0], spec["out"], spec["kernel"], spec.get("stride", 1), spec.get("padding", 0))
    if kind == "deconv":
        return nn.ConvTranspose2d(shape[0], spec["out"], spec["kernel"], spec.get("stride", 1), spec.get("padding", 0))
    if kind == "linear":
        return nn.Linear(shape[0], spec["out"])
    if kind == "bnorm":  # batch statistics always, no buffers
        return (nn.BatchNorm1d if len(shape) == 1 else nn.BatchNorm2d)(shape[0], track_running_stats=False)
    if kind == "flatten":
        return nn.Flatten()
    if kind == "reshape":
        return nn.Unflatten(1, tuple(spec["shape"]))
    if kind == "resize":
        return Resize(spec["size"])
    if kind in ACTIVATIONS:
        return ACTIVATIONS[kind]()
    known = sorted({"conv", "deconv", "linear", "bnorm", "flatten", "reshape", "resize", *ACTIVATIONS})
    raise ValueError(f"layer type {kind!r} is unknown to this script; it knows {known}")


def build(arch: dict) -> nn.Sequential:
    """The member's module; each layer's input shape found by passing a zero batch through the ones before."""
    modules, x = [], torch.zeros(2, *arch["input"])
    with torch.no_grad():
        for spec in arch["layers"]:
            modules.append(layer(spec, tuple(x.shape[1:])).eval())
            x = modules[-1](x)
    return nn.Sequential(*modules).eval()


def load(path: str) -> tuple[list[nn.Sequential], list[float]]:
    """(the members with their weights loaded, the mixture weights) of an exported mixture."""
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    if meta.get("format") != "evoarena-mixture-1":
        raise ValueError(f"{path}: format {meta.get('format')!r}; this script reads 'evoarena-mixture-1'")
    tensors = load_file(path)
    members = []
    for i, arch in enumerate(json.loads(meta["archs"])):
        net = build(arch)
        net.load_state_dict({k[len(f"m{i}."):]: v for k, v in tensors.items() if k.startswith(f"m{i}.")})
        members.append((arch, net))
    return members, json.loads(meta["weights"])


@torch.no_grad()
def sample_mixture(path: str, n: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """(`n` samples of the exported mixture at `path`, how many came from each member), by the rule above."""
    members, weights = load(path)
    g = torch.Generator().manual_seed(seed)
    picks = torch.multinomial(torch.tensor(weights, dtype=torch.float64), n, replacement=True, generator=g)
    counts = torch.bincount(picks, minlength=len(weights)).tolist()
    parts = []
    for (arch, net), count in zip(members, counts):
        if count > 0:
            z = torch.randn(count, *arch["input"], generator=g)
            parts.append(torch.cat([net(chunk) for chunk in z.split(CHUNK)]))
    return torch.cat(parts), counts


def save_npy(path: str, x: torch.Tensor) -> None:
    """`x` as a float32 .npy file (NumPy's format 1.0), written without numpy."""
    x = x.detach().to(torch.float32).clone(memory_format=torch.contiguous_format)  # its own storage, no offset
    header = f"{{'descr': '{'<' if sys.byteorder == 'little' else '>'}f4', 'fortran_order': False, 'shape': {tuple(x.shape)}, }}"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"  # the data starts at a multiple of 64 bytes
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1"))
        f.write(bytes(x.untyped_storage()))


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: python sample_mixture.py MIXTURE.safetensors N SEED OUT.npy")
    samples, counts = sample_mixture(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    save_npy(sys.argv[4], samples)
    print(f"{len(samples)} samples of shape {tuple(samples.shape[1:])} (per member: {counts}) -> {sys.argv[4]}")
