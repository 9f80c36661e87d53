"""The truncation genetic algorithm of Such et al. 2017 ("Deep Neuroevolution"), on compact genomes.

    generation 0:  P founders, each initialized from its own random seed
    every generation g:
        evaluate every individual                       (workers, in parallel)
        parents <- the T fittest                        (truncation selection)
        elites  <- the E fittest, carried over unchanged and evaluated again
        children, by ga.selection:
            per_parent: for each parent, C children
            uniform (the paper's): N children, each of a parent drawn uniformly from the T
          each: with probability crossover_rate a one-point crossover with another parent (seed 001),
                then one mutation (seed 003's kinds: gaussian, layer, norm, adaptive)
        stop early once the frames played pass ga.frame_budget (atari)

With ga.elite_candidates = K (the paper's answer to noisy Atari fitness) the elites are chosen
on more episodes instead:

        candidates <- the K fittest of generation g
        in generation g+1, beside the children: each candidate plays ga.elite_episodes more episodes
        elites <- the E candidates with the best mean over those episodes; the other candidates leave

One step of the master is one generation: `GA.plan` is "evaluate every individual", `GA.advance`
is selection (and the choice of checkpoints); reproduction happens in the next `plan`, from the
parents the state holds. The candidates' re-evaluation runs in the next generation's step, beside
its children (who do not depend on the elite), so it costs no extra step, and a resumed run finds
the candidates, the frames played and everything else in the stored state.

Everything random here is drawn from numpy Generators seeded by (experiment seed, generation),
so the same parents always give the same children: a restarted scheduler regenerates exactly
the generation it was in, and results already stored keep their ids.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from evoarena.encoding.genome import Checkpoint, Genome, child_delta, crossover, founder, mutate, rebase
from evoarena.encoding.nets import layout
from evoarena.evolve import Step, valid
from evoarena.problems import problem_of
from evoarena.spec.experiment import ExperimentSpec, GASpec
from evoarena.tasks import envelope


class GA:
    """The GA as the master's algorithm: one step per generation."""

    def __init__(self, spec: ExperimentSpec):
        self.spec = spec
        self.steps = spec.ga.generations
        problem = spec.problem.model_dump(mode="json")
        self.arch = problem_of(problem).architecture(problem, spec.network.model_dump(mode="json"))

    # --- the algorithm ------------------------------------------------------------------------

    def plan(self, generation: int, state: dict | None) -> Step:
        """Evaluate the generation: founders first, then the elites and children of the parents."""
        ga, rng = self.spec.ga, generation_rng(self.spec.seed, generation)
        if state is None:
            population = founders(ga, self.arch, rng)
        else:
            parents = [Genome.from_json(g) for g in state["parents"]]
            if ga.elite_candidates:  # carried over to be re-evaluated; the elites are chosen after
                carried = [Genome.from_json(g) for g in state["candidates"]]
                population = reproduce(parents, carried, ga, rng, self.spec.noise.size, carried_role="candidate")
            else:
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
        elites: list[Genome] = []
        if ga.elite_candidates:  # the candidates' fitness is their mean over ga.elite_episodes
            roles = [t["role"] for t in step.tasks]
            elites = choose_elites([s for s, role in zip(scored, roles) if role == "candidate"], ga.elites)
            kept = {e.id for e in elites}
            scored = [s for s, role in zip(scored, roles) if role != "candidate" or s.genome.id in kept]
        parents, _ = select(scored, ga)  # the elites are parents[:E]; the next plan takes them from there
        if not parents:
            first = next((r["error"] for r in results if r.get("error")), "?")
            raise RuntimeError(f"generation {generation}: every evaluation failed; first error: {first}")

        checkpoints = [Checkpoint(**c) for c in (state or {}).get("checkpoints", [])]
        checkpoints += [Checkpoint(**c) for r in results for c in r.get("checkpoints", [])]
        checkpoints = checkpoints[-2 * ga.parents :]  # the last two rounds; older lineages have died out
        parents = rebase_all(parents, checkpoints)
        candidates = rebase_all(ranked(scored)[: ga.elite_candidates], checkpoints)

        fitnesses = [s.fitness for s in scored if valid(s.fitness)]  # the generation: children and elites
        best_id = elites[0].id if elites else parents[0].id  # with candidates, the paper's elite: best on many episodes
        best = next(r for g, r in zip(genomes, results) if g.id == best_id)
        frames = frame_counts(state, results)
        return {
            "parents": [p.to_json() for p in parents],
            **({"candidates": [c.to_json() for c in candidates]} if ga.elite_candidates else {}),
            "checkpoints": [{"id": c.id, "uri": c.uri} for c in checkpoints],
            "best": {"genome_id": best["genome_id"], "fitness": best["fitness"], "metrics": best["metrics"]},
            "stats": {
                "best": max(fitnesses),
                "mean": statistics.fmean(fitnesses),
                "median": statistics.median(fitnesses),
                "worst": min(fitnesses),
                "evaluated": len(results),
                "errors": sum(not valid(r.get("fitness")) for r in results),
                **({"elite": best["fitness"]} if elites else {}),
                **frames,
            },
        }

    def stopped(self, state: dict) -> bool:
        """Whether the run ends after the step whose state is `state` (the frame budget is spent)."""
        budget = self.spec.ga.frame_budget
        return budget is not None and state["stats"].get("frames_total", 0) >= budget

    def line(self, generation: int, state: dict) -> str:
        s = state["stats"]
        return (f"gen {generation + 1:>5}/{self.steps}  best {s['best']:10.5f}  mean {s['mean']:10.5f}  "
                + (f"elite {s['elite']:10.2f}  " if "elite" in s else "")
                + (f"frames {s['frames_total']:>12,}  " if "frames_total" in s else "")
                + f"evals/s {s['evals_per_s']:7.1f}  cache hits {s['hit_rate']:6.1%}"
                + (f"  errors {s['errors']}" if s["errors"] else ""))

    # --- bookkeeping ----------------------------------------------------------------------------

    def _task(self, generation: int, ind: Individual, checkpoint: list[str]) -> dict:
        # an elite candidate plays ga.elite_episodes episodes (problems/atari.py: task_seeds)
        episodes = {"episodes": self.spec.ga.elite_episodes} if ind.role == "candidate" else {}
        # with ga.eval_group > 1, an executor sends siblings together (tasks.py)
        group = {"eval_group": self.spec.ga.eval_group} if self.spec.ga.eval_group > 1 else {}
        return envelope(self.spec, generation, genome=ind.genome.to_json(), role=ind.role,
                        checkpoint=checkpoint,  # ids of ancestors in the genome's list whose weights to save too
                        **episodes, **group)


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




