"""Plain torch modules built from an architecture description, and the flat layout of their weights.

An architecture is JSON data::

    {"input": [3, 64, 64],
     "layers": [{"type": "conv", "out": 32, "kernel": 8, "stride": 4}, {"type": "relu"},
                {"type": "flatten"}, {"type": "linear", "out": 10}]}

A network's weights live in ONE flat float32 vector, ordered as ``module.named_parameters()``
yields them. The genome machinery (mutations, crossover, the parent cache) works on that vector:
copying a parent is one memcpy, a whole-network Gaussian mutation is one ``add_``, and a layer is
a contiguous slice. Evaluation runs the module on views of the vector (``torch.func.functional_call``),
so no weights are copied to run a network.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

PARAMETRIC = {"conv", "deconv", "linear"}
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "lrelu": lambda: nn.LeakyReLU(0.2)}


def convnet(image: list[int] | tuple[int, ...], convs: list[dict], hidden: list[int], classes: int) -> dict:
    """Seed 003's network family: convolutions with ReLU, then a ReLU MLP, then logits."""
    layers: list[dict] = []
    for c in convs:
        layers += [{"type": "conv", "out": c["channels"], "kernel": c["kernel"], "stride": c["stride"]}, {"type": "relu"}]
    layers.append({"type": "flatten"})
    for width in hidden:
        layers += [{"type": "linear", "out": width}, {"type": "relu"}]
    layers.append({"type": "linear", "out": classes})
    return {"input": list(image), "layers": layers}


def build(arch: dict, device: torch.device | str = "cpu") -> nn.Sequential:
    """The module for `arch`, with torch's default initialization (evoarena re-initializes from seeds)."""
    shape = tuple(arch["input"])
    modules: list[nn.Module] = []
    for i, spec in enumerate(arch["layers"]):
        kind = spec["type"]
        if kind == "conv":
            modules.append(nn.Conv2d(shape[0], spec["out"], spec["kernel"], spec["stride"], spec.get("padding", 0)))
        elif kind == "deconv":
            modules.append(nn.ConvTranspose2d(shape[0], spec["out"], spec["kernel"], spec["stride"], spec.get("padding", 0)))
        elif kind == "linear":
            modules.append(nn.Linear(shape[0], spec["out"]))
        elif kind == "flatten":
            modules.append(nn.Flatten())
        elif kind == "reshape":
            modules.append(nn.Unflatten(1, tuple(spec["shape"])))
        elif kind in ACTIVATIONS:
            modules.append(ACTIVATIONS[kind]())
        else:
            raise ValueError(f"layers[{i}].type = {kind!r}: unknown; accepted: {sorted(PARAMETRIC | ACTIVATIONS.keys() | {'flatten', 'reshape'})}")
        shape = _output_shape(modules[-1], shape)
        if min(shape) < 1:
            raise ValueError(f"layers[{i}] ({kind}) leaves an empty output of shape {shape}")
    return nn.Sequential(*modules).to(device)


