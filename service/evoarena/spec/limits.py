"""What a run would allocate, estimated from its spec before anything runs.

A spec can pass every field's own bound and still ask for more memory than any machine has:
`ga.parents: 10000` with `children_per_parent: 100000` is a billion individuals a generation,
and the run died allocating 16 GiB. `memory_problem` adds up what each machine of the run would
hold and, over the limit (EVOARENA_RUN_MAX_MEMORY_MB, settings.SpecLimits), names the field of
the largest part, its estimate and the limit; spec.load_spec makes that one SpecError line.

The parts, each the largest arrays of its kind, in bytes:

    population  the master's individuals of one step (GA generation, swarm, arena members, tune
                trials) x MASTER_BYTES_PER_INDIVIDUAL: their genomes, tasks and results; a tune
                trial's arena members likewise, in the worker that runs the trial
    noise       noise.size float32s, memory-mapped: one copy per machine, however many workers
    data        memorize's images (float32) and labels; a GAN data set's samples; 0 where the
                spec does not say or it is small (atari frames come and go; an npz file's size
                is its own; the digits are 0.5 MB)
    networks    what one task builds: memorize/atari, the weights of the parent, the child and a
                group's stacked children (ga.eval_group), plus one chunk of images' activations;
                a GAN, a training pair's weights, gradients and Adam moments, or a match's
                generators and discriminators, whichever is more

A local run (executor.kind local) puts the master and executor.workers workers on one machine:
population + noise + workers x (data + networks). A fleet run puts the master on one and each
worker (noise + data + networks) on another. Not in the estimate: the parent cache, a budget of
its own (executor.cache_mb, a fleet worker's EVOARENA_CACHE_MB), and the few hundred MB that
Python and torch take in every process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from evoarena.spec.arena import ArenaSpec, GanNetSpec
from evoarena.spec.experiment import ExperimentSpec, conv_shapes, parameter_count

MASTER_BYTES_PER_INDIVIDUAL = 48 << 10
"""What the master holds per individual of a step, measured: `evoarena run --inline` of
experiments/tiny.yaml (2 generations) with 11 and 4,001 individuals a generation peaked at 352
and 536 MB, 46 KB more per individual (its genome, task and result, the store's records, and
with --inline its evaluation's leftovers)."""

IMAGES_PER_CHUNK = 512  # problems/memorize.py EVAL_CHUNK: images per forward pass
ATARI_INPUT, ATARI_ACTIONS = (4, 84, 84), 18  # problems/atari.py: 4 stacked frames; at most 18 actions
FLOAT = 4  # bytes of a float32


@dataclass(frozen=True)
class Part:
    """One thing a machine would hold, and the spec field that sets its size."""

    field: str
    value: Any
    what: str
    bytes: int


def memory_problem(spec: ExperimentSpec, limit: int) -> tuple[str, Any, str] | None:
    """(field, its value, why) for the largest part of the first machine whose estimate passes
    `limit` bytes, or None when every machine of the run fits."""
    for machine, parts in machines(spec):
        total = sum(p.bytes for p in parts)
        if total > limit:
            part = max(parts, key=lambda p: p.bytes)
            in_all = f", {_size(total)} in all" if _size(total) != _size(part.bytes) else ""
            return part.field, part.value, (f"{part.what} would take about {_size(part.bytes)}{in_all} {machine}; "
                                            f"at most {_size(limit)} a machine are accepted")
    return None


def machines(spec: ExperimentSpec) -> list[tuple[str, list[Part]]]:
    """Each machine of the run, as a phrase ("on the master's machine"), with its parts."""
    master, noise, worker = population(spec), noise_table(spec), data(spec) + networks(spec)
    if spec.executor.kind == "local":
        n = spec.executor.workers
        each = [Part(p.field, p.value, f"{p.what}, in each of {n} local workers" if n > 1 else p.what, p.bytes * n)
                for p in worker]
        return [(f"on this machine (the master and {n} local worker{'s' * (n > 1)})", [*master, *noise, *each])]
    return [("on the master's machine", master), ("on each worker's machine", [*noise, *worker])]


# --- the parts ---------------------------------------------------------------------------------


def population(spec: ExperimentSpec) -> list[Part]:
    """The master's individuals of its largest step."""
    if spec.ga is not None:
        ga = spec.ga
        n = max(ga.generation_zero_size, ga.population)
        if ga.initial_population and ga.initial_population >= ga.population:
            field, value, how = "ga.initial_population", ga.initial_population, "generation 0"
        elif ga.selection == "uniform":
            field, value, how = "ga.children", ga.children, "a generation"
        else:
            field, value, how = "ga.children_per_parent", ga.children_per_parent, \
                f"a generation: ga.parents x ga.children_per_parent = {ga.parents:,} x {ga.children_per_parent:,}"
        return [_individuals(field, value, n, how)]
    if spec.pso is not None:
        return [_individuals("pso.particles", spec.pso.particles, spec.pso.particles, "a step")]
    if spec.tune is not None:
        return [_individuals("tune.population", spec.tune.population, spec.tune.population, "trials a step")]
    return [_individuals("arena.players", spec.arena.players, members(spec.arena), "arena members")]


def _individuals(field: str, value: Any, n: int, how: str) -> Part:
    return Part(field, value, f"the master's {n:,} individuals ({how})", n * MASTER_BYTES_PER_INDIVIDUAL)


def members(arena: ArenaSpec) -> int:
    """Generators and discriminators of the arena's largest round."""
    pool = max(arena.schedule, default=0)
    return arena.players * (max(pool, arena.generators) + max(pool, arena.discriminators))


def noise_table(spec: ExperimentSpec) -> list[Part]:
    return [Part("noise.size", spec.noise.size, f"the noise table ({spec.noise.size:,} float32s)",
                 spec.noise.size * FLOAT)]


def data(spec: ExperimentSpec) -> list[Part]:
    """The problem's data set, as each worker holds it."""
    problem = spec.problem
    if problem.kind == "memorize":
        n = _images(spec)
        shape = "x".join(map(str, problem.image))
        return [Part("problem.train_batches", problem.train_batches,
                     f"the data ({n:,} images of {shape}: problem.batch_size x (train_batches + val_batches))",
                     n * (math.prod(problem.image) * FLOAT + 8))]
    if problem.kind != "gan":
        return []
    d = problem.data
    shape = sample_shape(d)
    if d.kind == "digits" or shape is None:
        return []
    n = d.train + d.heldout
    return [Part("problem.data.train", d.train, f"the data ({n:,} samples of {'x'.join(map(str, shape))}: "
                 "problem.data.train + heldout)", n * math.prod(shape) * FLOAT)]


def networks(spec: ExperimentSpec) -> list[Part]:
    """The networks one task builds (a problem of the user's: not estimated, its networks are its own)."""
    problem = spec.problem
    if problem.kind == "user":
        return []
    if problem.kind in ("memorize", "atari"):
        image, outputs = (problem.image, problem.classes) if problem.kind == "memorize" else (ATARI_INPUT, ATARI_ACTIONS)
        chunk = min(IMAGES_PER_CHUNK, _images(spec)) if problem.kind == "memorize" else 1
        group = spec.ga.eval_group if spec.ga is not None else 1
        weights = parameter_count(image, outputs, spec.network)
        shapes = conv_shapes(image, spec.network.convs)[1:]
        activations = sum(math.prod(s) for s in shapes) + sum(spec.network.hidden) + outputs
        size = FLOAT * (weights * (group + 2) + chunk * group * activations)
        return [Part("network", None, f"the networks of a task ({group + 2} of {weights:,} weights each: parent, child"
                     f"{' and ga.eval_group children' if group > 1 else ''}; the activations of {chunk:,} inputs)", size)]
    arena = spec.arena if spec.arena is not None else spec.tune.base
    shape = sample_shape(problem.data)
    if shape is None:
        return []
    (g, g_acts), (d, d_acts) = (gan_parameters(arena.generator, "gen", problem.latent, shape),
                                gan_parameters(arena.discriminator, "disc", problem.latent, shape))
    pool = max(arena.schedule, default=0)
    discriminators = arena.players * max(pool, arena.discriminators)
    train = 4 * (g + d) + 3 * arena.batch_size * (g_acts + d_acts)  # weights, gradients, Adam's 2 moments
    match = arena.match_block * g + discriminators * d + arena.match_samples * (g_acts + d_acts)
    section = "arena" if spec.arena is not None else "tune.base"
    parts = [Part(f"{section}.generator" if g >= d else f"{section}.discriminator", None,
                  f"the networks of a task ({g:,} weights a generator, {d:,} a discriminator: a pair in training, "
                  "or a match's)", FLOAT * max(train, match))]
    if spec.tune is not None:  # a trial runs a whole arena, its master's members included, inside the worker
        n = members(spec.tune.base)
        parts.append(Part("tune.base.players", spec.tune.base.players, f"a trial's {n:,} arena members",
                          n * MASTER_BYTES_PER_INDIVIDUAL))
    return parts


def _images(spec: ExperimentSpec) -> int:
    p = spec.problem
    return p.batch_size * (p.train_batches + p.val_batches)


def sample_shape(data: Any) -> tuple[int, ...] | None:
    """One sample's shape, as problems/gan_data.py gives it; None for an npz file (not read here)."""
    if data.kind in ("ring", "grid"):
        return (2,)
    if data.kind == "digits":
        return (1, 8, 8)
    if data.kind == "mnist":
        return (1, data.size, data.size)
    return None


def gan_parameters(net: GanNetSpec, side: str, latent: int, shape: tuple[int, ...]) -> tuple[int, int]:
    """(weights, activations per sample) of a founding generator ("gen") or discriminator
    ("disc"), as arch.py builds them (an MLP, or DCGAN-like (de)convolutions for images)."""
    size = math.prod(shape)
    if net.family == "mlp" or len(shape) != 3:
        widths = [latent, *net.hidden, size] if side == "gen" else [size, *net.hidden, 1]
        return sum((a + 1) * b for a, b in zip(widths, widths[1:])), sum(widths)
    channels, height, width = shape
    depth = len(net.channels)
    if side == "gen":  # linear to [c0, h/2^n, w/2^n], then deconvs (kernel 4) doubling the map
        start = net.channels[0] * (height >> depth) * (width >> depth)
        weights, activations = (latent + 1) * start, start
        for i, (a, b) in enumerate(zip(net.channels, [*net.channels[1:], channels])):
            weights += a * b * 16 + b + 2 * b  # deconv, bias, batch norm
            activations += b * (height >> (depth - i - 1)) * (width >> (depth - i - 1))
        return weights, activations
    weights, activations = 0, 0  # convs (kernel 3, stride 2) halving the map, then a linear to 1
    for a, b in zip([channels, *net.channels], net.channels):
        height, width = (height + 1) // 2, (width + 1) // 2
        weights += a * b * 9 + b
        activations += b * height * width
    return weights + net.channels[-1] * height * width + 1, activations + 1


def _size(n: int) -> str:
    """Bytes in binary units, three significant figures: 512 MiB, 44.7 TiB."""
    value, units = float(n), ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    while value >= 1024 and len(units) > 1:
        value, units = value / 1024, units[1:]
    return f"{value:,.0f} {units[0]}" if value >= 100 or units[0] == "B" else f"{value:.3g} {units[0]}"
