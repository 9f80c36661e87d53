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
the pass against one network at a time.

Which pass is fastest depends on the CPU: oneDNN picks its kernels by what the CPU can do, and a
grouped convolution tuned on one CPU lost on another (the DQN network at one frame a network: 1.2-1.7x
one by one on the CPU it was tuned on, 0.81-0.87x on an AMD EPYC at groups 4 to 64). So on a CPU in
oneDNN's blocked layout a process chooses, per architecture, group size and batch (each rounded up
to a power of two), among PATHS: the group's one pass, each network's own blocked pass, or one
network at a time as `nets.forward` runs it, by timing them on the first batch it meets
(`fastest`: CPU time, a few interleaved rounds) and caching the choice on disk (`calibration_file`)
under the CPU's model, torch's version, the arithmetic, the thread count and the architecture, so
that a machine chooses once and then always the same. Elsewhere (a GPU; `reproducible` arithmetic,
which turns oneDNN off and must give the same bits on every CPU) the group's one pass is fixed.
Every path gives each network's own outputs, within FITNESS_ATOL (tests/test_batched.py);
`paths_taken` says which ones a process took. Layer types handled this way, in `GROUPED`: conv, linear, the
activations and flatten: every network the GA builds (nets.convnet). An architecture with any
other layer (deconv, bnorm, reshape, resize) is run one network after another by
`forward_many`, with the same result; `batchable` says which.

The result equals one-by-one evaluation up to float rounding: channels-last kernels and batched
matrix products may sum in another order than the single-network ones. FITNESS_ATOL is the
documented bound on the difference of a fitness (mean cross-entropy) in float32, which a GPU
computes in too (arithmetic.pin_gpu: no TF32); tests/test_batched.py pins it.

How large a group may be is written once here: the spec asks for `ga.eval_group` siblings per
task (tasks.py packs them), and a worker cuts a group into passes of at most `group_cap`
networks, so the stacked copy of their weights takes at most STACK_FRACTION of its cache budget
(EVOARENA_CACHE_MB); `images_per_pass` bounds the activations in the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from evoarena.encoding import arithmetic, nets

FITNESS_ATOL = 1e-5
"""Largest difference between a batched and a one-by-one fitness (mean cross-entropy, float32;
bench/batched.py prints the largest it meets on a CPU: 0 on the memorize network, whose blocked
convolutions sum as one network's do, and below 1e-6 for a validation loss). A GPU computes in
float32 too (arithmetic.pin_gpu); its channels-last path, run on the CPU, differs by 1.44e-08
for 64 memorize siblings, and by 1e-06 in emulated TF32 (`python bench/tf32.py`). Not measured
on a GPU's own kernels."""

PATHS = ("grouped", "each", "one")
"""How a CPU in the blocked layout may run a group, in the order a tie is broken: `grouped`, the
group's one pass (each layer one kernel call); `each`, each network's own blocked pass, its
kernels laid out once for the group's batches; `one`, one network after another through
`nets.forward`, which is what evaluation without groups runs. Where the first measured choice,
OWN_GROUPED_BATCH = 4, was tuned, `grouped` won at 1 to 4 frames a network (1.2-1.7x one by one)
and `each` from 8 on (1.1-1.4x, against 0.5-0.96x grouped); on an AMD EPYC `grouped` lost at one
frame (0.81-0.87x, issue 22): hence a choice per machine."""

PLAYS = ("lockstep", "apart")
"""How a CPU in the blocked layout may play a group of networks through a game, where each step's
input depends on the step before (atari.play): `lockstep`, every step one pass of the group (on its
path of PATHS); `apart`, one network's episodes after another's. In lockstep each step reads every
network's weights again; apart keeps one network's weights in cache for all its steps. On an AMD
EPYC the DQN network (6.8 MB of weights) lost 0.83x in lockstep at group 4 against one network after
another, whatever the lockstep path (issue 22), so a machine chooses this too (`plays_apart`)."""

LOCKSTEP_STEPS = 8
"""Game steps per network that `plays_apart` times each way."""

LOCKSTEP_MARGIN = 0.10
"""How much faster lockstep must be in `plays_apart`'s timing to be chosen. The timing steps on one
batch of inputs again and again, which flatters lockstep against a real game's new observations at
every step: the DQN network at group 16 on an AMD EPYC timed 1.07x apart in calibration and ran
0.95x one network after another in bench/batched.py."""

CALIBRATION_ROUNDS = 3
"""Timed runs of each path, interleaved, before a choice; more (up to CALIBRATION_MAX_ROUNDS)
while the calibration has taken less than CALIBRATION_SECONDS of CPU time (short passes)."""
CALIBRATION_SECONDS = 0.05
CALIBRATION_MAX_ROUNDS = 25
PLAY_CALIBRATION_SECONDS = 1.0
"""The CPU time `plays_apart` spends at least (within CALIBRATION_MAX_ROUNDS): its two ways differ by
a few percent where both are close, and it chooses once per machine."""

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


