"""The truncation genetic algorithm of Such et al. 2017 ("Deep Neuroevolution"), on compact genomes.

    generation 0:  P founders, each initialized from its own random seed
    every generation g:
        evaluate every individual                       (workers, in parallel)
        parents <- the T fittest                        (truncation selection)
        elites  <- the E fittest, carried over unchanged and evaluated again
        for each parent, C children:
            with probability crossover_rate: one-point crossover with another parent (seed 001)
            then one mutation (seed 003's kinds: gaussian, layer, norm, adaptive)

Everything random here is drawn from numpy Generators seeded by (experiment seed, generation),
so the same parents always give the same children: a restarted scheduler regenerates exactly
the generation it was in, and results already stored keep their ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..genome import Checkpoint, Genome, crossover, founder, mutate, rebase, sample_delta
from ..nets import layout
from ..spec import GASpec


@dataclass(frozen=True)
class Individual:
    """A genome to evaluate in one generation, and why it is there: founder, elite or child."""

    genome: Genome
    role: str


@dataclass(frozen=True)
class Scored:
    genome: Genome
    fitness: float


def generation_rng(seed: int, generation: int) -> np.random.Generator:
    return np.random.default_rng([seed, generation])


def founders(ga: GASpec, arch: dict, rng: np.random.Generator) -> list[Individual]:
    """Generation 0: independent random initializations."""
    size = ga.initial_population or ga.population
    seeds = rng.choice(2**31 - 1, size=size, replace=False)
    return [Individual(founder(arch, int(s)), "founder") for s in seeds]


def select(scored: list[Scored], ga: GASpec) -> tuple[list[Genome], list[Genome]]:
    """Truncation selection: (the T fittest as parents, the E fittest as elites), best first.

    Failed evaluations (fitness None or NaN) never reproduce. Ties break on the genome id so
    that selection is deterministic.
    """
    valid = [s for s in scored if s.fitness is not None and not np.isnan(s.fitness)]
    ranked = sorted(valid, key=lambda s: (-s.fitness, s.genome.id))
    unique = list({s.genome.id: s.genome for s in ranked}.values())  # an elite may appear twice
    return unique[: ga.parents], unique[: ga.elites]


def reproduce(parents: list[Genome], elites: list[Genome], ga: GASpec, rng: np.random.Generator, noise_size: int) -> list[Individual]:
    """The next generation: elites unchanged, then `children_per_parent` children of each parent."""
    lay = layout(parents[0].arch)
    m = ga.mutation
    population = [Individual(e, "elite") for e in elites]
    for i, parent in enumerate(parents):
        for _ in range(ga.children_per_parent):
            delta = sample_delta(rng, m.kind, m.sigma, m.tau, lay, noise_size)
            if len(parents) > 1 and lay.n_layers > 1 and rng.random() < ga.crossover_rate:
                mate = parents[(i + int(rng.integers(1, len(parents)))) % len(parents)]
                point = int(rng.integers(1, lay.n_layers))
                population.append(Individual(crossover(parent, mate, point, then=(delta,)), "child"))
            else:
                population.append(Individual(mutate(parent, delta), "child"))
    return population


def rebase_all(genomes: list[Genome], checkpoints: list[Checkpoint]) -> list[Genome]:
    """Each genome expressed from the newest checkpoint among its ancestors, so its message stays short."""
    out = []
    for genome in genomes:
        ids = genome.prefix_ids
        known = [c for c in checkpoints if c.id in ids]
        best = max(known, key=lambda c: ids.index(c.id), default=None)
        out.append(rebase(genome, best) if best else genome)
    return out
