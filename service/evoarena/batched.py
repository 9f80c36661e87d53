"""Population-batched evaluation: a group of networks of one architecture in one forward pass.

Siblings share their parent's architecture and differ only in their weights. Their flat weight
vectors are stacked into one (G, P) tensor, and the network runs once for the whole group, each
layer ONE kernel call for the G networks instead of one per network:

    input x (n, C, H, W), the same for every network
    first conv     one convolution with the G kernels side by side as G*O output channels; where
                   each network has its own batch (`forward_each`: Atari, each network on its own
                   episodes' frames), one grouped convolution over the batches side by side
    later convs    one grouped convolution (groups = G) over the G networks' channels side by side
    activations    one call on the whole activation tensor (in place)
    flatten        (n, G*C, H, W) -> (G, n, C*H*W): each network's features, in one view
    linear         one batched matrix product (baddbmm) over the G networks

The weights are views of the stacked tensor (each parameter's columns, from nets.Layout's slots),
reshaped; `runner` lays the conv kernels out once for all the batches of a group. On a CPU the
activations between convolutions stay in oneDNN's blocked layout (torch's mkldnn tensors) and
the kernels are reordered for it once: oneDNN's direct convolutions then run without converting
their input and output at every call, which is where a grouped convolution in torch's
channels-last layout lost to the same work one network at a time (bench/batched.py: 0.92x at
group 64 before, above 1x after). Elsewhere (a GPU) images travel channels-last. A process that
runs batched passes keeps the memory it frees (`retain_freed_memory`). bench/batched.py measures
the pass against one network at a time. Layer types handled this way, in `GROUPED`: conv, linear, the
activations and flatten: every network the GA builds (nets.convnet). An architecture with any
other layer (deconv, bnorm, reshape, resize) is run one network after another by
`forward_many`, with the same result; `batchable` says which.

The result equals one-by-one evaluation up to float rounding: channels-last kernels and batched
matrix products may sum in another order than the single-network ones. FITNESS_ATOL is the
documented bound on the difference of a fitness (mean cross-entropy) in float32, which a GPU
computes in too (arithmetic.pin_gpu: no TF32); tests/test_batched.py pins it.

How large a group may be is written once here: the spec asks for `ga.eval_group` siblings per
task (fleet/groups.py packs them), and a worker cuts a group into passes of at most `group_cap`
networks, so the stacked copy of their weights takes at most STACK_FRACTION of its cache budget
(EVOARENA_CACHE_MB); `images_per_pass` bounds the activations in the same way.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import nets

FITNESS_ATOL = 1e-5
"""Largest difference between a batched and a one-by-one fitness (mean cross-entropy, float32;
bench/batched.py prints the largest it meets on a CPU: 0 on the memorize network, whose blocked
convolutions sum as one network's do, and below 1e-6 for a validation loss). A GPU computes in
float32 too (arithmetic.pin_gpu); its channels-last path, run on the CPU, differs by 1.44e-08
for 64 memorize siblings, and by 1e-06 in emulated TF32 (`python bench/tf32.py`). Not measured
on a GPU's own kernels."""

OWN_GROUPED_BATCH = 4
"""On a CPU, the largest batch per network (frames: a network's live episodes) that own batches
run as one grouped pass; above it each network runs its own blocked pass, its kernels laid out
once as well. oneDNN's grouped convolution over G networks' 4-channel frames saves per-call
overhead while each network has few frames (1.2-1.7x one by one at 1 to 4 frames a network, the
DQN network, 4 and 16 networks) and loses to G single-network passes from 8 frames on (0.5-0.96x
at 8 to 32, where a network's own pass is 1.1-1.4x). A GA's children play one episode each; the
elite candidates' re-evaluation plays elite_episodes (5 to 30) each."""

STACK_FRACTION = 0.5
"""Share of a worker's cache budget that the stacked weights of one batched pass may take (the
children themselves are in the cache as well)."""

GROUP_SAMPLES = 8192
"""Network-inputs per batched pass (networks x images), 16 times memorize.EVAL_CHUNK: each pass
reads the whole group's weights again (and oneDNN reorders conv weights on every call), so fewer,
larger passes cost less, at the price of activation memory (16 of one network's 512-image chunks)."""

GROUPED = {"conv", "linear", "flatten"} | set(nets.ACTIVATIONS)
"""Layer types run as one kernel call for the whole group."""

BLOCKED_ACTIVATIONS = {"relu", "tanh", "sigmoid"}
"""Activations oneDNN applies to its blocked tensors; another one (lrelu) takes a dense copy."""


def batchable(arch: dict) -> bool:
    """Whether `forward_many` runs `arch` in one pass for the group (else one network after another)."""
    return all(layer["type"] in GROUPED for layer in arch["layers"])


def group_cap(arch: dict, cache_bytes: int) -> int:
    """The most networks of `arch` one batched pass takes on a worker with `cache_bytes` of cache."""
    stacked = nets.layout(arch).size * 4  # float32
    return max(1, int(cache_bytes * STACK_FRACTION) // stacked)


def images_per_pass(group: int, chunk: int) -> int:
    """Images per batched pass for `group` networks: at most `chunk` (one network's), and at most
    GROUP_SAMPLES network-inputs in all."""
    return max(1, min(chunk, GROUP_SAMPLES // max(1, group)))


def forward_many(arch: dict, stacked: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Outputs (G, batch, ...) of the G networks whose flat weights are the rows of `stacked`, on
    the same batch `x`: one pass if `batchable(arch)`, else one network after another."""
    return runner(arch, stacked)(x)


def forward_each(arch: dict, stacked: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Outputs (G, batch, ...) of the G networks whose flat weights are the rows of `stacked`,
    network g on its own batch xs[g] (xs: (G, batch, ...)); one pass if `batchable(arch)`."""
    return runner(arch, stacked, own=True)(xs)


def runner(arch: dict, stacked: torch.Tensor, own: bool = False, blocked: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """`forward_many(arch, stacked, .)` for many batches, the kernels laid out once for all of them;
    with `own`, `forward_each(arch, stacked, .)`: network g on its own batch x[g]. Own batches
    enter the first convolution side by side, (n, G*C, H, W), as a grouped convolution (groups =
    G) instead of the shared input's G kernels side by side; the layers after it are the same.
    Own batches of a network that does not begin with a convolution go one network at a time, and
    on a CPU so do batches of more than OWN_GROUPED_BATCH a network (each network's own pass).
    `blocked=False` keeps a CPU on the channels-last path a GPU takes (bench/tf32.py)."""
    if not batchable(arch) or own and arch["layers"][0]["type"] != "conv":
        if own:
            return lambda xs: torch.stack([nets.forward(arch, flat, x) for flat, x in zip(stacked, xs)])
        return lambda x: torch.stack([nets.forward(arch, flat, x) for flat in stacked])
    blocked = blocked and stacked.device.type == "cpu" and torch.backends.mkldnn.is_available()
    g, layers = len(stacked), _layers(arch, stacked, blocked, shared=not own)
    if not (own and blocked):
        return lambda x: _pass(arch, layers, g, x, blocked, shared=not own)
    alone: list[dict[int, tuple]] = []  # each network's own layers, laid out at the first wide batch

    def each(xs: torch.Tensor) -> torch.Tensor:
        if xs.shape[1] <= OWN_GROUPED_BATCH:
            return _pass(arch, layers, g, xs, blocked, shared=False)
        alone.extend(_layers(arch, stacked[i : i + 1], blocked, shared=True) for i in range(len(alone), g))
        return torch.cat([_pass(arch, alone[i], 1, x, blocked, shared=True) for i, x in enumerate(xs)])

    return each


def _layers(arch: dict, stacked: torch.Tensor, blocked: bool, shared: bool) -> dict[int, tuple]:
    """Each conv's (kernels side by side, biases) and each linear's (weights, biases) of the group:
    views of `stacked`, except the conv kernels, laid out once (oneDNN's blocked layout on a CPU,
    channels-last elsewhere). `shared`: the networks' first layer reads one input, not their own."""
    g, layers = len(stacked), {}
    weights = {s.name: stacked[:, s.start : s.stop].view(g, *s.shape) for s in nets.layout(arch).slots}
    for i, spec in enumerate(arch["layers"]):
        if spec["type"] not in ("conv", "linear"):
            continue
        w, b = weights[f"{i}.weight"], weights[f"{i}.bias"]
        if spec["type"] == "conv":
            kernels = w.reshape(g * w.shape[1], *w.shape[2:])
            if blocked:
                step, pad = [spec.get("stride", 1)] * 2, [spec.get("padding", 0)] * 2
                kernels = torch._C._nn.mkldnn_reorder_conv2d_weight(kernels.contiguous().to_mkldnn(), pad, step, [1, 1],
                                                                    1 if shared else g)
            else:
                kernels = kernels.contiguous(memory_format=torch.channels_last)
            w, b = kernels, b.reshape(-1)
        layers[i], shared = (w, b), False
    return layers


def _pass(arch: dict, layers: dict[int, tuple], g: int, x: torch.Tensor, blocked: bool, shared: bool) -> torch.Tensor:
    h = x  # shared: (n, ...) for every network; else (G, n, ...), network g's own batch first
    for i, spec in enumerate(arch["layers"]):
        kind = spec["type"]
        if kind == "conv":  # (n, C or G*C, H, W) -> (n, G*O, H', W')
            kernels, b = layers[i]
            if h.dim() == 5:  # own batches (G, n, C, H, W) into the first conv, side by side: (n, G*C, H, W)
                h = h.transpose(0, 1).reshape(h.shape[1], g * h.shape[2], *h.shape[3:])
            h = (h if h.is_mkldnn else h.contiguous().to_mkldnn()) if blocked else h.contiguous(memory_format=torch.channels_last)
            h = F.conv2d(h, kernels, b, spec.get("stride", 1), spec.get("padding", 0), 1, 1 if shared else g)
        elif kind == "linear":  # (n, F) shared, or (G, n, F) -> (G, n, O)
            w, b = layers[i]
            if shared:
                h = F.linear(h, w.reshape(-1, w.shape[2]), b.reshape(-1)).view(len(h), g, -1).transpose(0, 1)
            else:
                h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        elif kind == "flatten":  # (n, G*C, H, W) -> (G, n, C*H*W), in each network's flatten order
            h = _dense(h)
            h = h.flatten(1) if shared else h.contiguous().view(len(h), g, -1).transpose(0, 1)
            continue
        else:  # an activation; on the shared input it must not write into x
            h = _dense(h) if kind not in BLOCKED_ACTIVATIONS else h
            h = nets.ACTIVATIONS[kind]()(h) if shared else _in_place(kind, h)
            continue
        shared = False
    h = _dense(h)
    return h.unsqueeze(0).expand(g, *h.shape) if shared else h


def _dense(h: torch.Tensor) -> torch.Tensor:
    return h.to_dense() if h.is_mkldnn else h


def _in_place(kind: str, h: torch.Tensor) -> torch.Tensor:
    if kind == "relu":
        return h.relu_()
    if kind == "lrelu":
        return F.leaky_relu_(h, 0.2)
    return h.tanh_() if kind == "tanh" else h.sigmoid_()


RETAINED_BYTES = 1 << 30
"""Freed memory (blocks up to this size) that a worker process keeps for its next allocations."""


def retain_freed_memory(limit: int = RETAINED_BYTES) -> bool:
    """Let this process reuse the memory it frees (glibc's malloc; False where that is not there).

    A batched pass allocates activations of hundreds of MB (GROUP_SAMPLES network-inputs); glibc
    serves blocks above 32 MB with mmap and gives them back on free, so every pass page-faults
    them in again: about a second of system time per group of 64 memorize networks, against none
    for one network's 15 MB. Raising malloc's mmap and trim thresholds to `limit` keeps them."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mmap_threshold, trim_threshold = -3, -1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD (malloc.h)
    return bool(libc.mallopt(mmap_threshold, limit)) and bool(libc.mallopt(trim_threshold, limit))


LAYER_OPS = ("aten::conv2d", "aten::conv_transpose2d", "aten::linear", "aten::baddbmm")


def layer_calls(run) -> int:
    """How many conv and linear layer calls torch makes while `run()` runs (its profiler's count
    of LAYER_OPS): one per layer per pass for a batched group, one per layer per network otherwise."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return sum(1 for event in prof.events() if event.name in LAYER_OPS)
