"""Architectures as genomes (seed 001): edits to a network's layers, and the weights a child inherits.

An *edit* is JSON data that turns a parent architecture (`nets`' format) into a child's. Indices
are positions in ``arch["layers"]``. ``seed`` is optional (0 when absent); the samplers always set it.

- ``{"op": "add", "at": i, "seed": s}``: duplicate the conv, deconv or linear layer nearest at or
  before ``layers[i]``, inserted right after it and configured as (near) identity: a linear of
  out = in, or a conv/deconv of the same channels with kernel 3, stride 1, padding 1. Its weights
  are the identity (centre tap for kernels), zero bias, plus N(0, 1e-3) noise from ``seed``. No
  activation comes with it, so the child computes (almost) what the parent did; the copy is room
  for later mutations and training to use, not a change of function.
- ``{"op": "delete", "at": i, "seed": s}``: remove ``layers[i]`` (a conv, deconv, linear or bnorm)
  and, for a conv/deconv/linear, the bnorm and activation layers right after it. The next layer
  now sees a different input; inheritance resizes it (the "linear map adapter" of seed 001).
- ``{"op": "change", "at": i, "field": f, "value": v, "seed": s}``: ``out`` (a linear's width, a
  conv/deconv's channels), ``kernel`` (conv/deconv; the padding moves by half the kernel's
  change, rounded towards zero, so kernel 3 pad 1 -> kernel 5 pad 2 keeps the map size) or
  ``type`` (an activation's: relu, lrelu, tanh, sigmoid).
- ``{"op": "crossover", "cut": i, "other_cut": j, "other_arch": {...}, "seed": s}``: layers
  [0, i) of this network, then layers [j, end) of ``other_arch``. Where the shapes at the junction
  differ an adapter goes between: a ``linear`` between two flat vectors; between two images a
  ``resize`` to the other side's spatial size, then a 1x1 ``conv`` to its channels. A junction of
  a flat vector and an image is refused.

Every edit keeps the network's input and output shapes (a generator's sample, a discriminator's
logit): `edited_arch` refuses one that does not, naming the child's layer that breaks.

Inheritance (`apply_edit`), the one rule: every parametric layer of the child either has a source
layer (in the parent, or in ``other_arch`` for the crossover's second half) or is new.

- A sourced layer whose tensors have the source's shapes is a copy. Otherwise it is first
  initialised as `nets.init_layers` would with the edit's seed (a torch.Generator per (seed, child
  layer index), U(-1/sqrt(fan_in), 1/sqrt(fan_in)); bnorm weight 1, bias 0), then the overlapping
  block of each tensor is copied from the source: ``[:min(out), :min(in)]`` top-left for the
  unit and channel dimensions, centre-aligned for the kernel's height and width (a 3x3 kernel
  lands in the middle of a 5x5 one).
- A new layer: an ``add``'s copy is identity + noise (above); an adapter is identity + the same
  noise where it is square (in = out), else initialised like `nets.init_layers` from the seed.

The child's weights are a pure function of (parent arch, parent weights, edit, other weights):
the same bits on every call, computed on the CPU, returned on the parent weights' device.

`sample_mutation` and `sample_crossover` draw edits that keep a given output shape. Small
mutations change a width by up to 25% or a kernel by 2; large ones double or halve a width or
change a kernel by 4 (adds and deletes are one layer either way). They never change the last
conv/deconv/linear layer's ``out`` (it makes the output) and never delete it.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from evoarena.encoding import nets
from evoarena.seeding import derived_seed

WEIGHTED = nets.PARAMETRIC  # conv, deconv, linear: what an edit adds, deletes or resizes
FOLLOWERS = {"bnorm"} | set(nets.ACTIVATIONS)  # what belongs to the weighted layer before it
IDENTITY_NOISE = 1e-3


# --- the network families of the GAN arena ---------------------------------------------------------


def generator_arch(latent: int, hidden: list[int], out_shape: tuple, act: str = "relu", out_act: str | None = None) -> dict:
    """An MLP from a latent vector to a sample: linear layers, a last linear to prod(out_shape),
    a reshape to out_shape when it has more than one dimension, then `out_act` if any."""
    layers = [layer for width in hidden for layer in ({"type": "linear", "out": width}, {"type": act})]
    layers.append({"type": "linear", "out": math.prod(out_shape)})
    if len(out_shape) > 1:
        layers.append({"type": "reshape", "shape": list(out_shape)})
    if out_act:
        layers.append({"type": out_act})
    return {"input": [latent], "layers": layers}


def discriminator_arch(in_shape: tuple, hidden: list[int], act: str = "lrelu") -> dict:
    """An MLP from a sample to one logit (a flatten first when the sample is an image)."""
    layers = [{"type": "flatten"}] if len(in_shape) > 1 else []
    layers += [layer for width in hidden for layer in ({"type": "linear", "out": width}, {"type": act})]
    layers.append({"type": "linear", "out": 1})
    return {"input": list(in_shape), "layers": layers}


def conv_generator_arch(latent: int, channels: list[int], out_shape: tuple, act: str = "relu",
                        out_act: str | None = None, norm: bool = True) -> dict:
    """DCGAN-like: linear -> reshape [channels[0], h/2^n, w/2^n] -> n deconvs (kernel 4, stride 2,
    padding 1: each doubles the map) through `channels` to out_shape's channels; bnorm (if `norm`)
    and `act` after each deconv but the last. For 8x8 digits and two channels: [C, 2, 2] -> 4 -> 8."""
    depth, (c_out, height, width) = len(channels), out_shape
    if depth < 1 or height % 2**depth or width % 2**depth:
        raise ValueError(f"conv_generator_arch: out_shape {list(out_shape)} is not {len(channels)} doublings "
                         f"(channels {channels}) of a whole map; accepted: height and width divisible by 2**len(channels)")
    start = [channels[0], height >> depth, width >> depth]
    layers = [{"type": "linear", "out": math.prod(start)}, {"type": "reshape", "shape": start}, {"type": act}]
    for i, c in enumerate([*channels[1:], c_out]):
        layers.append({"type": "deconv", "out": c, "kernel": 4, "stride": 2, "padding": 1})
        if i < depth - 1:
            layers += [{"type": "bnorm"}] if norm else []
            layers.append({"type": act})
    if out_act:
        layers.append({"type": out_act})
    return {"input": [latent], "layers": layers}


def conv_discriminator_arch(in_shape: tuple, channels: list[int], act: str = "lrelu") -> dict:
    """Convs (kernel 3, stride 2, padding 1: each halves the map) with `act`, flatten, linear to 1 logit."""
    layers = [layer for c in channels
              for layer in ({"type": "conv", "out": c, "kernel": 3, "stride": 2, "padding": 1}, {"type": act})]
    layers += [{"type": "flatten"}, {"type": "linear", "out": 1}]
    return {"input": list(in_shape), "layers": layers}


# --- edits: the child's architecture, and where each of its layers comes from -------------------------


def edited_arch(src_arch: dict, edit: dict) -> dict:
    """The child's architecture; ValueError (naming the edit and the layer) if it is impossible."""
    return _plan(src_arch, edit)[0]


