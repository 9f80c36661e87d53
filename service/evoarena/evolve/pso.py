"""Particle swarm optimisation of a network's weights (Kennedy and Eberhart 1995), on the master's
steps, with the update rule of evolve/swarm.py.

What a particle is. A GA genome is a handful of seeds because each child is its parent plus one
random step; a particle's next position mixes its velocity, its own best and its neighbourhood's
best, which no seed replays. So a particle lives in a K-dimensional subspace: one founder shared
by the whole swarm (initialized from a seed drawn from the experiment seed) and K fixed noise-table
directions (one direction seed, also drawn from it). Its position is a coefficient vector c:

    weights(c) = founder + pso.scale * sum_k c_k * noise[o_k : o_k + n]     (genome.py: a span delta)

so a particle is one `span` delta from the founder (K numbers and a seed on the wire), every
worker builds it from its cached founder with that one delta, and the existing `evaluate` task
and every executor run it unchanged. docs/PSO.md says what the subspace gives up.

    step 0:  c_i ~ U(-bound, bound)^K,  v_i ~ U(-vmax, vmax)^K          (swarm.start)
    every step t:
        evaluate weights(c_i) for every particle                       (workers, in parallel)
        remember each particle's best, then move every particle         (swarm.remember, swarm.move)
        state t <- the swarm after the move, the positions just evaluated and their fitness

One step of the master is one swarm step: `PSO.plan` is "evaluate every particle", `PSO.advance`
is remember and move. The random draws of step 0's start come from numpy seeded by (experiment
seed, 0), those of the move after step t from (experiment seed, t + 1): a resumed run plans the
same particles and moves the swarm the same way, and every stored step holds the whole swarm
(positions, velocities, personal bests) and what it evaluated, so the stored steps are every
particle's history.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from evoarena.encoding.genome import Genome, founder, span
from evoarena.evolve import Step, valid
from evoarena.evolve.ga import frame_counts
from evoarena.evolve.swarm import Coefficients, Swarm, best, move, remember, start
from evoarena.problems import problem_of
from evoarena.spec.experiment import ExperimentSpec
from evoarena.tasks import envelope


class PSO:
    """PSO as the master's algorithm: one step per swarm step."""

    def __init__(self, spec: ExperimentSpec):
        self.spec = spec
        self.steps = spec.pso.steps
        problem = spec.problem.model_dump(mode="json")
        arch = problem_of(problem).architecture(problem, spec.network.model_dump(mode="json"))
        init_seed, self.direction_seed = run_seeds(spec.seed)
        self.founder = founder(arch, init_seed)
        p = spec.pso
        self.high = np.full(p.directions, p.bound)
        self.low = -self.high
        self.how = Coefficients(p.inertia, p.cognitive, p.social, p.vmax)

    # --- the algorithm ------------------------------------------------------------------------

    def plan(self, index: int, state: dict | None) -> Step:
        """Evaluate every particle at its current position."""
        particles = [self.particle(x) for x in self.positions(index, state).position]
        return Step("evaluate", [self._task(index, p) for p in particles], about=particles)

    def advance(self, index: int, state: dict | None, step: Step, results: list[dict]) -> dict:
        """Remember each particle's best, then move the swarm."""
        p = self.spec.pso
        errors = [r for r in results if r.get("error")]
        if errors and p.on_error == "stop":
            raise RuntimeError(f"step {index}: particle {errors[0].get('genome_id')} failed "
                               f"({errors[0]['error']}); stopping because pso.on_error = stop")
        fitness = [r.get("fitness") if valid(r.get("fitness")) else None for r in results]
        evaluated = self.positions(index, state)
        swarm = remember(evaluated, fitness)
        if not np.isfinite(swarm.best_fitness).any():
            first = next((r["error"] for r in results if r.get("error")), "?")
            raise RuntimeError(f"step {index}: every evaluation failed so far; first error: {first}")
        moved = move(swarm, step_rng(self.spec.seed, index + 1), self.how, self.low, self.high,
                     p.topology, p.neighbours)

        scores = [f for f in fitness if f is not None]
        best_doc = best_so_far((state or {}).get("best"), results, fitness)
        return {
            "swarm": moved.to_json(),  # what the next step evaluates, with every particle's best so far
            "evaluated": {"position": evaluated.position.tolist(), "fitness": fitness,
                          "genome_ids": [g.id for g in step.about]},
            "best": best_doc,
            "stats": {
                "best": best_doc["fitness"],  # the best so far: a swarm's best only rises
                "step_best": max(scores) if scores else None,
                "mean": statistics.fmean(scores) if scores else math.nan,
                "median": statistics.median(scores) if scores else math.nan,
                "worst": min(scores) if scores else math.nan,
                "spread": spread(moved),
                "evaluated": len(results),
                "errors": len(results) - len(scores),
                **frame_counts(state, results),
            },
        }

    def line(self, index: int, state: dict) -> str:
        s = state["stats"]
        return (f"step {index + 1:>5}/{self.steps}  best {s['best']:10.5f}  mean {s['mean']:10.5f}  "
                f"spread {s['spread']:8.4f}  evals/s {s['evals_per_s']:7.1f}  cache hits {s['hit_rate']:6.1%}"
                + (f"  errors {s['errors']}" if s["errors"] else ""))

    # --- bookkeeping ----------------------------------------------------------------------------

    def positions(self, index: int, state: dict | None) -> Swarm:
        """The swarm whose positions step `index` evaluates: the start, or the last step's moved swarm."""
        if state is None:
            p = self.spec.pso
            vmax = np.full(p.directions, p.vmax)
            return start(step_rng(self.spec.seed, 0), p.particles, self.low, self.high, vmax)
        return Swarm.from_json(state["swarm"])

    def particle(self, position: np.ndarray) -> Genome:
        """The genome of the particle at `position`: the founder plus one span delta."""
        return span(self.founder, self.direction_seed, self.spec.pso.scale, position.tolist())

    def _task(self, index: int, particle: Genome) -> dict:
        return envelope(self.spec, index, genome=particle.to_json(), role="particle")


def run_seeds(seed: int) -> tuple[int, int]:
    """The founder's init seed and the direction seed of a run: the first draws of (seed, 0)'s stream
    are the start's, so these come from a stream of their own."""
    init_seed, direction_seed = np.random.default_rng([seed, 2**32 - 1]).choice(2**31 - 1, size=2, replace=False)
    return int(init_seed), int(direction_seed)


def step_rng(seed: int, index: int) -> np.random.Generator:
    """The random numbers of the swarm's start (index 0) and of the move after step index - 1."""
    return np.random.default_rng([seed, index])




def best_so_far(previous: dict | None, results: list[dict], fitness: list[float | None]) -> dict:
    """The best evaluation of the run so far: this step's best (the lowest particle index among
    equals) where it beats the previous best strictly, else the previous best."""
    scored = [(f, -i) for i, f in enumerate(fitness) if f is not None]  # -i: the lowest index wins a tie
    if not scored:
        return previous
    f, minus_index = max(scored)
    if previous is not None and not f > previous["fitness"]:
        return previous
    r = results[-minus_index]
    return {"genome_id": r["genome_id"], "fitness": r["fitness"], "metrics": r["metrics"]}


def spread(swarm: Swarm) -> float:
    """The mean distance of the particles from the swarm's best position (it shrinks as the swarm converges)."""
    centre, _ = best(swarm)
    return float(np.linalg.norm(swarm.position - centre, axis=1).mean())
