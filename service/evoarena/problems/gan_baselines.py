"""What the arena is measured against, at equal gradient steps: one GAN, and the best of n restarts.

    single_gan         ONE generator and ONE discriminator trained together for all `steps`
                       steps with problems/gan.py's `train_pair`, in chunks of `chunk` steps, as
                       the arena trains its pairs: each chunk starts fresh optimizers (Adam's
                       moments restart) and draws its latents and real batches from its own seed;
                       single_gan_by_round trains the same way, in given chunks, and hands out the
                       generator at the end of each round (`evoarena baseline` on an arena file)
    best_of_restarts   the seed project's brute-force comparator: n independent single GANs of
                       steps // n steps each (the same total gradient steps, spread over n pairs;
                       the steps % n left over are not used), the one whose `score` is highest kept

Seeds: a pair's generator starts from ``nets.init_layers(g_arch, sub_seed(seed, "gen"))``, its
discriminator from ``sub_seed(seed, "disc")``, chunk k trains with ``sub_seed(seed, "chunk", k)``;
restart i of best_of_restarts is exactly ``single_gan(..., seed=restart_seed(seed, i))``. The same
call gives the same bits on the CPU.

The discriminator uses the generator's meta-parameters but its loss, which is always the BCE
(problems/gan.py). A problem is the arena spec's ``problem`` as JSON (``{"kind": "gan", "latent",
"data": {...}, ...}``); only its ``data`` is used here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import lru_cache

import torch

from evoarena.encoding import nets
from evoarena.problems import gan, gan_metrics
from evoarena.problems.gan_data import GanData, make_data
from evoarena.seeding import derived_seed


#: The arena spec's fields a single-GAN baseline of an arena depends on (beside its problem): `evoarena
#: report` draws a stored baseline only where they are the experiment's.
ARENA_FIELDS = ("generator", "discriminator", "meta", "train_steps", "chunk_steps", "cross_train_steps", "batch_size")


def sub_seed(seed: int, *parts) -> int:
    """A seed for one use of `seed` (the generator's init, the discriminator's, a chunk's draws)."""
    return derived_seed("baseline", seed, *parts)


def restart_seed(seed: int, i: int) -> int:
    """The seed of restart `i` of `best_of_restarts(..., seed=seed)`."""
    return sub_seed(seed, "restart", i)


def single_gan(problem: dict, gen_arch: dict, disc_arch: dict, meta: dict, steps: int, batch_size: int, seed: int,
               chunk: int = 500) -> tuple[dict, torch.Tensor]:
    """One GAN pair trained for `steps` train_pair steps, in chunks of at most `chunk` steps, each
    chunk with fresh optimizers; returns the generator (g_arch, g_flat)."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk = {chunk!r}: must be an integer >= 1")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps = {steps!r}: must be an integer >= 1")
    chunks = [min(chunk, steps - start) for start in range(0, steps, chunk)]
    *_, (_, g_flat) = single_gan_by_round(problem, gen_arch, disc_arch, meta, [chunks], batch_size, seed)
    return gen_arch, g_flat


def single_gan_by_round(problem: dict, gen_arch: dict, disc_arch: dict, meta: dict, rounds: list[list[int]],
                        batch_size: int, seed: int) -> Iterator[tuple[int, torch.Tensor]]:
    """One GAN pair trained round after round: round r's chunks in turn (steps per chunk, each chunk
    with fresh optimizers, chunk k of the whole run seeded as single_gan seeds it); yields (steps so
    far, the generator's flat weights) at the end of each round. Given the chunks one lineage of the
    arena trains in, it is the single GAN at the arena's gradient steps per generator, round by round."""
    real = _data(problem["data"]).train
    g_flat, d_flat = _init(gen_arch, sub_seed(seed, "gen")), _init(disc_arch, sub_seed(seed, "disc"))
    d_meta = {k: v for k, v in meta.items() if k != "loss"}
    k, done = 0, 0
    for chunks in rounds:
        for steps in chunks:
            g_flat, d_flat, _ = gan.train_pair(gen_arch, g_flat, meta, disc_arch, d_flat, d_meta, real, steps,
                                               batch_size, sub_seed(seed, "chunk", k))
            k, done = k + 1, done + steps
        yield done, g_flat


def quality_by_round(problem: dict, gen_arch: dict, disc_arch: dict, meta: dict, rounds: list[list[int]],
                     batch_size: int, seed: int, cache_dir: str) -> Iterator[dict]:
    """`single_gan_by_round`'s generator measured at the end of each round as a match measures the
    arena's generators (gan_metrics.quality of problem["metric_samples"] samples, latents seeded by
    `seed`; classifiers and the like cached in `cache_dir`): {"round" (from 1), "steps", "quality"}
    per round. What `evoarena baseline` records for an arena file."""
    data = make_data(problem["data"], cache_dir)
    for r, (steps, g_flat) in enumerate(single_gan_by_round(problem, gen_arch, disc_arch, meta, rounds, batch_size, seed),
                                        start=1):
        samples = gan.generate(gen_arch, g_flat, problem["metric_samples"], torch.Generator().manual_seed(seed))
        yield {"round": r, "steps": steps, "quality": gan_metrics.quality(samples, data, cache_dir)}


def best_of_restarts(problem: dict, gen_arch: dict, disc_arch: dict, meta: dict, steps: int, batch_size: int,
                     seed: int, n: int, score: Callable[[dict, torch.Tensor], float],
                     chunk: int = 500) -> tuple[dict, torch.Tensor, list[float]]:
    """n single GANs of steps // n steps each (seeds `restart_seed(seed, i)`); returns the generator
    with the highest `score` (the first on ties) and every restart's score, in restart order."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n = {n!r}: must be an integer >= 1")
    if steps // n < 1:
        raise ValueError(f"steps = {steps!r} cannot be split over n = {n} restarts: each needs at least one step")
    best, scores = None, []
    for i in range(n):
        g_arch, g_flat = single_gan(problem, gen_arch, disc_arch, meta, steps // n, batch_size, restart_seed(seed, i), chunk)
        scores.append(float(score(g_arch, g_flat)))
        if best is None or scores[-1] > scores[best[0]]:
            best = (i, g_arch, g_flat)
    return best[1], best[2], scores


def _init(arch: dict, seed: int) -> torch.Tensor:
    flat = torch.empty(nets.layout(arch).size)
    nets.init_layers(arch, seed, flat)
    return flat


def _data(data_spec: dict) -> GanData:
    return _data_of(json.dumps(data_spec, sort_keys=True))


@lru_cache(maxsize=4)
def _data_of(key: str) -> GanData:
    return make_data(json.loads(key))
