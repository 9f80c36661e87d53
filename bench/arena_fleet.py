"""The GAN arena on the fleet: how much of two workers' time goes to training and matching.

Runs the ring arena (experiments/arena-ring.yaml: 2 players x (2 generators + 2 discriminators),
train-pair 500 steps, a match, cross-train 20 steps per round) for `--rounds` rounds on two Celery
workers through the real RabbitMQ, twice:

  sync    synchronous rounds: each step of the master (a train chunk, the match, the
          cross-training) waits for all its tasks before the next is planned
  async   the asynchronous fight (`arena.mode: async`): each pair trains for its chunk, is
          matched at once inside the same task against the opponents of the moment, and is sent
          again as soon as the master has read its result; no cross-training, the same
          train-pair steps per pair

Workers are started as a pod starts them (`python -m
evoarena worker`, EVOARENA_THREADS=1), on a private queue and a fresh SQLite store. The
wall time starts once the workers answer, so the first step carries each worker's first task
(its process setup).

From the result documents (train_pair, match, cross_train) and the step documents:

  wall            the master's wall time for the whole run (scheduler.run), workers already up
  match tasks/s   match results / wall time of the match steps
  train steps/s   train_pair gradient steps (trace entries, all pairs) / wall time of the train
                  steps, fleet-wide
  utilisation     sum of the tasks' `seconds` (whole task on a worker: building networks from the
                  cache, the op, checkpoints) / (wall x 2 workers)
  outside share   1 - sum of `compute_seconds` (time inside the training or matching op) /
                  (wall x 2): scheduling, the store, materialization, checkpoints and idle waiting

The outside share is split into where the worker-seconds went: the master between steps
(planning, advancing, writing the step document: both workers idle), idle workers within a step
(a step of fewer tasks than workers, or the last task of a step running alone), and the part of
each task outside its op. Per op: tasks, mean seconds, mean compute seconds, mean outside. Per
step: its tasks, wall time, idle worker-seconds, and what each worker ran.

In the async mode a fight's match runs inside its train_pair task (its `compute_seconds` count
both), so "match tasks/s" is fights per second, and there are no steps: the idle time is the
capacity minus the tasks' seconds (the master's reading of results included).

Bar: outside share under 15% in both modes. Prints BAR MET, or BAR MISSED and exits 1. Workers and queues are
removed at the end, also when the bench fails or is stopped.

    python bench/arena_fleet.py                # the file's 8 rounds, each mode: about a minute on 2 cores
    python bench/arena_fleet.py --rounds 3     # shorter: the first task's start-up weighs more
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml
from dispatch import stop_on_sigterm

from evoarena import scheduler
from evoarena.fleet.celery_executor import CeleryExecutor
from evoarena.fleet.local_workers import LocalWorkers
from evoarena.settings import Settings
from evoarena.spec.experiment import parse_spec
from evoarena.store import open_store

ROOT = Path(__file__).resolve().parent.parent
WORKERS = ("alpha", "beta")
OPS = ("train_pair", "match", "cross_train")
PHASES = {"train": "train_pair", "match": "match", "cross": "cross_train"}
MAX_OUTSIDE = 0.15


def arena_spec(rounds: int, mode: str):
    """experiments/arena-ring.yaml with `rounds` rounds in `mode`, under a name of its own."""
    raw = yaml.safe_load((ROOT / "experiments" / "arena-ring.yaml").read_text())
    raw["name"] = f"bench-arena-fleet-{mode}"
    raw["arena"]["rounds"] = rounds
    raw["arena"]["mode"] = mode
    return parse_spec(raw)


def run_arena(spec, tmp: Path, verbose: bool) -> tuple[float, list[dict], list[dict]]:
    """(wall seconds, result docs, step docs) of `spec` run on two fresh workers."""
    env = {"EVOARENA_STORE": f"sqlite:///{tmp}/bench.db", "EVOARENA_ARTIFACTS": str(tmp / "artifacts"),
           "EVOARENA_NOISE_DIR": str(Settings.from_env().noise_dir), "EVOARENA_THREADS": "1"}
    store = open_store(env["EVOARENA_STORE"])
    try:
        with LocalWorkers(tmp, env, label="bench") as fleet:
            for name in WORKERS:
                fleet.start(name)
            fleet.wait_ready()

            def show(p: scheduler.Progress) -> None:
                if verbose:
                    print(f"  step {p.generation:>2}/{p.generations}  {p.line}", flush=True)

            started = time.perf_counter()
            scheduler.run(spec, store, CeleryExecutor(fleet.app, store), on_progress=show)
            wall = time.perf_counter() - started
        results = [d for d in store.find_results(spec.name) if d["op"] in OPS]
        steps = store.list_generations(spec.name)
    finally:
        store.close()
    errors = [d for d in results if d.get("error")]
    if errors:
        raise RuntimeError(f"{len(errors)} tasks failed; first: {errors[0]['_id']}: {errors[0]['error']}")
    return wall, results, steps


def figures(wall: float, results: list[dict], steps: list[dict]) -> dict:
    """The headline figures and the split of the worker-seconds (see the module docstring)."""
    capacity = wall * len(WORKERS)
    by_op = defaultdict(list)
    for d in results:
        by_op[d["op"]].append(d)
    step_wall = defaultdict(float)  # per op
    for s in steps:
        step_wall[PHASES[s["phase"]]] += s["stats"]["seconds"]
    task_seconds = sum(d["seconds"] for d in results)
    compute = sum(d["compute_seconds"] for d in results)
    between = wall - sum(step_wall.values())  # the master alone: plan, advance, step documents
    return {
        "wall": wall, "capacity": capacity, "by_op": by_op, "step_wall": step_wall,
        "match_per_s": len(by_op["match"]) / step_wall["match"],
        "train_steps_per_s": sum(len(d["trace"]) for d in by_op["train_pair"]) / step_wall["train_pair"],
        "utilisation": task_seconds / capacity,
        "outside": 1 - compute / capacity,
        # where the worker-seconds outside the ops went; the three add up to the outside share
        "split": {
            "master between steps (both workers idle)": between * len(WORKERS) / capacity,
            "idle workers within steps": (sum(step_wall.values()) * len(WORKERS) - task_seconds) / capacity,
            "inside tasks, outside the op": (task_seconds - compute) / capacity,
        },
    }


def async_figures(wall: float, results: list[dict]) -> dict:
    """The headline figures of the asynchronous fight (no steps: see the module docstring)."""
    capacity = wall * len(WORKERS)
    task_seconds = sum(d["seconds"] for d in results)
    compute = sum(d["compute_seconds"] for d in results)
    return {
        "wall": wall, "capacity": capacity, "by_op": {"train_pair": results},
        "match_per_s": len(results) / wall,
        "train_steps_per_s": sum(len(d["trace"]) for d in results) / wall,
        "utilisation": task_seconds / capacity,
        "outside": 1 - compute / capacity,
        "split": {
            "master between steps (both workers idle)": 0.0,
            "idle workers within steps": (capacity - task_seconds) / capacity,
            "inside tasks, outside the op": (task_seconds - compute) / capacity,
        },
    }


def per_step_table(steps: list[dict], results: list[dict]) -> None:
    """Each step: its tasks, its wall time, the worker-seconds left idle in it, and what each
    worker ran (tasks, busy seconds): an uneven split is idle time for the other worker."""
    by_step = defaultdict(list)
    for d in results:
        by_step[d["generation"]].append(d)
    header = (f"{'step':>4} {'phase':<6} {'tasks':>5} {'wall s':>7} {'task s (sum)':>12} {'longest task s':>14} "
              f"{'idle worker-s':>13}  per worker: tasks / busy s")
    print(header)
    print("-" * len(header))
    for s in steps:
        docs, wall = by_step[s["generation"]], s["stats"]["seconds"]
        busy = sum(d["seconds"] for d in docs)
        per_worker = defaultdict(lambda: [0, 0.0])
        for d in docs:
            per_worker[d["node"].split("-")[0]][0] += 1
            per_worker[d["node"].split("-")[0]][1] += d["seconds"]
        print(f"{s['generation']:>4} {s['phase']:<6} {len(docs):>5} {wall:>7.2f} {busy:>12.2f} "
              f"{max(d['seconds'] for d in docs):>14.2f} {wall * len(WORKERS) - busy:>13.2f}  "
              + ", ".join(f"{w} {n} / {t:.2f}" for w, (n, t) in sorted(per_worker.items())))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="arena rounds (default: the file's 8)")
    parser.add_argument("--verbose", action="store_true", help="also the progress line of every step")
    args = parser.parse_args()
    stop_on_sigterm()

    spec = arena_spec(args.rounds, "sync")
    a = spec.arena
    print(f"arena-ring.yaml, {args.rounds} rounds: {a.players} players x ({a.generators} gen + {a.discriminators} disc), "
          f"train-pair {a.train_steps} steps, cross-train {a.cross_train_steps} steps (sync only), match "
          f"{a.match_samples} samples + {spec.problem.metric_samples} metric samples; {len(WORKERS)} workers, "
          "1 thread each, RabbitMQ")
    runs = {}
    for mode in ("sync", "async"):
        with tempfile.TemporaryDirectory() as tmp:
            wall, results, steps = run_arena(arena_spec(args.rounds, mode), Path(tmp), args.verbose)
        runs[mode] = (figures(wall, results, steps) if mode == "sync" else async_figures(wall, results), results, steps)

    print()
    print(f"{'figure':<44} {'sync':>10} {'async':>10}")
    print("-" * 66)
    rows = [("wall time of the run (s)", "wall", "{:.1f}"), ("match tasks/s (async: fights/s)", "match_per_s", "{:.2f}"),
            ("train_pair gradient steps/s (fleet-wide)", "train_steps_per_s", "{:.0f}"),
            ("worker utilisation (task s / wall x 2)", "utilisation", "{:.1%}"),
            ("outside training and matching", "outside", "{:.1%}")]
    for label, key, fmt in rows:
        print(f"{label:<44} " + " ".join(f"{fmt.format(runs[m][0][key]):>10}" for m in runs))
    for what in runs["sync"][0]["split"]:
        print(f"{'  ' + what:<44} " + " ".join(f"{runs[m][0]['split'][what]:>10.1%}" for m in runs))

    for mode, (f, results, steps) in runs.items():
        print()
        print(f"{mode}:")
        header = f"{'op':<12} {'tasks':>5} {'mean s':>7} {'mean compute s':>14} {'mean outside s':>14} {'outside':>7}"
        print(header)
        print("-" * len(header))
        for op, docs in f["by_op"].items():
            seconds, compute = sum(d["seconds"] for d in docs), sum(d["compute_seconds"] for d in docs)
            print(f"{op:<12} {len(docs):>5} {seconds / len(docs):>7.3f} {compute / len(docs):>14.3f} "
                  f"{(seconds - compute) / len(docs):>14.3f} {1 - compute / seconds:>7.1%}")
        if mode == "sync":
            print()
            per_step_table(steps, results)

    print()
    missed = [m for m in runs if runs[m][0]["outside"] >= MAX_OUTSIDE]
    shares = ", ".join(f"{m} {runs[m][0]['outside']:.2%} (utilisation {runs[m][0]['utilisation']:.1%})" for m in runs)
    print(f"{'BAR MISSED' if missed else 'BAR MET'}: workers' time outside training and matching: {shares} "
          f"(bar: under {MAX_OUTSIDE:.0%} in both modes)")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
