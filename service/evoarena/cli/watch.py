"""`evoarena status NAME --watch [--every S]`: the status view, kept up to date until the run ends.

Every `every` seconds the store is read again: the one-shot view of `evoarena status`
(status.status_lines), then a live table of the step in progress:

    step                 done  pending  failed  best      eta
    generation 5/8          3        4       0  -1.38629  4s

- step: the generation (GA), the round and its phase (arena), the step (pso, tune), or the fights done
  (asynchronous fight); in an arena's train step, the train_pair steps its running tasks have done
  (`round 1/8 train 150/320 steps`: each worker reports its task's progress every few seconds on
  the experiment's document, worker/arena_ops.py);
- done / pending / failed: the step's tasks with a result, without one yet, and whose result is an
  error (planning is deterministic, so the step's tasks are known before they run);
- best: the best fitness so far (the GA's last generation, the arena's last match), or the best
  objective so far (tune);
- eta: from measured task times: the tasks left (this step's, less the progress its running
  train_pairs reported, and each step's after it, as many as the step of the same kind before) times
  the median seconds a task of that op took in the recent steps, shared among the workers that ran
  them; "estimating" until a task of the run has finished (the asynchronous fight: the pace of its
  last 10 events).

On a terminal the view is redrawn in place; anywhere else (a pipe, a log file) it is printed once,
then one plain line each time the live row changes, with no carriage return or escape code. Either
way the last line is the run's state (`NAME: complete`), and the exit code is 0 when the run is
complete, 1 when it failed, 130 on Ctrl-C. A run whose master went silent shows `stale (no heartbeat
for N s)` in the view and is watched on: a master started again takes it up where it stopped.
"""

from __future__ import annotations

import math
import shutil
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from evoarena.cli.status import BadInput, state_text, status_lines, table

if TYPE_CHECKING:
    from evoarena.spec.experiment import ExperimentSpec
    from evoarena.store import ResultStore

LIVE_HEADER = ("step", "done", "pending", "failed", "best", "eta")
GA_WINDOW = 5  # generations whose task times make a GA's ETA
FIGHT_WINDOW = 10  # events whose pace makes the asynchronous fight's ETA
PROGRESS_FRESH_S = 60.0  # a task's progress report older than this is a worker's that went away


@dataclass(frozen=True)
class Live:
    """The step in progress, as the live table shows it."""

    step: str
    done: int
    pending: int
    failed: int
    best: float | None
    eta_s: float | None
    estimating: bool = False  # no task of the run has finished yet: nothing to base an ETA on

    def row(self) -> tuple[str, ...]:
        best = "-" if self.best is None or math.isnan(self.best) else f"{self.best:.6g}"
        eta = "estimating" if self.estimating else eta_text(self.eta_s)
        return (self.step, str(self.done), str(self.pending), str(self.failed), best, eta)

    def line(self) -> str:
        """The plain line printed off a terminal."""
        step, done, pending, failed, best, eta = self.row()
        return f"{step}  done {done}  pending {pending}  failed {failed}  best {best}  eta {eta}"


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def eta_from_tasks(left: dict[str, float], seconds: dict[str, list[float]], workers: int) -> float | None:
    """Seconds until `left` (tasks to run per op; a fraction for a task partly done) are done: each
    op's median measured task time (the median of every op's where an op has none yet), the tasks
    shared among `workers` that run one at a time; None while no task has been measured."""
    every = [t for times in seconds.values() for t in times]
    if not every:
        return None
    fallback = statistics.median(every)
    work = sum(n * (statistics.median(seconds[op]) if seconds.get(op) else fallback) for op, n in left.items())
    return work / max(1, workers)


def live(store: ResultStore, spec: ExperimentSpec) -> Live:
    """The step in progress of `spec`'s run (its last step once the run is over)."""
    from evoarena import scheduler

    algo = scheduler.algorithm(spec)
    return _fight(store, spec) if algo.steps is None else _step(store, spec, algo)


