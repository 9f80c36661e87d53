"""Where experiments stand, read from the store alone: `evoarena status NAME` and `evoarena list`.

The store is the whole truth: no master is asked anything, so these work while a run goes on, after
it stopped, and from another machine that reaches the store. An experiment's state is its
document's `status`: running (a master is at it), complete, or failed with the reason the master
recorded; a `running` run whose master stopped beating (Ctrl-C, `kill -9`, a lost node) reads
`stale (no heartbeat for N s)` (heartbeat.py).

Heavy modules (torch, the store) are imported inside the functions, so the command line starts fast.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evoarena.settings import Settings
    from evoarena.spec.experiment import ExperimentSpec
    from evoarena.store import ResultStore


class BadInput(Exception):
    """A command-line argument naming something the store does not hold (an experiment, a genome)
    or that the command cannot take; `str()` is the one line the user sees, and the exit code is 2."""


def usage_errors(command: Callable[[argparse.Namespace, Settings], int]) -> Callable[[argparse.Namespace, Settings], int]:
    """`command`, answering BadInput with one `error:` line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapped(args: argparse.Namespace, settings: Settings) -> int:
        try:
            return command(args, settings)
        except BadInput as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return wrapped


def open_experiment(store_url: str, name: str) -> tuple[ResultStore, dict, ExperimentSpec]:
    """(the store, experiment `name`'s document, its spec); BadInput for a bad or unknown name."""
    from evoarena.spec.experiment import parse_spec, validate_name
    from evoarena.store import open_store

    try:
        validate_name(name)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    store = open_store(store_url)
    experiment = store.get_experiment(name)
    if experiment is None:
        known = ", ".join(store.list_experiments()) or "none"
        store.close()
        raise BadInput(f"no experiment {name!r} in the store; known: {known}")
    return store, experiment, parse_spec(experiment["spec"], source=f"the stored spec of {name}")


# --- the state of one experiment --------------------------------------------------------------


def state_text(experiment: dict, now: float | None = None) -> str:
    """running, complete, "failed: <reason>" (the first line of the reason the master recorded), or
    "stale (no heartbeat for N s)" for a running experiment whose master went silent (at time `now`)."""
    from evoarena.heartbeat import silence, stale_text

    status = experiment["status"]
    if (quiet := silence(experiment, now)) is not None:
        return stale_text(quiet)
    reason = (experiment.get("reason") or "").strip().splitlines()
    return f"{status}: {reason[0]}" if status == "failed" and reason else status


@dataclass(frozen=True)
class Steps:
    """How far a run is: `done` of `total` units (generations, steps or fights)."""

    done: int
    total: int
    unit: str

    def __str__(self) -> str:
        return f"{self.done}/{self.total} {self.unit}"


def steps_of(store: ResultStore, name: str, spec: ExperimentSpec) -> Steps:
    """Complete generations (GA), steps (arena, pso, tune) or fights (the asynchronous fight), of all."""
    from evoarena import scheduler

    algo = scheduler.algorithm(spec)
    last = store.last_generation(name)
    if algo.steps is None:  # the asynchronous fight: events, not steps
        if last is None:  # registered, first state not stored yet: the budget its start will give
            from evoarena.evolve.population import training_pairs

            return Steps(0, algo.fights_per_pair * len(training_pairs(algo.founders())), "fights")
        state = store.get_generation(name, last)
        return Steps(state["done"], state["budget"], "fights")
    return Steps(0 if last is None else last + 1, algo.steps, spec.step_unit + "s")


def resume_text(store: ResultStore, spec: ExperimentSpec) -> str | None:
    """The line `evoarena run` prints when it continues a run: the step it resumes at, of how many,
    and the results already stored (those tasks are not run again); None for a run with nothing stored."""
    name, steps = spec.name, steps_of(store, spec.name, spec)
    stored = store.count_results(name)
    if steps.done == 0 and stored == 0 and store.last_generation(name) is None:
        return None
    if steps.unit == "fights":  # the asynchronous fight: each result is an event
        return f"resuming at fight {steps.done + 1} of {steps.total} ({stored} results already stored, not run again)"
    unit = spec.step_unit
    partial = store.count_results(name, steps.done)
    return (f"resuming at {unit} {steps.done + 1} of {steps.total} ({steps.done} complete; {partial} results of "
            f"{unit} {steps.done + 1} already stored, not run again)")


def ago(t: float) -> str:
    seconds = max(0, time.time() - t)
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago" if seconds < 7200 else f"{seconds / 3600:.1f} h ago"