def ranked(scored: list[Scored]) -> list[Genome]:
    """The genomes best first, each once. Failed evaluations (fitness None or NaN) are left out;
    ties break on the genome id so that the order is deterministic."""
    order = sorted((s for s in scored if valid(s.fitness)), key=lambda s: (-s.fitness, s.genome.id))
    return list({s.genome.id: s.genome for s in order}.values())  # an elite may appear twice


def select(scored: list[Scored], ga: GASpec) -> tuple[list[Genome], list[Genome]]:
    """Truncation selection: (the T fittest as parents, the E fittest as elites), best first.
    Failed evaluations never reproduce."""
    unique = ranked(scored)
    return unique[: ga.parents], unique[: ga.elites]


def choose_elites(candidates: list[Scored], elites: int) -> list[Genome]:
    """The paper's elites: the `elites` candidates with the best fitness on their re-evaluation
    (the mean return over ga.elite_episodes episodes), whatever they scored before."""
    return ranked(candidates)[:elites]


def frame_counts(state: dict | None, results: list[dict]) -> dict:
    """Emulator frames played in this generation (every task's, re-evaluations included) and in
    all, for problems that count them (atari); {} for the others."""
    played = [r["metrics"]["frames"] for r in results if "frames" in (r.get("metrics") or {})]
    if not played:
        return {}
    before = (state or {}).get("stats", {}).get("frames_total", 0)
    return {"frames": sum(played), "frames_total": before + sum(played)}


def reproduce(parents: list[Genome], elites: list[Genome], ga: GASpec, rng: np.random.Generator, noise_size: int,
              carried_role: str = "elite") -> list[Individual]:
    """The next generation: elites (or elite candidates) unchanged, then the children."""
    lay = layout(parents[0].arch)
    m = ga.mutation
    population = [Individual(e, carried_role) for e in elites]
    for i in parent_of_each_child(len(parents), ga, rng):
        parent = parents[i]
        delta = child_delta(rng, parent, m, lay, noise_size)  # seed 003's options: genome.py
        if len(parents) > 1 and lay.n_layers > 1 and rng.random() < ga.crossover_rate:
            mate = parents[(i + int(rng.integers(1, len(parents)))) % len(parents)]
            point = int(rng.integers(1, lay.n_layers))
            population.append(Individual(crossover(parent, mate, point, then=(delta,)), "child"))
        else:
            population.append(Individual(mutate(parent, delta), "child"))
    return population


def parent_of_each_child(n_parents: int, ga: GASpec, rng: np.random.Generator) -> list[int]:
    """Which parent (an index into the T parents, best first) each child of a generation has.
    per_parent: each parent `children_per_parent` times, in order. uniform (the paper's):
    `children` draws, each uniform over the T parents."""
    if ga.selection == "uniform":
        return [int(i) for i in rng.integers(0, n_parents, size=ga.children)]
    return [i for i in range(n_parents) for _ in range(ga.children_per_parent)]


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
