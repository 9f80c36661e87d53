"""A search over an arena's meta-parameters (issue 12, part 3): a GA or a particle swarm chooses
values (learning rate, loss weights, Weibull factors, step counts) and each point is scored by a
whole short arena run (trial.py). Both searches work in the same unit box and differ only in how
the next points are chosen:

    space: d values, each with a range [low, high]; a point is u in [0, 1]^d
    u_k -> value_k:  low + u_k (high - low),  or exp(log low + u_k (log high - log low)) when log,
                     rounded to the nearest integer (halves up) when integer
    step 0:   `population` points uniform in the box                     (the same points for ga and pso)
    every step s:
        trial every point: the base arena with the point's values, to its end   (workers, in parallel)
        pso:  remember each particle's best; move the swarm (evolve/swarm.py, velocities clamped to
              vmax, positions to the box) -> the next points
        ga:   parents <- the `parents` best trials so far (elites: carried over with their score,
                         not run again: a trial is a function of its values)
              each of `population` children: a parent drawn uniformly, plus sigma * N(0, I),
              clipped to the box -> the next points
    best: the best trial of all steps

So each step runs exactly `population` trials in both searches: equal budgets at equal steps.
Everything random is drawn from generators seeded by (experiment seed, step), so an interrupted
step is planned again identically. The state after a step holds the swarm (pso) or the parents
(ga) and the history: every trial's point, values, objective and error. A trial that fails scores
nothing (a particle keeps its best; the GA never breeds from it). Values are checked against the
arena's models when a step is planned (spec_tune.derive): a point the arena refuses stops the run,
naming the path and the value, before any of its trials is sent.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from evoarena.evolve import Step, swarm, valid
from evoarena.spec.experiment import ExperimentSpec
from evoarena.spec.tune import DerivedSpecError, ParameterSpec, derive
from evoarena.tasks import envelope


class Tune:
    """The meta-parameter search as the master's algorithm: one step per generation or swarm move."""

    def __init__(self, spec: ExperimentSpec):
        self.spec, self.tune = spec, spec.tune
        self.steps = spec.tune.steps
        self.dim = len(spec.tune.space)

    # --- the algorithm ------------------------------------------------------------------------

    def plan(self, index: int, state: dict | None) -> Step:
        """The step's points (first step: uniform; then the swarm's move or the GA's children), as trials."""
        rng, n = step_rng(self.spec.seed, index), self.tune.population
        if self.tune.search == "pso":
            if state is None:
                particles = swarm.start(rng, n, np.zeros(self.dim), np.ones(self.dim), self._vmax())
            else:
                particles = swarm.move(swarm.Swarm.from_json(state["swarm"]), rng, self._coefficients(),
                                       np.zeros(self.dim), np.ones(self.dim), self.tune.topology)
            points, about = particles.position, particles
        else:
            if state is None:
                points = rng.uniform(np.zeros(self.dim), np.ones(self.dim), size=(n, self.dim))
            else:
                points = children([p["unit"] for p in state["parents"]], n, self.tune.sigma, rng)
            about = None
        values = [to_values(self.tune.space, u) for u in points]
        for i, v in enumerate(values):  # a point the arena refuses stops the run here, before anything is sent
            try:
                derive(self.tune.base, v)
            except DerivedSpecError as exc:
                raise RuntimeError(f"step {index}: trial {i}: the arena refuses {exc}") from exc
        tasks = [self._task(index, i, v) for i, v in enumerate(values)]
        return Step("trial", tasks, about={"points": points.tolist(), "swarm": about})

    def advance(self, index: int, state: dict | None, step: Step, results: list[dict]) -> dict:
        """Record the step's trials; remember the swarm's bests, or choose the GA's parents."""
        trials = [{"step": index, "trial": i, "unit": u, "values": t["values"], "objective": _score(r),
                   "error": r.get("error"), "quality": (r.get("metrics") or {}).get("best_quality")}
                  for i, (u, t, r) in enumerate(zip(step.about["points"], step.tasks, results))]
        history = (state or {}).get("trials", []) + trials
        doc: dict = {}
        if self.tune.search == "pso":
            doc["swarm"] = swarm.remember(step.about["swarm"], [t["objective"] for t in trials]).to_json()
        else:
            doc["parents"] = ranked((state or {}).get("parents", []) + trials)[: self.tune.parents]
            if not doc["parents"]:
                first = next((t["error"] for t in trials if t["error"]), "?")
                raise RuntimeError(f"step {index}: every trial failed; first error: {first}")
        valid = [t["objective"] for t in trials if t["objective"] is not None]
        best = ranked(history)
        return {**doc, "trials": history, "best": best[0] if best else None,
                "stats": {"best": best[0]["objective"] if best else math.nan,
                          "step_best": max(valid, default=math.nan),
                          "mean": statistics.fmean(valid) if valid else math.nan,
                          "evaluated": len(trials), "errors": len(trials) - len(valid)}}

    def line(self, index: int, state: dict) -> str:
        s, best = state["stats"], state["best"]
        values = "  ".join(f"{k} {_show(v)}" for k, v in (best or {}).get("values", {}).items())
        return (f"step {index + 1:>4}/{self.steps} {self.tune.search}  best so far {s['best']:.4f} ({values})  "
                f"this step best {s['step_best']:.4f} mean {s['mean']:.4f}" + (f"  errors {s['errors']}" if s["errors"] else ""))

    # --- bookkeeping ----------------------------------------------------------------------------

    def _task(self, index: int, trial: int, values: dict) -> dict:
        return envelope(self.spec, index, key=[f"trial-{trial}"], trial=trial, values=values,
                        genomes=[])  # a trial names no genome: it builds its own arena

    def _coefficients(self) -> swarm.Coefficients:
        t = self.tune
        return swarm.Coefficients(t.inertia, t.cognitive, t.social, self._vmax())

    def _vmax(self) -> np.ndarray:
        return np.full(self.dim, self.tune.vmax)


def step_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, step])


def to_value(p: ParameterSpec, u: float) -> float | int:
    """The value at unit coordinate `u` of parameter `p` (the module docstring's map)."""
    if u <= 0.0 or u >= 1.0:  # a wall of the box is exactly low or high (exp(log(x)) may not give x back)
        value = p.low if u <= 0.0 else p.high
    elif p.log:
        value = math.exp(math.log(p.low) + u * (math.log(p.high) - math.log(p.low)))
    else:
        value = p.low + u * (p.high - p.low)
    value = min(max(value, p.low), p.high)
    return int(math.floor(value + 0.5)) if p.integer else value


def to_values(space: list[ParameterSpec], point) -> dict[str, float | int]:
    """Path -> value of every parameter, at unit point `point`."""
    return {p.path: to_value(p, float(u)) for p, u in zip(space, point)}


def children(parents: list[list[float]], n: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """The GA's `n` new points: each a parent drawn uniformly plus sigma * N(0, I), clipped to the box."""
    parents = np.asarray(parents, dtype=np.float64)
    chosen = rng.integers(0, len(parents), size=n)
    return np.clip(parents[chosen] + rng.normal(0.0, sigma, size=(n, parents.shape[1])), 0.0, 1.0)


def ranked(trials: list[dict]) -> list[dict]:
    """The trials that scored, best first; ties break on (step, trial), the older first."""
    scored = [t for t in trials if t["objective"] is not None]
    return sorted(scored, key=lambda t: (-t["objective"], t["step"], t["trial"]))


def _score(result: dict) -> float | None:
    f = result.get("fitness")
    return f if valid(f) and not result.get("error") else None


def _show(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"
