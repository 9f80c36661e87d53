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

Layer types (fields in brackets; ``stride`` defaults to 1 and ``padding`` to 0):

- ``conv`` [out, kernel, stride, padding]: Conv2d; ``(in + 2*padding - kernel) // stride + 1``.
- ``deconv`` [out, kernel, stride, padding]: ConvTranspose2d; ``(in - 1)*stride - 2*padding + kernel``.
- ``linear`` [out]: needs a flat input (put a ``flatten`` before it).
- ``bnorm``: BatchNorm1d on a flat input, BatchNorm2d on an image, with
  ``track_running_stats=False``: it always normalises with the batch's statistics and keeps no
  buffers, so the flat vector still holds everything. Its weight starts at 1 and its bias at 0.
- ``flatten``; ``reshape`` [shape]: splits the first feature dimension into ``shape``.
- ``resize`` [size = [h, w]]: nearest-neighbour interpolation of an image to that spatial size.
- activations: relu, lrelu (slope 0.2), tanh, sigmoid.

`shapes` infers every layer's output shape from these formulas without running torch; `check`
turns an impossible architecture into a ValueError that names the layer, and `build` calls it
first, so an impossible genome is refused with that message rather than a torch error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from evoarena.seeding import derived_seed

PARAMETRIC = {"conv", "deconv", "linear"}
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "lrelu": lambda: nn.LeakyReLU(0.2)}
SHAPING = {"flatten", "reshape", "resize"}
LAYER_TYPES = PARAMETRIC | {"bnorm"} | SHAPING | ACTIVATIONS.keys()


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
    inputs = check(arch)[:-1]
    modules = [_module(spec, shape) for spec, shape in zip(arch["layers"], inputs)]
    return nn.Sequential(*modules).to(device)


def _module(spec: dict, shape: tuple[int, ...]) -> nn.Module:
    kind = spec["type"]
    if kind == "conv":
        return nn.Conv2d(shape[0], spec["out"], spec["kernel"], spec.get("stride", 1), spec.get("padding", 0))
    if kind == "deconv":
        return nn.ConvTranspose2d(shape[0], spec["out"], spec["kernel"], spec.get("stride", 1), spec.get("padding", 0))
    if kind == "linear":
        return nn.Linear(shape[0], spec["out"])
    if kind == "bnorm":
        norm = nn.BatchNorm1d if len(shape) == 1 else nn.BatchNorm2d
        return norm(shape[0], track_running_stats=False)
    if kind == "flatten":
        return nn.Flatten()
    if kind == "reshape":
        return nn.Unflatten(1, tuple(spec["shape"]))
    if kind == "resize":
        return Resize(tuple(spec["size"]))
    return ACTIVATIONS[kind]()


class Resize(nn.Module):
    """Nearest-neighbour resize of a batch of images to a fixed spatial size."""

    def __init__(self, size: tuple[int, int]):
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=self.size, mode="nearest")

    def extra_repr(self) -> str:
        return f"size={self.size}"


# --- shape inference: the formulas, not a torch run -----------------------------------------------


def shapes(arch: dict) -> list[tuple[int, ...]]:
    """The input shape, then each layer's output shape (no batch dimension).

    ValueError naming the layer when one cannot take its input (wrong rank, a kernel larger than
    its padded input, a reshape of the wrong size, an empty output, a missing or bad field).
    """
    shape = tuple(arch["input"])
    if not shape or any(not _is_int(d) or d < 1 for d in shape):
        raise ValueError(f"input = {list(arch['input'])}: must be a non-empty list of positive integers")
    out = [shape]
    for i, spec in enumerate(arch["layers"]):
        shape = _layer_shape(i, spec, shape)
        if min(shape) < 1:
            raise ValueError(f"layers[{i}] ({spec['type']}) leaves an empty output of shape {shape}")
        out.append(shape)
    return out


def check(arch: dict, expect_output: tuple[int, ...] | None = None) -> list[tuple[int, ...]]:
    """`shapes(arch)`, after also checking the output shape against `expect_output` when given."""
    found = shapes(arch)
    if expect_output is not None and found[-1] != tuple(expect_output):
        raise ValueError(f"output shape {found[-1]} != expected {tuple(expect_output)}")
    return found