def _plan(src_arch: dict, edit: dict) -> tuple[dict, list[tuple[str, int]]]:
    """The child's architecture and, per child layer, its origin: ("src", k), ("other", k), ("add", -1)
    or ("adapter", -1), k being the source layer's index in its architecture's ``layers``."""
    planners = {"add": _add, "delete": _delete, "change": _change, "crossover": _crossover}
    op = edit.get("op")
    if op not in planners:
        raise ValueError(f"edit op = {op!r}: unknown; accepted: {sorted(planners)}")
    seed = edit.get("seed", 0)
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"{_describe(edit)}: seed = {seed!r}: must be an integer >= 0")
    layers, origins = planners[op](copy.deepcopy(src_arch["layers"]), edit, src_arch)
    child = {"input": list(src_arch["input"]), "layers": layers}
    try:
        nets.check(child, expect_output=_output(src_arch, "src_arch")[-1])
    except ValueError as err:
        raise ValueError(f"{_describe(edit)} gives an impossible child: {err}") from None
    return child, origins


def _add(layers: list[dict], edit: dict, src_arch: dict):
    at = _index(edit, "at", len(layers))
    k = next((j for j in range(at, -1, -1) if layers[j]["type"] in WEIGHTED), None)
    if k is None:
        raise ValueError(f"{_describe(edit)}: no conv, deconv or linear layer at or before layers[{at}] to duplicate")
    new = {"type": layers[k]["type"], "out": layers[k]["out"]}
    if new["type"] != "linear":
        new.update(kernel=3, stride=1, padding=1)
    origins = [("src", j) for j in range(len(layers))]
    return layers[: k + 1] + [new] + layers[k + 1 :], origins[: k + 1] + [("add", -1)] + origins[k + 1 :]