def _step(store: ResultStore, spec: ExperimentSpec, algo) -> Live:
    from evoarena.scheduler import complete_generations
    from evoarena.tasks import task_id

    name = spec.name
    done_steps = complete_generations(store, name)
    index = min(done_steps, algo.steps - 1)  # once complete: the last step, all of it done
    state = store.get_generation(name, index - 1) if index > 0 else None
    step = algo.plan(index, state)
    tasks = {task_id(step.op, t): t for t in step.tasks}
    ids = set(tasks)
    stored = [r for r in store.find_results(name, index, step.op) if r["_id"] in ids]
    failed = sum(1 for r in stored if r.get("error"))
    ok = len(stored) - failed
    pending = ids - {r["_id"] for r in stored}
    experiment = store.get_experiment(name) or {}
    # steps done by this step's running train_pairs (worker/arena_ops.py reports them), of all its pending tasks' steps
    progress = {doc["task"]: doc for key, doc in experiment.items() if key.startswith("progress_")
                and isinstance(doc, dict) and doc.get("task") in pending
                and time.time() - doc.get("at", 0) < PROGRESS_FRESH_S} if step.op == "train_pair" else {}

    period = len(algo.phases) if spec.algorithm == "arena" else 1  # steps repeat with this period
    window = max(period, GA_WINDOW)
    earlier = {i: store.find_results(name, i) for i in range(max(0, index - window), index)}
    recent = [store.get_generation(name, i) for i in range(max(0, done_steps - period), done_steps)]
    best = next((d["stats"]["best"] for d in reversed(recent) if "best" in d.get("stats", {})), None)

    eta, estimating = None, False
    if experiment.get("status") != "failed":  # a failed run has nothing left to wait for
        measured = [r for docs in [*earlier.values(), stored] for r in docs  # a failed task's time says nothing
                    if r.get("seconds") is not None and not r.get("error")]
        seconds: dict[str, list[float]] = {}
        for r in measured:
            seconds.setdefault(r.get("op") or step.op, []).append(r["seconds"])
        left: Counter[str] = Counter()
        if done_steps < algo.steps:
            partly = sum(min(1.0, p["steps_done"] / max(1, p["steps"])) for p in progress.values())
            left[step.op] += len(pending) - partly
            # each later step has as many tasks of the same op as the last step of its kind
            kinds = {i % period: (docs[0].get("op") or step.op, len(docs)) for i, docs in earlier.items() if docs}
            kinds[index % period] = (step.op, len(ids))
            for later in range(index + 1, algo.steps):
                op, n = kinds.get(later % period, (step.op, len(ids)))
                left[op] += n
        workers = len({r.get("worker") for r in measured}) or 1
        eta = eta_from_tasks(left, seconds, workers) if left else 0.0
        estimating = eta is None

    if spec.algorithm == "arena":
        round, _, phase = algo.where(index)
        label = f"round {round + 1}/{spec.arena.rounds} {phase}"
        if progress:
            steps = sum(tasks[t]["steps"] for t in pending if "steps" in tasks[t])
            label += f" {sum(p['steps_done'] for p in progress.values())}/{steps} steps"
    else:  # a GA's generation, a swarm's or a search's step
        label = f"{spec.step_unit} {index + 1}/{algo.steps}"
    return Live(label, ok, len(pending), failed, best, eta, estimating)


def _fight(store: ResultStore, spec: ExperimentSpec) -> Live:
    name = spec.name
    last = store.last_generation(name)
    if last is None:
        return Live("fight 0/?", 0, 0, 0, None, None, estimating=True)
    state = store.get_generation(name, last)
    failed = sum(1 for r in store.find_results(name, op="train_pair") if r.get("error"))
    recent = [store.get_generation(name, i)["updated"] for i in range(max(0, last - FIGHT_WINDOW), last + 1)]
    pace = (recent[-1] - recent[0]) / (len(recent) - 1) if len(recent) > 1 else None  # seconds per event
    eta = pace * (state["budget"] - state["done"]) if pace is not None else None
    return Live(f"fight {state['done']}/{state['budget']}", state["done"] - failed, len(state["inflight"]), failed,
                state["stats"].get("best"), eta, estimating=eta is None and state["done"] < state["budget"])


# --- the loop -------------------------------------------------------------------------------------


def fleet_lines() -> list[str]:
    """The fleet's queues from the RabbitMQ management API, when EVOARENA_MANAGEMENT_URL names it."""
    from evoarena.settings import FleetSettings

    settings = FleetSettings.from_env()
    if not settings.management_url:
        return []
    from evoarena.fleet.management import broker_vhost, queue_lines, queues

    try:  # the queues of the fleet's own virtual host
        return [""] + queue_lines(queues(settings.management_url, broker_vhost(settings.broker_url)), settings.queue)
    except OSError as exc:  # the API is down or refuses us: the store's view still stands
        return ["", f"queues: the RabbitMQ management API did not answer ({exc})"]


class Screen:
    """Draws the view: redrawn in place on a terminal, printed as plain lines anywhere else."""

    def __init__(self, stream: TextIO):
        self.stream, self.tty = stream, stream.isatty()
        self.rows = 0  # terminal rows the last drawing took
        self.last_line: str | None = None

    def show(self, lines: list[str], now: Live) -> None:
        if self.tty:
            width = max(1, shutil.get_terminal_size().columns)
            view = lines + [""] + table([LIVE_HEADER, now.row()])
            up = f"\r\x1b[{self.rows}A" if self.rows else ""
            self.stream.write(up + "\x1b[J" + "\n".join(view) + "\n")
            self.rows = sum(max(1, math.ceil(len(line) / width)) for line in view)
        else:
            if self.last_line is None:
                self.stream.write("\n".join(lines) + "\n")
            if now.line() != self.last_line:
                self.stream.write(now.line() + "\n")
            self.last_line = now.line()
        self.stream.flush()

    def end(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()


def watch(store: ResultStore, name: str, every: float = 2.0, stream: TextIO | None = None) -> int:
    """Show experiment `name`'s status every `every` seconds until it is complete (0) or failed (1)."""
    from evoarena.spec.experiment import parse_spec

    if not every > 0:
        raise BadInput(f"--every = {every}: must be a number of seconds greater than 0")
    screen = Screen(stream or sys.stdout)
    try:
        while True:
            experiment = store.get_experiment(name)  # first: once it says complete, every step is stored
            spec = parse_spec(experiment["spec"], source=f"the stored spec of {name}")  # a rerun may extend it
            screen.show(status_lines(store, experiment, spec) + fleet_lines(), live(store, spec))
            if experiment["status"] in ("complete", "failed"):
                screen.end(f"{name}: {state_text(experiment)}")
                return 0 if experiment["status"] == "complete" else 1
            time.sleep(every)
    except KeyboardInterrupt:
        screen.end("")
        return 130