def _output_shape(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(module(torch.zeros(1, *shape)).shape[1:])


@dataclass(frozen=True)
class Slot:
    """One parameter tensor's place in the flat vector."""

    name: str
    shape: tuple[int, ...]
    start: int
    stop: int
    layer: int  # index among the parametric layers: the unit of crossover and of layer-scoped mutation
    fan_in: int


@dataclass(frozen=True)
class Layout:
    """Where each parameter tensor and each parametric layer lives in the flat weight vector."""

    slots: tuple[Slot, ...]
    layer_bounds: tuple[tuple[int, int], ...]  # flat [start, stop) of each parametric layer
    size: int

    @property
    def n_layers(self) -> int:
        return len(self.layer_bounds)

    def span(self, layers: tuple[int, int] | None) -> tuple[int, int]:
        """The flat [start, stop) covered by parametric layers [lo, hi), or by all of them for None."""
        if layers is None:
            return 0, self.size
        lo, hi = layers
        if not 0 <= lo < hi <= self.n_layers:
            raise ValueError(f"layer range [{lo}, {hi}) is outside this network's {self.n_layers} layers")
        return self.layer_bounds[lo][0], self.layer_bounds[hi - 1][1]

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named tensors that are views into `flat`: a state dict that copies nothing."""
        return {s.name: flat[s.start : s.stop].view(s.shape) for s in self.slots}

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The flat vector of a state dict laid out as this network's."""
        missing = [s.name for s in self.slots if s.name not in tensors]
        if missing:
            raise ValueError(f"state dict lacks tensors {missing}")
        return torch.cat([tensors[s.name].reshape(-1).to(torch.float32) for s in self.slots])


def arch_key(arch: dict) -> str:
    """A canonical string for an architecture (dict key order does not matter)."""
    return json.dumps(arch, sort_keys=True, separators=(",", ":"))


def layout(arch: dict) -> Layout:
    return _layout(arch_key(arch))


@lru_cache(maxsize=256)
def _layout(key: str) -> Layout:
    module = _skeleton(key)
    slots, bounds, start, layer = [], [], 0, -1
    for index, child in enumerate(module):
        params = list(child.named_parameters())
        if not params:
            continue
        layer += 1
        layer_start = start
        fan_in = _fan_in(child)
        for pname, p in params:
            slots.append(Slot(f"{index}.{pname}", tuple(p.shape), start, start + p.numel(), layer, fan_in))
            start += p.numel()
        bounds.append((layer_start, start))
    return Layout(tuple(slots), tuple(bounds), start)


def _fan_in(module: nn.Module) -> int:
    # torch's own rule: dim 1 times the receptive field (ConvTranspose2d included)
    w = module.weight
    return w.shape[1] * w[0, 0].numel()


@lru_cache(maxsize=64)
def _skeleton(key: str, device: str = "cpu") -> nn.Sequential:
    """One module per (architecture, device) whose parameters are never used: forward passes
    substitute views of a flat vector for them."""
    return build(json.loads(key), device).eval().requires_grad_(False)


def forward(arch: dict, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Run the network whose weights are `flat` on the batch `x`, without copying the weights."""
    key = arch_key(arch)
    module = _skeleton(key, str(flat.device))
    return torch.func.functional_call(module, _layout(key).views(flat), (x,))


def init_layers(arch: dict, seed: int, flat: torch.Tensor, layers: tuple[int, int] | None = None) -> None:
    """Fill the given parametric layers of `flat` from `seed`, in place.

    Each layer draws from its own generator seeded by (seed, layer index), so a layer's initial
    weights do not depend on the layers around it (crossover relies on this). The distribution is
    torch's default for Linear and Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases.
    Generated on the CPU, so every device type starts from the same bits.
    """
    lay = layout(arch)
    lo, hi = (0, lay.n_layers) if layers is None else layers
    for layer in range(lo, hi):
        gen = torch.Generator().manual_seed(_layer_seed(seed, layer))
        for slot in (s for s in lay.slots if s.layer == layer):
            bound = 1.0 / math.sqrt(slot.fan_in)
            values = torch.empty(slot.stop - slot.start).uniform_(-bound, bound, generator=gen)
            flat[slot.start : slot.stop].copy_(values)


def _layer_seed(seed: int, layer: int) -> int:
    digest = hashlib.blake2b(f"init:{seed}:{layer}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def to_module(arch: dict, flat: torch.Tensor) -> nn.Sequential:
    """A trainable module holding a copy of `flat` (for gradient training and export)."""
    module = build(arch, flat.device)
    module.load_state_dict({k: v.clone() for k, v in layout(arch).views(flat).items()})
    return module


def from_module(arch: dict, module: nn.Module) -> torch.Tensor:
    """The flat vector of a module's current weights."""
    return layout(arch).flatten(dict(module.named_parameters())).detach()