def _delete(layers: list[dict], edit: dict, src_arch: dict):
    at = _index(edit, "at", len(layers))
    kind = layers[at]["type"]
    if kind not in WEIGHTED | {"bnorm"}:
        raise ValueError(f"{_describe(edit)}: layers[{at}] is a {kind}; delete takes a conv, deconv, linear or bnorm layer")
    stop = at + 1
    while kind in WEIGHTED and stop < len(layers) and layers[stop]["type"] in FOLLOWERS:
        stop += 1
    keep = [j for j in range(len(layers)) if not at <= j < stop]
    return [layers[j] for j in keep], [("src", j) for j in keep]


def _change(layers: list[dict], edit: dict, src_arch: dict):
    at, field, value = _index(edit, "at", len(layers)), edit.get("field"), edit.get("value")
    spec, where = layers[at], f"{_describe(edit)}: layers[{at}] ({layers[at]['type']})"
    if field == "type":
        if spec["type"] not in nets.ACTIVATIONS or value not in nets.ACTIVATIONS:
            raise ValueError(f"{where}: type changes only swap an activation for another; got {value!r}, accepted: {sorted(nets.ACTIVATIONS)}")
        spec["type"] = value
    elif field in ("out", "kernel"):
        kinds = WEIGHTED if field == "out" else WEIGHTED - {"linear"}
        if spec["type"] not in kinds:
            raise ValueError(f"{where} has no {field!r} to change; {field!r} belongs to {sorted(kinds)}")
        if not _is_int(value) or value < 1:
            raise ValueError(f"{where}: {field} value = {value!r}: must be an integer >= 1")
        if field == "kernel":
            shift = value - spec["kernel"]
            spec["padding"] = max(0, spec.get("padding", 0) + int(math.copysign(abs(shift) // 2, shift)))
        spec[field] = value
    else:
        raise ValueError(f"{_describe(edit)}: field = {field!r}: accepted: 'out', 'kernel', 'type'")
    return layers, [("src", j) for j in range(len(layers))]


def _crossover(layers: list[dict], edit: dict, src_arch: dict):
    other = edit.get("other_arch")
    if not isinstance(other, dict) or "layers" not in other:
        raise ValueError(f"{_describe(edit)}: other_arch must be an architecture dict, got {type(other).__name__}")
    cut, other_cut = _index(edit, "cut", len(layers) + 1), _index(edit, "other_cut", len(other["layers"]) + 1)
    left, right = _output(src_arch, "src_arch")[cut], _output(other, "crossover's other_arch")[other_cut]
    adapters = _adapters(left, right, edit)
    child = layers[:cut] + adapters + copy.deepcopy(other["layers"][other_cut:])
    origins = ([("src", j) for j in range(cut)] + [("adapter", -1)] * len(adapters)
               + [("other", j) for j in range(other_cut, len(other["layers"]))])
    return child, origins


def _adapters(left: tuple, right: tuple, edit: dict) -> list[dict]:
    """The layers that turn shape `left` into shape `right` at a crossover's junction."""
    if left == right:
        return []
    if len(left) == 1 and len(right) == 1:
        return [{"type": "linear", "out": right[0]}]
    if len(left) == 3 and len(right) == 3:
        resize = [{"type": "resize", "size": list(right[1:])}] if left[1:] != right[1:] else []
        conv = [{"type": "conv", "out": right[0], "kernel": 1, "stride": 1, "padding": 0}] if left[0] != right[0] else []
        return resize + conv
    raise ValueError(f"{_describe(edit)}: the junction joins a {list(left)} output to a {list(right)} input; "
                     "a crossover joins two flat vectors or two images [channels, height, width]")


def _index(edit: dict, key: str, bound: int) -> int:
    value = edit.get(key)
    if not _is_int(value) or not 0 <= value < bound:
        raise ValueError(f"{_describe(edit)}: {key} = {value!r}: must be an integer in [0, {bound})")
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _output(arch: dict, name: str) -> list[tuple[int, ...]]:
    """`nets.check`'s shapes, its error saying which architecture it is about."""
    try:
        return nets.check(arch)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def _describe(edit: dict) -> str:
    if edit.get("op") == "crossover":
        return f"crossover (cut {edit.get('cut')!r}, other_cut {edit.get('other_cut')!r})"
    detail = f" {edit.get('field')!r} -> {edit.get('value')!r}" if edit.get("op") == "change" else ""
    return f"{edit.get('op')} at {edit.get('at')!r}{detail}"


# --- inheritance: the child's weights ------------------------------------------------------------------


def apply_edit(src_arch: dict, src_flat: torch.Tensor, edit: dict, other_flat: torch.Tensor | None = None) -> torch.Tensor:
    """The child's flat weights (on src_flat's device): sourced layers copy their source's
    overlapping block, the rest comes from the edit's seed (module docstring)."""
    child, origins = _plan(src_arch, edit)
    sources = {"src": _by_layer(src_arch, src_flat, "src_flat")}
    if edit["op"] == "crossover":
        if other_flat is None:
            raise ValueError(f"{_describe(edit)}: needs other_flat, the weights of other_arch")
        sources["other"] = _by_layer(edit["other_arch"], other_flat, "other_flat")
    seed = edit.get("seed", 0)
    lay = nets.layout(child)
    flat = torch.empty(lay.size)
    for layer in range(lay.n_layers):
        slots = [s for s in lay.slots if s.layer == layer]
        index = nets.module_index(slots[0])
        tensors = {s.name.split(".", 1)[1]: flat[s.start : s.stop].view(s.shape) for s in slots}
        origin, k = origins[index]
        if origin in sources:
            _inherit(tensors, sources[origin][k], child, seed, flat, layer)
        elif _square(tensors["weight"]):
            _identity(tensors, seed, layer)
        else:
            nets.init_layers(child, seed, flat, (layer, layer + 1))
    return flat.to(src_flat.device)


def _by_layer(arch: dict, flat: torch.Tensor, name: str) -> dict[int, dict[str, torch.Tensor]]:
    """Each parametric layer's tensors (CPU views of `flat`), keyed by its index in ``arch["layers"]``."""
    lay = nets.layout(arch)
    if flat.numel() != lay.size:
        raise ValueError(f"{name} has {flat.numel()} values; its architecture's layout holds {lay.size}")
    flat, out = flat.detach().cpu(), {}
    for slot in lay.slots:
        module, param = slot.name.split(".", 1)
        out.setdefault(int(module), {})[param] = flat[slot.start : slot.stop].view(slot.shape)
    return out


def _inherit(dst: dict[str, torch.Tensor], src: dict[str, torch.Tensor], child: dict, seed: int,
             flat: torch.Tensor, layer: int) -> None:
    if any(dst[name].shape != src[name].shape for name in dst):
        nets.init_layers(child, seed, flat, (layer, layer + 1))
    for name, tensor in dst.items():
        into, out_of = _overlap(tuple(tensor.shape), tuple(src[name].shape))
        tensor[into] = src[name][out_of]


def _overlap(dst: tuple[int, ...], src: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices of the shared block: top-left in the unit/channel dimensions (0, 1), centred in the
    kernel's (2, 3)."""
    into, out_of = [], []
    for dim, (d, s) in enumerate(zip(dst, src)):
        n = min(d, s)
        a, b = ((d - n) // 2, (s - n) // 2) if dim >= 2 else (0, 0)
        into.append(slice(a, a + n))
        out_of.append(slice(b, b + n))
    return tuple(into), tuple(out_of)


def _square(weight: torch.Tensor) -> bool:
    # linear (out, in), conv (out, in, k, k), deconv (in, out, k, k): square when in == out
    return weight.dim() >= 2 and weight.shape[0] == weight.shape[1]


def _identity(tensors: dict[str, torch.Tensor], seed: int, layer: int) -> None:
    """Identity weights (centre tap for a kernel), zero bias, plus N(0, IDENTITY_NOISE) from (seed, layer)."""
    gen = torch.Generator().manual_seed(derived_seed("identity", seed, layer))
    weight = tensors["weight"]
    weight.zero_()
    centre = tuple(k // 2 for k in weight.shape[2:])
    for c in range(weight.shape[0]):
        weight[(c, c, *centre)] = 1.0
    tensors["bias"].zero_()
    for tensor in tensors.values():
        tensor.add_(torch.randn(tensor.shape, generator=gen) * IDENTITY_NOISE)


# --- sampling edits that keep the output shape --------------------------------------------------------


def sample_mutation(rng: np.random.Generator, arch: dict, expect_output: tuple,
                    kinds=("add", "delete", "change"), large: bool = False) -> dict | None:
    """A random valid edit of one of `kinds` (tried in random order, then sites in random order),
    or None when no site of any kind gives a network with output `expect_output`."""
    nets.check(arch, expect_output)
    weighted = [j for j, spec in enumerate(arch["layers"]) if spec["type"] in WEIGHTED]
    last = weighted[-1] if weighted else None
    for kind in (str(k) for k in rng.permutation(list(kinds))):
        sites = _mutation_sites(arch, kind, last)
        for s in rng.permutation(len(sites)):
            edit = _mutation(rng, arch, kind, *sites[s], large)
            if edit is not None and _gives(arch, edit, expect_output):
                return edit
    return None


def _mutation_sites(arch: dict, kind: str, last: int | None) -> list[tuple[int, str | None]]:
    layers = arch["layers"]
    if kind == "add":
        return [(j, None) for j, spec in enumerate(layers) if spec["type"] in WEIGHTED]
    if kind == "delete":
        return [(j, None) for j, spec in enumerate(layers) if spec["type"] in WEIGHTED and j != last]
    if kind == "change":
        return ([(j, "out") for j, spec in enumerate(layers) if spec["type"] in WEIGHTED and j != last]
                + [(j, "kernel") for j, spec in enumerate(layers) if spec["type"] in WEIGHTED - {"linear"}]
                + [(j, "type") for j, spec in enumerate(layers) if spec["type"] in nets.ACTIVATIONS])
    raise ValueError(f"mutation kind = {kind!r}: unknown; accepted: ['add', 'change', 'delete']")


def _mutation(rng: np.random.Generator, arch: dict, kind: str, at: int, field: str | None, large: bool) -> dict | None:
    seed = int(rng.integers(2**31))
    if kind != "change":
        return {"op": kind, "at": at, "seed": seed}
    spec = arch["layers"][at]
    if field == "type":
        value = str(rng.choice(sorted(set(nets.ACTIVATIONS) - {spec["type"]})))
    elif field == "out":
        value = _new_width(rng, spec["out"], large)
    else:
        step = 4 if large else 2
        value = spec["kernel"] + (step if spec["kernel"] <= step or rng.random() < 0.5 else -step)
    return {"op": "change", "at": at, "field": field, "value": value, "seed": seed}


def _new_width(rng: np.random.Generator, width: int, large: bool) -> int:
    if large:
        return width * 2 if width == 1 or rng.random() < 0.5 else width // 2
    new = round(width * (1 + rng.uniform(-0.25, 0.25)))
    if new == width:  # a narrow layer: +-25% rounds back to itself
        new = width + (1 if width == 1 or rng.random() < 0.5 else -1)
    return max(1, new)


def sample_crossover(rng: np.random.Generator, arch: dict, other_arch: dict, expect_output: tuple) -> dict | None:
    """A random valid one-point crossover of `arch` (before the cut) with `other_arch` (after),
    cutting both at a layer that is not a bnorm or an activation, each side giving at least one
    layer; None when no pair of cuts gives a network with output `expect_output`."""
    nets.check(arch, expect_output)
    nets.check(other_arch, expect_output)
    seed = int(rng.integers(2**31))
    pairs = [(i, j) for i in _cuts(arch) for j in _cuts(other_arch)]
    for p in rng.permutation(len(pairs)):
        i, j = pairs[p]
        edit = {"op": "crossover", "cut": i, "other_cut": j, "other_arch": copy.deepcopy(other_arch), "seed": seed}
        if _gives(arch, edit, expect_output):
            return edit
    return None


def _cuts(arch: dict) -> list[int]:
    return [j for j in range(1, len(arch["layers"])) if arch["layers"][j]["type"] not in FOLLOWERS]


def _gives(arch: dict, edit: dict, expect_output: tuple) -> bool:
    try:
        nets.check(edited_arch(arch, edit), expect_output)
    except ValueError:
        return False
    return True
