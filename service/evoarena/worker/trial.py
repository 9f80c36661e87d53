"""What a worker does with a `trial` task of the meta-parameter search (evolve/tune.py).

A trial is one whole arena run: the stored experiment's `tune.base` arena with the task's values
written at their paths (spec_tune.derive), run to its last round by the same master loop and the
same arena ops as any arena experiment, inside this worker, on a private temporary SQLite store
and artifacts directory that are gone when the trial ends. Only the noise table (read-only) is
shared with the worker. The task is small JSON: the experiment, the step, the trial's index and
its values; the base arena and the objective come from the experiment's stored spec, which the
worker reads anyway to admit the task.

The trial's score is measured independently of the values searched: the arena's own fitness
depends on the fitness parameters (Weibull factors, RAC weight) and cannot be compared across
trials, so the objective is the real-data quality of the final round's generators
(problems/gan_metrics.py: modes covered, high-quality share, reverse KL), the best generator's:

    modes_hq          modes_covered@20 + high_quality   (in [0, modes + 1]; the default)
    modes_covered     modes_covered                     (modes with >= 1 high-quality sample)
    modes_covered@20  modes_covered@20                  (modes with >= 20 high-quality samples)
    high_quality      high_quality
    reverse_kl        -reverse_kl                       (0 is best)

modes_hq counts modes at 20 high-quality samples, not at one: the published ">= 1" count
saturates at small budgets (a generator spraying noise over the data's square reaches most of the
grid's modes), so the search would see ties where the stricter count still ranks the trials; the
high-quality share breaks the remaining ties. (Before modes_covered meant ">= 1", it meant
">= 20": a modes_hq stored then is the same number as one computed now.)

Every trial of an experiment runs its arena with the experiment's seed, so a trial's objective is
a function of its values alone (on one machine; on every x86-64 CPU with AVX2 in `reproducible`
arithmetic, arithmetic.py), and a redelivered trial
stores the same document.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from evoarena import scheduler
from evoarena.spec.experiment import ExperimentSpec, parse_spec
from evoarena.spec.tune import OBJECTIVES, derive
from evoarena.store import open_store

TRIAL_NAME = "trial"  # the arena's name in its private store (the store is the trial's own)


def objective(kind: str, quality: dict) -> float:
    """One generator's score under `kind` (the module docstring's table), from its quality measures."""
    if kind == "modes_hq":
        return quality["modes_covered@20"] + quality["high_quality"]
    if kind == "reverse_kl":
        return -quality["reverse_kl"]
    if kind in ("modes_covered", "modes_covered@20", "high_quality"):
        return float(quality[kind])
    raise ValueError(f"objective {kind!r} is unknown; accepted: {', '.join(OBJECTIVES)}")


def trial(worker, task: dict, result_id: str) -> dict:
    """Run the task's derived arena to its end; the fields of its result document."""
    from evoarena.worker.inline import InlineExecutor  # inline imports worker.py, which imports this module
    from evoarena.worker.worker import WorkerConfig

    experiment = parse_spec(worker._spec(task["experiment"]))
    tune = experiment.tune
    if tune is None:
        raise ValueError(f"experiment {task['experiment']!r} has no tune section: a trial task belongs to a tune run")
    arena = derive(tune.base, task["values"])
    spec = ExperimentSpec(name=TRIAL_NAME, seed=experiment.seed, problem=experiment.problem, noise=experiment.noise,
                          arena=arena, arithmetic=experiment.arithmetic)  # this process's already (Worker.admit)
    with tempfile.TemporaryDirectory(prefix="evoarena-trial-") as root:
        url = f"sqlite:///{Path(root) / 'trial.db'}"
        config = WorkerConfig(url, str(Path(root) / "artifacts"), worker.config.noise_dir, worker.config.cache_bytes,
                              device=worker.config.device)
        store, executor = open_store(url), InlineExecutor(config)
        try:
            final = scheduler.run(spec, store, executor)
        finally:
            store.close()
            if "store" in vars(executor.worker):  # the inner worker's own connection (a cached_property)
                executor.worker.store.close()
    gens = [m for m in final["members"] if m["side"] == "gen" and m.get("quality")]
    if not gens:
        raise RuntimeError("no generator of the final round has a quality measure")
    scored = sorted(gens, key=lambda m: (-objective(tune.objective, m["quality"]), m["id"]))
    best = scored[0]["quality"]
    return {"fitness": objective(tune.objective, best), "values": task["values"], "trial": task["trial"],
            "metrics": {"objective": tune.objective, "best_quality": best,
                        "qualities": [m["quality"] for m in scored], "arena_best_fitness": final["stats"]["best"]},
            "build": None, "holds": []}
