"""The truncation genetic algorithm of Such et al. 2017 ("Deep Neuroevolution"), on compact genomes.

    generation 0:  P founders, each initialized from its own random seed
    every generation g:
        evaluate every individual                       (workers, in parallel)
        parents <- the T fittest                        (truncation selection)
        elites  <- the E fittest, carried over unchanged and evaluated again
        for each parent, C children:
            with probability crossover_rate: one-point crossover with another parent (seed 001)
            then one mutation (seed 003's kinds: gaussian, layer, norm, adaptive)

One step of the master is one generation: `GA.plan` is "evaluate every individual", `GA.advance`
is selection (and the choice of checkpoints); reproduction happens in the next `plan`, from the
parents the state holds.

Everything random here is drawn from numpy Generators seeded by (experiment seed, generation),
so the same parents always give the same children: a restarted scheduler regenerates exactly
the generation it was in, and results already stored keep their ids.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np

from ..genome import Checkpoint, Genome, child_delta, crossover, founder, mutate, rebase
from ..nets import layout
from ..problems import PROBLEMS
from ..spec import ExperimentSpec, GASpec
from . import Step


class GA:
    """The GA as the master's algorithm: one step per generation."""

    def __init__(self, spec: ExperimentSpec):
        self.spec = spec
        self.steps = spec.ga.generations
        problem = spec.problem.model_dump(mode="json")
        self.arch = PROBLEMS[spec.problem.kind].architecture(problem, spec.network.model_dump(mode="json"))

    # --- the algorithm ------------------------------------------------------------------------

    def plan(self, generation: int, state: dict | None) -> Step:
        """Evaluate the generation: founders first, then the elites and children of the parents."""
        ga, rng = self.spec.ga, generation_rng(self.spec.seed, generation)
        if state is None:
            population = founders(ga, self.arch, rng)
        else:
            parents = [Genome.from_json(g) for g in state["parents"]]
            population = reproduce(parents, parents[: ga.elites], ga, rng, self.spec.noise.size)
        save = ga.checkpoint_every > 0 and generation > 0 and generation % ga.checkpoint_every == 0
        carriers = checkpoint_carriers(population, state) if save else {}
        tasks = [self._task(generation, ind, carriers.get(ind.genome.id, [])) for ind in population]
        return Step("evaluate", tasks, about=[ind.genome for ind in population])

    def advance(self, generation: int, state: dict | None, step: Step, results: list[dict]) -> dict:
        """Select the parents of the next generation; rebase them on the newest checkpoints."""
        ga = self.spec.ga
        errors = [r for r in results if r.get("error")]
        if errors and ga.on_error == "stop":
            raise RuntimeError(f"generation {generation}: individual {errors[0].get('genome_id')} failed "
                               f"({errors[0]['error']}); stopping because ga.on_error = stop")
        genomes = step.about
        scored = [Scored(g, r.get("fitness")) for g, r in zip(genomes, results)]
        parents, _ = select(scored, ga)  # the elites are parents[:E]; the next plan takes them from there
        if not parents:
            first = next((r["error"] for r in results if r.get("error")), "?")
            raise RuntimeError(f"generation {generation}: every evaluation failed; first error: {first}")

        checkpoints = [Checkpoint(**c) for c in (state or {}).get("checkpoints", [])]
        checkpoints += [Checkpoint(**c) for r in results for c in r.get("checkpoints", [])]
        checkpoints = checkpoints[-2 * ga.parents :]  # the last two rounds; older lineages have died out
        parents = rebase_all(parents, checkpoints)

        fitnesses = [s.fitness for s in scored if s.fitness is not None and not math.isnan(s.fitness)]
        best = next(r for g, r in zip(genomes, results) if g.id == parents[0].id)
        return {
            "parents": [p.to_json() for p in parents],
            "checkpoints": [{"id": c.id, "uri": c.uri} for c in checkpoints],
            "best": {"genome_id": best["genome_id"], "fitness": best["fitness"], "metrics": best["metrics"]},
            "stats": {
                "best": max(fitnesses),
                "mean": statistics.fmean(fitnesses),
                "median": statistics.median(fitnesses),
                "worst": min(fitnesses),
                "evaluated": len(results),
                "errors": len(results) - len(fitnesses),
            },
        }

    def line(self, generation: int, state: dict) -> str:
        s = state["stats"]
        return (f"gen {generation + 1:>5}/{self.steps}  best {s['best']:10.5f}  mean {s['mean']:10.5f}  "
                f"evals/s {s['evals_per_s']:7.1f}  cache hits {s['hit_rate']:6.1%}"
                + (f"  errors {s['errors']}" if s["errors"] else ""))

    # --- bookkeeping ----------------------------------------------------------------------------

    def _task(self, generation: int, ind: Individual, checkpoint: list[str]) -> dict:
        return {
            "experiment": self.spec.name,
            "generation": generation,
            "genome": ind.genome.to_json(),
            "role": ind.role,
            "problem": self.spec.problem.model_dump(mode="json"),
            "noise": self.spec.noise.model_dump(mode="json"),
            "checkpoint": checkpoint,  # ids of ancestors in the genome's list whose weights to save too
        }


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
            delta = child_delta(rng, parent, m, lay, noise_size)  # seed 003's options: genome.py
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


def checkpoint_carriers(population: list[Individual], previous: dict) -> dict[str, list[str]]:
    """Which task saves which parent's weights: each parent rides, by id, on the first task whose
    genome lists it as an ancestor (itself, or a mutation child), whose worker has (or soon has)
    the parent in its cache. A parent whose children are all crossovers waits for the next round."""
    carriers: dict[str, list[str]] = {}
    for parent in previous["parents"]:
        for ind in population:
            if parent["id"] in ind.genome.prefix_ids[-2:]:
                carriers.setdefault(ind.genome.id, []).append(parent["id"])
                break
    return carriers