def status_lines(store: ResultStore, experiment: dict, spec: ExperimentSpec) -> list[str]:
    """What `evoarena status` prints: the state, the steps done, the last step's figures."""
    from evoarena import scheduler

    name = spec.name
    algo = scheduler.algorithm(spec)
    last = store.last_generation(name)
    done = 0 if last is None else last + 1
    reason = f": {experiment['reason']}" if experiment["status"] == "failed" and experiment.get("reason") else ""
    state = experiment["status"] if experiment["status"] != "running" else state_text(experiment)
    lines = [f"experiment  {name}  ({state}{reason}, updated {ago(experiment['updated'])})"]
    if spec.algorithm == "arena" and algo.steps is None:  # the asynchronous fight: events, not steps
        state = store.get_generation(name, last) if last is not None else None
        if state is not None:
            lines.append(f"fights      {state['done']}/{state['budget']} done, {len(state['inflight'])} in flight")
            lines.append(f"last        {algo.line(last, state)}")
    elif spec.algorithm == "arena":
        lines.append(f"steps       {done}/{algo.steps} complete ({len(algo.phases)} per round)")
        for index in range(max(0, done - len(algo.phases)), done):  # the last round's steps
            lines.append(f"            {algo.line(index, store.get_generation(name, index))}")
    if spec.algorithm == "arena":
        lines.append(f"results     {store.count_results(name)} stored; "
                     f"{store.count_docs('pure_gen', name)} generators and {store.count_docs('pure_disc', name)} "
                     "discriminators recorded")
        return lines
    if spec.algorithm == "tune":  # evolve/tune.py: each step's trials are whole arena runs
        lines.append(f"steps       {done}/{algo.steps} complete ({spec.tune.population} trials each)")
        if last is not None:
            lines.append(f"last        {algo.line(last, store.get_generation(name, last))}")
        lines.append(f"results     {store.count_results(name)} stored")
        return lines
    total, unit = algo.steps, spec.step_unit  # a GA's generations, a swarm's steps (evolve/pso.py)
    partial = store.count_results(name, done, "evaluate") if done < total else 0
    lines.append(f"{unit + 's':<11} {done}/{total} complete" + (f" ({spec.pso.particles} particles each)" if spec.algorithm == "pso" else "")
                 + (f"; {unit} {done + 1} has {partial} results stored" if partial else ""))
    if last is not None:
        doc = store.get_generation(name, last)
        s, best = doc["stats"], doc["best"]
        lines.append(f"last        best {s['best']:.6g}  mean {s['mean']:.6g}  evals/s {s['evals_per_s']:.1f}  "
                     f"cache hits {s['hit_rate']:.1%}  errors {s['errors']}")
        m = best["metrics"]
        if "frames_total" in s:  # atari: returns, and the frames played against the budget
            budget = f" of a budget of {spec.ga.frame_budget:,}" if spec.ga.frame_budget else ""
            lines.append(f"best        genome {best['genome_id']}  mean return {best['fitness']:.6g} over "
                         f"{len(m['returns'])} episodes  frames played {s['frames_total']:,}{budget}")
        else:
            lines.append(f"best        genome {best['genome_id']}  train loss {m['train_loss']:.6g}  "
                         f"train acc {m['train_accuracy']:.1%}  val loss {m['val_loss']:.6g}  val acc {m['val_accuracy']:.1%}")
    lines.append(f"results     {store.count_results(name)} stored")
    return lines


# --- every experiment: `evoarena list` -----------------------------------------------------------

LIST_HEADER = ("experiment", "algorithm", "steps", "updated", "state")


def algorithm_name(spec: ExperimentSpec) -> str:
    """ga, arena, or arena-async (the asynchronous fight)."""
    if spec.algorithm == "arena" and spec.arena.mode == "async":
        return "arena-async"
    return spec.algorithm


def when(t: float) -> str:
    """A time as the list shows it: local time, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def list_rows(store: ResultStore) -> list[tuple[str, ...]]:
    """One row per experiment of the store, sorted by name: LIST_HEADER's columns."""
    from evoarena.spec.experiment import SpecError, parse_spec

    rows = []
    for name in store.list_experiments():
        experiment = store.get_experiment(name)
        try:
            spec = parse_spec(experiment["spec"], source=f"the stored spec of {name}")
            algorithm, steps = algorithm_name(spec), str(steps_of(store, name, spec))
        except SpecError:  # a spec this version cannot read: still listed, with what is known
            algorithm, steps = "?", "?"
        rows.append((name, algorithm, steps, when(experiment["updated"]), state_text(experiment)))
    return rows


def table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as aligned text columns (two spaces apart; the last column is not padded)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([cell.ljust(w) for cell, w in zip(row, widths)] + [row[-1]]).rstrip() for row in rows]


def add_list_parser(subparsers) -> None:
    """`evoarena list [--store URL]`."""
    parser = subparsers.add_parser("list", help="every experiment in the store, with its state")
    parser.add_argument("--store", help="result store URL (default: $EVOARENA_STORE or sqlite:///runs/evoarena.db)")


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from evoarena.store import open_store

    with open_store(args.store or settings.store) as store:
        rows = list_rows(store)
    if not rows:
        print("no experiments in the store")
        return 0
    print("\n".join(table([LIST_HEADER, *rows])))
    return 0