def _layer_shape(i: int, spec: dict, shape: tuple[int, ...]) -> tuple[int, ...]:
    kind = spec.get("type")
    if kind not in LAYER_TYPES:
        raise ValueError(f"layers[{i}].type = {kind!r}: unknown; accepted: {sorted(LAYER_TYPES)}")
    if kind in ACTIVATIONS:
        return shape
    if kind == "flatten":
        return (math.prod(shape),)
    if kind == "linear":
        _need(i, spec, shape, rank=1, hint="put a flatten before it")
        return (_field(i, spec, "out"),)
    if kind == "bnorm":
        if len(shape) not in (1, 3):
            raise ValueError(f"layers[{i}] (bnorm) gets a {list(shape)} input; it takes a flat vector or an image [channels, height, width]")
        return shape
    if kind == "reshape":
        target = spec.get("shape")
        if not isinstance(target, list) or not target or any(not _is_int(d) or d < 1 for d in target):
            raise ValueError(f"layers[{i}] (reshape).shape = {target!r}: must be a non-empty list of positive integers")
        if math.prod(target) != shape[0]:
            raise ValueError(f"layers[{i}] (reshape to {target}) gets a {list(shape)} input; its first dimension must be {math.prod(target)}")
        return tuple(target) + shape[1:]
    _need(i, spec, shape, rank=3, hint="put a reshape before it")
    if kind == "resize":
        size = spec.get("size")
        if not isinstance(size, list) or len(size) != 2 or any(not _is_int(d) or d < 1 for d in size):
            raise ValueError(f"layers[{i}] (resize).size = {size!r}: must be [height, width], positive integers")
        return (shape[0], *size)
    return _conv_shape(i, spec, shape)


def _conv_shape(i: int, spec: dict, shape: tuple[int, ...]) -> tuple[int, ...]:
    out, kernel = _field(i, spec, "out"), _field(i, spec, "kernel")
    stride, padding = _field(i, spec, "stride", 1), _field(i, spec, "padding", 0, least=0)
    if spec["type"] == "deconv":
        return (out, *((d - 1) * stride - 2 * padding + kernel for d in shape[1:]))
    padded = tuple(d + 2 * padding for d in shape[1:])
    if min(padded) < kernel:
        with_padding = f" ({padded[0]}x{padded[1]} with padding {padding})" if padding else ""
        raise ValueError(f"layers[{i}] (conv, kernel {kernel}): its {shape[1]}x{shape[2]} input{with_padding} is smaller than the kernel")
    return (out, *((d - kernel) // stride + 1 for d in padded))


def _need(i: int, spec: dict, shape: tuple[int, ...], rank: int, hint: str) -> None:
    if len(shape) != rank:
        wanted = "a flat vector" if rank == 1 else "an image [channels, height, width]"
        raise ValueError(f"layers[{i}] ({spec['type']}) gets a {list(shape)} input; it needs {wanted}: {hint}")


def _field(i: int, spec: dict, name: str, default: int | None = None, least: int = 1) -> int:
    value = spec.get(name, default)
    if value is None:
        raise ValueError(f"layers[{i}] ({spec['type']}) lacks the field {name!r}")
    if not _is_int(value) or value < least:
        raise ValueError(f"layers[{i}] ({spec['type']}).{name} = {value!r}: must be an integer >= {least}")
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    # torch's own rule: dim 1 times the receptive field (ConvTranspose2d included); a norm layer's
    # per-channel scale has no fan-in (it starts at 1, not from a uniform draw)
    w = module.weight
    return w.shape[1] * w[0, 0].numel() if w.dim() >= 2 else 1


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
    torch's default for Linear and Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases;
    a ``bnorm`` layer starts as torch's does, weight 1 and bias 0 (it draws nothing).
    Generated on the CPU, so every device type starts from the same bits.
    """
    lay = layout(arch)
    lo, hi = (0, lay.n_layers) if layers is None else layers
    for layer in range(lo, hi):
        slots = [s for s in lay.slots if s.layer == layer]
        if arch["layers"][module_index(slots[0])]["type"] == "bnorm":
            for slot in slots:
                flat[slot.start : slot.stop].fill_(1.0 if slot.name.endswith(".weight") else 0.0)
            continue
        gen = torch.Generator().manual_seed(_layer_seed(seed, layer))
        for slot in slots:
            bound = 1.0 / math.sqrt(slot.fan_in)
            values = torch.empty(slot.stop - slot.start).uniform_(-bound, bound, generator=gen)
            flat[slot.start : slot.stop].copy_(values)


def module_index(slot: Slot) -> int:
    """The index in ``arch["layers"]`` of the layer that owns `slot`."""
    return int(slot.name.split(".", 1)[0])


def _layer_seed(seed: int, layer: int) -> int:
    return derived_seed("init", seed, layer)


def to_module(arch: dict, flat: torch.Tensor) -> nn.Sequential:
    """A trainable module holding a copy of `flat` (for gradient training and export)."""
    module = build(arch, flat.device)
    module.load_state_dict({k: v.clone() for k, v in layout(arch).views(flat).items()})
    return module


def from_module(arch: dict, module: nn.Module) -> torch.Tensor:
    """The flat vector of a module's current weights."""
    return layout(arch).flatten(dict(module.named_parameters())).detach()
