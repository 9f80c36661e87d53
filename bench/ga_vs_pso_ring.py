"""The GA against particle swarm optimisation over the ring arena's meta-parameters (issue 12 part 4,
the ring half; bench/ga_vs_pso.py has the memorize half and documents the row format used here).

Both searches run experiments/tune-ring-{ga,pso}.yaml (evolve/tune.py): the same space (meta.lr on
a log scale, fitness.rac_weight, train_steps rounded to an integer), the same base arena, the same
objective (trial.py: modes covered + high-quality share of the final round's best generator, of 8
modes), the same first points (both draw step 0 from the same seeded generator) and the same
budget: `steps` x `population` trials, each a whole short arena run. For each seed s the two files
run with `seed: s` on a fresh SQLite store in a temporary directory, on the project's LocalExecutor
(`--workers` processes), and every task payload sent is measured as the JSON bytes on the wire
(bench/ga_vs_pso.py's task_bytes, the rule of both halves).

It prints, per search, the best objective found after each step's trials (median [min, max] over
the seeds), the median wall time of a run, the median of each run's mean train_steps per trial
(equal trials are not equal compute: a search that prefers long training pays for it in wall
time), and the median and largest task message. It exits 1
when the two searches did not get the same budget (trials stored per run), when a task message
reaches 4 KiB (issue 12's bar for PSO, held here by both), or when a run fails.

    python bench/ga_vs_pso_ring.py --seeds 5                  # about 10-15 minutes on 2 cores
    python bench/ga_vs_pso_ring.py --seeds 1 --steps 2 --population 3   # a smoke run, about a minute
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from evoarena import scheduler
from evoarena.worker.inline import InlineExecutor
from evoarena.fleet.executor import LocalExecutor
from evoarena.settings import Settings
from evoarena.spec.experiment import parse_spec
from evoarena.store import open_store
from evoarena.worker.worker import WorkerConfig
from ga_vs_pso import MESSAGE_BAR, Measured  # bench/ is on sys.path: both halves count bytes by task_bytes

ROOT = Path(__file__).resolve().parent.parent
FILES = {search: ROOT / "experiments" / f"tune-ring-{search}.yaml" for search in ("ga", "pso")}


def run_search(search: str, seed: int, population: int, steps: int, workers: int) -> dict:
    """One tune run of `search` with `seed` on a fresh store: its stored trials, wall time and message sizes."""
    data = yaml.safe_load(FILES[search].read_text())
    data["seed"] = seed
    data["tune"].update(population=population, steps=steps)
    spec = parse_spec(data, source=str(FILES[search]))
    with tempfile.TemporaryDirectory(prefix="ga-vs-pso-ring-") as root:
        url = f"sqlite:///{root}/results.db"
        config = WorkerConfig(url, f"{root}/artifacts", str(Settings.from_env().noise_dir), threads=1 if workers > 1 else 0)
        inner = LocalExecutor(config, workers) if workers > 1 else InlineExecutor(config)
        executor, store = Measured(inner), open_store(url)
        started = time.perf_counter()
        try:
            scheduler.run(spec, store, executor)
            wall = time.perf_counter() - started
            docs = sorted(store.find_results(spec.name, op="trial"), key=lambda d: (d["generation"], d["trial"]))
            trials = [{"step": d["generation"], "objective": d.get("fitness") if not d.get("error") else None,
                       "values": d.get("values")} for d in docs]
        finally:
            executor.close()
            store.close()
    return {"trials": trials, "wall_s": wall, "message_bytes": executor.sizes}


def best_so_far(trials: list[dict], count: int) -> float:
    """The best objective among the first `count` trials (a failed trial scores nothing)."""
    scores = [t["objective"] for t in trials[:count] if t["objective"] is not None]
    return max(scores, default=float("nan"))


def run_ring_meta(seeds, population: int = 6, steps: int = 4, workers: int = 2, progress=print) -> list[dict]:
    """One row per search in bench/ga_vs_pso.py's format, over `seeds` (each seed runs both searches)."""
    rows = []
    for search in ("ga", "pso"):
        curve = {population * (k + 1): [] for k in range(steps)}
        row = {"problem": "ring-meta", "algorithm": search,
               "fitness": "modes covered + high-quality share of the final best generator (of 8 modes)",
               "evaluations": [], "curve": curve, "wall_s": [], "message_bytes": [], "best_values": [],
               "train_steps": []}  # beside the shared format: each run's mean train_steps per trial (its cost)
        for seed in seeds:
            run = run_search(search, seed, population, steps, workers)
            row["evaluations"].append(len(run["trials"]))
            for count in curve:
                curve[count].append(best_so_far(run["trials"], count))
            row["wall_s"].append(run["wall_s"])
            row["message_bytes"] += run["message_bytes"]
            row["train_steps"].append(statistics.fmean(t["values"]["train_steps"] for t in run["trials"]))
            best = max((t for t in run["trials"] if t["objective"] is not None), key=lambda t: t["objective"], default=None)
            row["best_values"].append(best and best["values"])
            progress(f"  {search} seed {seed}: best {curve[population * steps][-1]:.3f} after {len(run['trials'])} "
                     f"trials in {run['wall_s']:.0f} s  {best and best['values']}")
        rows.append(row)
    return rows


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def table(rows: list[dict]) -> list[str]:
    counts = list(rows[0]["curve"])
    seeds = len(rows[0]["wall_s"])
    lines = [f"ring-meta: {rows[0]['fitness']}, best so far after n trials; median [min, max] over {seeds} seeds",
             f"{'search':<7}" + "".join(f"{f'n = {c}':>22}" for c in counts)
             + f"{'wall s':>9}{'steps/trial':>12}{'msg B/task':>12}{'max B':>7}"]
    for row in rows:
        lines.append(f"{row['algorithm']:<7}" + "".join(f"{spread(row['curve'][c]):>22}" for c in counts)
                     + f"{statistics.median(row['wall_s']):>9.0f}{statistics.median(row['train_steps']):>12.0f}"
                     + f"{statistics.median(row['message_bytes']):>12.0f}"
                     + f"{max(row['message_bytes']):>7}")
    return lines


def failures(rows: list[dict]) -> list[str]:
    """What misses the bench's bars: unequal budgets, a message of 4 KiB or more."""
    problems = []
    budgets = {row["algorithm"]: row["evaluations"] for row in rows}
    if len({tuple(b) for b in budgets.values()}) != 1:
        problems.append(f"the searches got different budgets (trials per seed): {budgets}")
    for row in rows:
        if max(row["message_bytes"]) >= MESSAGE_BAR:
            problems.append(f"{row['algorithm']}: a task message of {max(row['message_bytes'])} bytes (bar: < {MESSAGE_BAR})")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 (default 5)")
    parser.add_argument("--population", type=int, default=6, help="trials per step (default 6)")
    parser.add_argument("--steps", type=int, default=4, help="steps per run (default 4: 24 trials with 6 per step)")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes (default 2; 1 runs inline)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        rows = run_ring_meta(range(args.seeds), args.population, args.steps, args.workers)
    except Exception as exc:  # noqa: BLE001 - a failed run is reported, and is a failure of the bench
        print(f"FAIL: a run failed: {type(exc).__name__}: {exc}")
        return 1
    print("\n".join(table(rows)))
    print(f"({args.seeds} seeds x 2 searches x {args.population * args.steps} trials in {time.perf_counter() - started:.0f} s)")
    problems = failures(rows)
    for problem in problems:
        print(f"FAIL: {problem}")
    if not problems:
        print(f"OK: both searches ran {args.population * args.steps} trials per seed; every task message < {MESSAGE_BAR} bytes")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