def runner(arch: dict, stacked: torch.Tensor, own: bool = False, blocked: bool = True,
           path: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """`forward_many(arch, stacked, .)` for many batches, the kernels laid out once for all of them;
    with `own`, `forward_each(arch, stacked, .)`: network g on its own batch x[g]. Own batches
    enter the first convolution side by side, (n, G*C, H, W), as a grouped convolution (groups =
    G) instead of the shared input's G kernels side by side; the layers after it are the same.
    Own batches of a network that does not begin with a convolution go one network at a time.
    On a CPU in the blocked layout, each batch takes the path of PATHS this machine chose for
    its size (`choose`), or `path` where given; `blocked=False` keeps a CPU on the channels-last
    group pass a GPU takes (bench/tf32.py)."""
    if not batchable(arch) or own and arch["layers"][0]["type"] != "conv":
        return _one_by_one(arch, stacked, own)
    blocked = blocked and _blocked(stacked)
    if not blocked:  # a GPU, or oneDNN off (reproducible arithmetic): one pass, the same on every machine
        layers = _layers(arch, stacked, False, shared=not own)
        return lambda x: _pass(arch, layers, len(stacked), x, False, shared=not own)
    paths = _paths(arch, stacked, own)
    if path is not None:
        return paths[path]

    by_batch: dict[int, str] = {}  # this runner's choices: a game calls it once a step, the key costs 8% of one

    def run(x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[1] if own else x.shape[0]
        if (name := by_batch.get(batch)) is not None:
            return paths[name](x)
        key = _key(arch, len(stacked), batch, own)
        name = _chosen.get(key) or _stored(key)
        if name is None:
            candidates = {k: v for k, v in paths.items() if len(stacked) > 1 or k != "each"}  # each = grouped for one
            name, seconds, out = fastest(candidates, x)
            if (first := _store(key, name, seconds)) != name:  # another process of this machine chose first
                name, out = first, paths[first](x)
        else:
            out = paths[name](x)
        _chosen[key] = by_batch[batch] = name
        return out

    return run


def _one_by_one(arch: dict, stacked: torch.Tensor, own: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    if own:
        return lambda xs: torch.stack([nets.forward(arch, flat, x) for flat, x in zip(stacked, xs)])
    return lambda x: torch.stack([nets.forward(arch, flat, x) for flat in stacked])


def _paths(arch: dict, stacked: torch.Tensor, own: bool) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """PATHS for the group `stacked` in the blocked layout; each lays its kernels out at its first call."""
    g, laid = len(stacked), {}

    def grouped(x: torch.Tensor) -> torch.Tensor:
        if "grouped" not in laid:
            laid["grouped"] = _layers(arch, stacked, True, shared=not own)
        return _pass(arch, laid["grouped"], g, x, True, shared=not own)

    def each(x: torch.Tensor) -> torch.Tensor:
        if "each" not in laid:
            laid["each"] = [_layers(arch, stacked[i : i + 1], True, shared=True) for i in range(g)]
        inputs = x if own else [x] * g
        return torch.cat([_pass(arch, layers, 1, xi, True, shared=True) for layers, xi in zip(laid["each"], inputs)])

    return {"grouped": grouped, "each": each, "one": _one_by_one(arch, stacked, own)}


def fastest(paths: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor,
            clock: Callable[[], float] = time.process_time,
            budget: float = CALIBRATION_SECONDS) -> tuple[str, dict[str, float], torch.Tensor]:
    """The path that computes `x` in the least `clock` time (median of CALIBRATION_ROUNDS or more
    interleaved runs each, more while all of them took less than `budget` seconds, after an untimed
    run that lays the kernels out), the median seconds of each, and the chosen path's output; a tie
    goes to the path named first."""
    names, outputs = list(paths), {name: run(x) for name, run in paths.items()}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    spent, rounds = 0.0, 0
    while rounds < CALIBRATION_ROUNDS or spent < budget and rounds < CALIBRATION_MAX_ROUNDS:
        for name in names[rounds % len(names):] + names[: rounds % len(names)]:  # each round in another order
            started = clock()
            outputs[name] = paths[name](x)
            seconds[name].append(clock() - started)
            spent += seconds[name][-1]
        rounds += 1
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    best = min(names, key=lambda name: (medians[name], names.index(name)))
    return best, medians, outputs[best]


_chosen: dict[str, str] = {}  # this process's choices, by `_key`


def calibration_file() -> Path:
    """Where a machine's choices are kept: EVOARENA_CALIBRATION, else ~/.cache/evoarena/batched-paths.json."""
    return Path(os.environ.get("EVOARENA_CALIBRATION") or "~/.cache/evoarena/batched-paths.json").expanduser()


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what `platform` says where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _key(arch: dict, group: int, batch: int, own: bool, play: bool = False) -> str:
    """What a choice holds for: this machine (CPU model, torch, arithmetic, threads), the architecture,
    own or shared batches (or a game played, `plays_apart`), the group size and the batch per network,
    each rounded up to a power of two."""
    up = lambda n: 1 << max(0, n - 1).bit_length()  # noqa: E731
    return json.dumps([cpu_model(), torch.__version__, arithmetic.mode() or "unset", torch.get_num_threads(),
                       hashlib.sha256(nets.arch_key(arch).encode()).hexdigest()[:16],
                       "play" if play else "own" if own else "shared", up(group), up(batch)])


def plays_apart(arch: dict, stacked: torch.Tensor, xs: torch.Tensor) -> bool:
    """Whether this machine plays the G networks of `stacked` through a game faster one after another
    than in lockstep (PLAYS), for their own batches `xs` (G, batch, ...): timed once on LOCKSTEP_STEPS
    steps of `xs` each way (`fastest`) and kept with the paths' choices. Never where the group's pass
    is fixed (one network, a GPU, oneDNN off): the same play on every such machine."""
    if len(stacked) < 2 or not _blocked(stacked) or not batchable(arch) or arch["layers"][0]["type"] != "conv":
        return False
    key = _key(arch, len(stacked), xs.shape[1], own=True, play=True)
    name = _chosen.get(key) or _stored(key)
    if name is None:
        together = runner(arch, stacked, own=True)
        alone = [runner(arch, stacked[i : i + 1], own=True) for i in range(len(stacked))]

        def lockstep(x: torch.Tensor) -> torch.Tensor:
            for _ in range(LOCKSTEP_STEPS):
                out = together(x)
            return out

        def apart(x: torch.Tensor) -> torch.Tensor:
            outs = []
            for i, run in enumerate(alone):
                for _ in range(LOCKSTEP_STEPS):
                    out = run(x[i : i + 1])
                outs.append(out)
            return torch.cat(outs)

        _, seconds, _ = fastest({"lockstep": lockstep, "apart": apart}, xs, budget=PLAY_CALIBRATION_SECONDS)
        name = _store(key, "lockstep" if seconds["lockstep"] * (1 + LOCKSTEP_MARGIN) < seconds["apart"] else "apart", seconds)
    _chosen[key] = name
    return name == "apart"


def _blocked(stacked: torch.Tensor) -> bool:
    """Whether a group's pass runs in oneDNN's blocked layout here, where the machine chooses its path."""
    return stacked.device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


def _stored(key: str) -> str | None:
    entry = _read().get(key)
    return entry["path"] if entry and entry.get("path") in PATHS + PLAYS else None


def _read() -> dict:
    try:
        return json.loads(calibration_file().read_text())
    except (OSError, ValueError):
        return {}


def _store(key: str, name: str, seconds: dict[str, float]) -> str:
    """Add a choice to the file, unless another process of this machine stored one for `key`
    meanwhile: the path now on file for `key`, which every process then takes (a machine that
    cannot write keeps its own choice, in memory)."""
    import fcntl

    path = calibration_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            choices = _read()
            if choices.get(key, {}).get("path") in PATHS + PLAYS:
                return choices[key]["path"]
            choices[key] = {"path": name, "seconds": seconds}
            partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            partial.write_text(json.dumps(choices, indent=1, sort_keys=True))
            os.replace(partial, path)
    except OSError:
        pass
    return name


def paths_taken(arch: dict, group: int) -> list[str]:
    """The paths (PATHS, and PLAYS for a game) this process chose for groups of `arch` of about `group`
    networks (its power-of-two size)."""
    digest = hashlib.sha256(nets.arch_key(arch).encode()).hexdigest()[:16]
    size = 1 << max(0, group - 1).bit_length()
    return sorted({name for key, name in _chosen.items() if json.loads(key)[4] == digest and json.loads(key)[6] == size})


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

    prof = profile(activities=[ProfilerActivity.CPU])
    with _quiet():  # the profiler writes "USDT: ... profiler_start" (and _stop) to the process's stderr
        prof.start()
    try:
        run()
    finally:
        with _quiet():
            prof.stop()
    return sum(1 for event in prof.events() if event.name in LAYER_OPS)


@contextlib.contextmanager
def _quiet():
    """File descriptors 1 and 2 to /dev/null for the block: what C code prints there too (C's stdio
    buffers are flushed on each side, or a pipe or file would get the lines after the block)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        libc = None
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    if libc is not None:
        libc.fflush(None)
    saved, null = [os.dup(1), os.dup(2)], os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        if libc is not None:
            libc.fflush(None)
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(null)
