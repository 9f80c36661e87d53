"""How many workers one master keeps busy: a sleeping op through the real master path, 1 to 64 slots.

Sends `evoarena.sleep` tasks (fleet/app.py: the task sleeps `--sleep` seconds, the stand-in for a
GPU op, and returns the summary an op returns, storing nothing) through
`CeleryExecutor(app, store).map("sleep", tasks)`, the path every step of the scheduler takes
(routing, the rpc:// results, the store looked up every 2 s for pending ids: a fresh SQLite store
here), to 1, 4, 16 and 64 worker slots on the real RabbitMQ. Each size gets fresh workers on a
private queue, started by `evoarena.fleet.local_workers` as a pod starts them, but with Celery's
threads pool (`evoarena worker --pool threads --concurrency N`, at most `--threads` slots per
process): 64 prefork processes that each import torch would need about 20 GB, and a sleeping
thread stands for a GPU as well as a process does (the threads pool ignores time limits; a sleep
needs none). For each size:

  ideal       slots / sleep: every slot busy all the time
  measured    `--rounds` x slots tasks sent in one map call, divided by the time from the call
              to its last result (a short warm-up map runs first, untimed)

Then the master's dispatch ceiling: `--ceiling-tasks` tasks that sleep 0 s, all in one map call,
on the 64 slots: tasks/s, and the master's own CPU time per task (this process's CPU time over
the map). Its inverse is the ceiling of a master with a core of its own that never waits; but the
master also waits on the broker for each send (the publisher confirm), so that is an upper bound.
On this machine the master shares 2 cores with RabbitMQ and the workers: the wall-clock figure
is the lower bound.

Extrapolation: a worker whose task takes s seconds asks for 1/s tasks a second, so one master
keeps ceiling x s workers busy. The seconds per task of the memorize GA's evaluation and the
arena's train_pair and match tasks are arguments whose defaults are docs/BENCHMARKS.md's CPU figures
(bench/memorize.py, bench/arena_fleet.py on this machine); pass the seconds of your GPU. The
ceiling covers the executor only: the scheduler's planning, advancing and store writes between
steps come on top.

Bar: at 64 slots, measured at least 90% of ideal. Prints BAR MET, or BAR MISSED and exits 1.
Workers and queues are removed at the end, also when the bench fails or is stopped.

    python bench/scale.py                # about a minute on 2 cores
    python bench/scale.py --profile 25   # then a second ceiling run under cProfile: the master's top functions
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from dispatch import stop_on_sigterm

from evoarena.fleet.celery_executor import CeleryExecutor
from evoarena.fleet.local_workers import LocalWorkers
from evoarena.store import open_store

SLOTS = (1, 4, 16, 64)
BAR = 0.90

# Seconds per task of the real ops, for the extrapolation. The defaults are docs/BENCHMARKS.md's figures
# on this machine's CPU (2 workers, one thread each); a GPU takes less: pass its seconds.
TASK_SECONDS = {  # op: (argument, default seconds per task, where the default comes from)
    "memorize evaluate": ("--memorize-task-s", 2 / 19.6, "docs/BENCHMARKS.md, bench/memorize.py: 19.6 evaluations/s (8x4) on 2 CPU workers"),
    "arena train_pair": ("--train-pair-task-s", 2 * 500 / 885,
                         "docs/BENCHMARKS.md, bench/arena_fleet.py: 885 steps/s on 2 CPU workers, 500 steps a task"),
    "arena match": ("--match-task-s", 2 / 35.05, "docs/BENCHMARKS.md, bench/arena_fleet.py: 35.05 match tasks/s on 2 CPU workers"),
}


@dataclass
class Measured:
    tasks: int
    wall: float
    cpu: float  # this process's CPU seconds over the map call
    nodes: Counter
    errors: list[str]

    @property
    def rate(self) -> float:
        return self.tasks / self.wall


def threads_per_process(slots: int, most: int) -> list[int]:
    """Slots split over as few worker processes as `most` threads each allows, as evenly as possible."""
    processes = -(-slots // most)
    return [slots // processes + (i < slots % processes) for i in range(processes)]


def sleep_tasks(tag: str, count: int, seconds: float) -> list[dict]:
    """`count` tasks for `evoarena.sleep`, each under its own genome id (so no worker holds one:
    they all go to the shared queue)."""
    return [{"experiment": f"scale-{tag}", "generation": 0, "genome": {"id": f"{tag}-{i}"}, "seconds": seconds}
            for i in range(count)]


def measure(executor: CeleryExecutor, tasks: list[dict], profile: cProfile.Profile | None = None) -> Measured:
    nodes, errors = Counter(), []
    if profile:
        profile.enable()
    started, cpu = time.perf_counter(), time.process_time()
    for summary in executor.map("sleep", tasks):
        nodes[summary.get("node")] += 1
        if summary.get("error"):
            errors.append(f"{summary['_id']}: {summary['error']}")
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    if profile:
        profile.disable()
    return Measured(len(tasks), wall, cpu, nodes, errors)


def start_fleet(fleet: LocalWorkers, slots: int, most: int) -> None:
    for i, threads in enumerate(threads_per_process(slots, most)):
        fleet.start(f"w{i}", "--pool", "threads", "--concurrency", str(threads))
    fleet.wait_ready()


def run_sizes(args: argparse.Namespace, profile: cProfile.Profile | None) -> tuple[dict[int, Measured], Measured, list[str]]:
    """Each size on fresh workers, printing its row; then the ceiling on the largest. Returns the
    runs by slots, the ceiling run, and what went wrong."""
    header = (f"{'slots':>5} {'processes':>9} {'tasks':>6} {'ideal tasks/s':>13} {'measured tasks/s':>16} "
              f"{'% of ideal':>10} {'wall s':>7}")
    print(header)
    print("-" * len(header))
    runs, failures = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        env = {"EVOARENA_STORE": f"sqlite:///{tmp}/scale.db", "EVOARENA_ARTIFACTS": f"{tmp}/artifacts",
               "EVOARENA_NOISE_DIR": f"{tmp}/noise", "EVOARENA_THREADS": "1"}
        store = open_store(env["EVOARENA_STORE"])
        try:
            for slots in SLOTS:
                with LocalWorkers(Path(tmp), env, label="scale") as fleet:
                    start_fleet(fleet, slots, args.threads)
                    executor = CeleryExecutor(fleet.app, store)
                    measure(executor, sleep_tasks(f"{slots}-warm", 2 * slots, 0.0))
                    run = runs[slots] = measure(executor, sleep_tasks(f"{slots}", args.rounds * slots, args.sleep))
                    ideal = slots / args.sleep
                    print(f"{slots:>5} {len(fleet.procs):>9} {run.tasks:>6} {ideal:>13.1f} {run.rate:>16.1f} "
                          f"{run.rate / ideal:>10.1%} {run.wall:>7.2f}", flush=True)
                    if len(run.nodes) != len(fleet.procs):
                        failures.append(f"with {slots} slots, {len(run.nodes)} of {len(fleet.procs)} processes ran tasks")
                    if slots == SLOTS[-1]:
                        ceiling = measure(executor, sleep_tasks("ceiling", args.ceiling_tasks, 0.0))
                        run.errors += ceiling.errors
                        if profile:  # a run of its own: the profiler slows the master down
                            run.errors += measure(executor, sleep_tasks("profiled", args.ceiling_tasks, 0.0), profile).errors
                    if run.errors:
                        failures.append(f"with {slots} slots, {len(run.errors)} tasks failed, the first: {run.errors[0]}")
        finally:
            store.close()
    return runs, ceiling, failures


def print_extrapolation(ceiling: Measured, args: argparse.Namespace) -> None:
    cpu_ms = 1000 * ceiling.cpu / ceiling.tasks
    own_core = 1000 / cpu_ms
    print(f"master's dispatch ceiling ({ceiling.tasks} tasks of 0 s in one map call, {SLOTS[-1]} slots): "
          f"{ceiling.rate:.0f} tasks/s on this machine, the master on CPU {ceiling.cpu / ceiling.wall:.0%} of that time; "
          f"its CPU per task {cpu_ms:.2f} ms, so at most {own_core:.0f} tasks/s with a core of its own")
    print()
    print("GPU workers one master keeps busy = ceiling x seconds per task (the executor only: the scheduler's "
          "own work between steps comes on top)")
    header = f"{'op':<18} {'s/task':>7} {'workers (ceiling here)':>22} {'(own core)':>10}  s/task from"
    print(header)
    print("-" * len(header))
    for op, (flag, default, source) in TASK_SECONDS.items():
        seconds = getattr(args, flag.lstrip("-").replace("-", "_"))
        where = f"{flag}, default: {source}" if seconds == default else f"{flag}, given"
        print(f"{op:<18} {seconds:>7.3f} {ceiling.rate * seconds:>22.0f} {own_core * seconds:>10.0f}  {where}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sleep", type=float, default=0.5, help="seconds each task sleeps (default 0.5)")
    parser.add_argument("--rounds", type=int, default=10, help="tasks per slot in each timed map (default 10)")
    parser.add_argument("--threads", type=int, default=16, help="most slots (threads) per worker process (default 16)")
    parser.add_argument("--ceiling-tasks", type=int, default=3000, help="0 s tasks for the dispatch ceiling (default 3000)")
    for op, (flag, default, source) in TASK_SECONDS.items():
        parser.add_argument(flag, type=float, default=default,
                            help=f"seconds of one {op} task (default {default:.3f}: {source})")
    parser.add_argument("--profile", type=int, metavar="N", default=0,
                        help="run the ceiling again under cProfile and print the master's N costliest functions (own time)")
    args = parser.parse_args()
    stop_on_sigterm()

    print(f"evoarena.sleep tasks of {args.sleep} s through CeleryExecutor.map; {args.rounds} tasks per slot; "
          f"threads pool, at most {args.threads} slots per worker process")
    profile = cProfile.Profile() if args.profile else None
    runs, ceiling, failures = run_sizes(args, profile)
    print()
    print_extrapolation(ceiling, args)
    if profile:
        print()
        print(f"the master during a second ceiling run, profiled: top {args.profile} functions by own time")
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.profile)
        print(out.getvalue().split("\n\n", 1)[-1].rstrip())

    top = runs[SLOTS[-1]].rate / (SLOTS[-1] / args.sleep)
    if top < BAR:
        failures.append(f"at {SLOTS[-1]} slots, {top:.1%} of ideal (bar: at least {BAR:.0%})")
    print()
    for line in failures:
        print(f"BAR MISSED: {line}")
    if failures:
        return 1
    print(f"BAR MET: at {SLOTS[-1]} slots, {top:.1%} of ideal (bar: at least {BAR:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
