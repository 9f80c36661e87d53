"""The master loop: ask the algorithm for a step's tasks, send them, wait, record, resume.

The scheduler knows no algorithm (evolve/__init__.py says what one is) and keeps no state of its
own (DESIGN invariant 6). A step's state document (stored as "generation" `index`) is written
only once every task of that step has a result in the store; on start, the scheduler takes the
last such document and asks the algorithm for the step after it. Planning is deterministic, so
an interrupted step is planned again identically and only the tasks whose result documents are
missing are sent again: nothing is evaluated or trained twice.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import metrics
from .evolve import Algorithm, EventAlgorithm, Step
from .fleet.executor import Executor, Feed
from .heartbeat import HEARTBEAT_S, Heartbeat
from .materialize import CACHE_HITS
from .spec import ExperimentSpec, SpecError, parse_spec, spec_to_dict
from .store import ResultStore
from .store.results import lost_result, task_id


class ExperimentMismatch(Exception):
    """The store already holds an experiment of this name with a different spec."""


@dataclass(frozen=True)
class Progress:
    """What the progress output shows after each step."""

    generation: int  # the step's index: a GA generation, an arena step
    generations: int  # steps in all
    line: str  # what the algorithm says of this step
    best: float
    mean: float
    evals_per_s: float  # tasks finished per second
    hit_rate: float
    errors: int
    resumed_from: int | None = None


def algorithm(spec: ExperimentSpec, store: ResultStore | None = None) -> Algorithm | EventAlgorithm:
    """The algorithm that runs `spec`: the GA, or the GAN arena in rounds or as an asynchronous
    fight (the arena records its members in `store`)."""
    if spec.algorithm == "arena":
        from .evolve.arena import Arena
        from .evolve.fight import Fight

        return Fight(spec, store) if spec.arena.mode == "async" else Arena(spec, store)
    if spec.algorithm == "pso":
        from .evolve.pso import PSO

        return PSO(spec)
    if spec.algorithm == "tune":
        from .evolve.tune import Tune

        return Tune(spec)
    from .evolve.ga import GA

    return GA(spec)


def finished(spec: ExperimentSpec, store: ResultStore) -> bool:
    """Whether experiment `spec` has run to its end."""
    algo = algorithm(spec)
    if hasattr(algo, "react"):  # an EventAlgorithm
        last = store.last_generation(spec.name)
        return last is not None and algo.finished(store.get_generation(spec.name, last))
    complete = complete_generations(store, spec.name)
    return complete >= algo.steps or (complete > 0 and stopped(algo, store.get_generation(spec.name, complete - 1)))


def stopped(algo: Algorithm, state: dict | None) -> bool:
    """Whether a step-by-step algorithm ends its run early after the step whose state is `state`
    (the GA's ga.frame_budget); an algorithm without `stopped` runs all its steps."""
    return state is not None and hasattr(algo, "stopped") and algo.stopped(state)


def complete_generations(store: ResultStore, name: str) -> int:
    """How many steps of experiment `name` are complete (they are numbered from 0)."""
    last = store.last_generation(name)
    return 0 if last is None else last + 1


def provenance(spec: ExperimentSpec) -> dict:
    """What produced a run, beside its spec: the versions of evoarena, Python, torch and NumPy on
    the master, its device, the CPU arithmetic it was pinned to (arithmetic.py), and the fingerprint
    of the noise table every genome is built from (each result document names the device its
    worker computed on). Recorded at each (re)start."""
    import os
    import platform

    import numpy
    import torch

    from . import __version__
    from .arithmetic import PINNED
    from .noise import fingerprint

    return {"evoarena": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__,
            "master_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
            "arithmetic": {name: os.environ.get(name) for name in PINNED},
            "noise_fingerprint": fingerprint(spec.noise.seed, spec.noise.size)}


def stored_spec(name: str, stored: dict) -> dict:
    """A stored spec as today's spec reads it: a field added since it was stored is written out at
    its default, which is what every run without the field did (a new field's default must keep
    the old behaviour), so a run stored before the field resumes. ExperimentMismatch if today's
    spec refuses the stored one (a field since removed or narrowed)."""
    try:
        return spec_to_dict(parse_spec(stored, f"the stored spec of {name!r}"))
    except SpecError as exc:
        raise ExperimentMismatch(f"experiment {name!r} is stored with a spec this version cannot read ({exc}); "
                                 "give this one another name") from None


def register(spec: ExperimentSpec, store: ResultStore) -> None:
    """Record the experiment, or check that the stored one is the same experiment.

    Only the length of the run (`ga.generations`, `ga.frame_budget`, `arena.rounds`, `tune.steps`, `pso.steps`) may
    differ, to extend it. The stored spec is compared as today's spec reads it (`stored_spec`).
    """
    wanted = spec_to_dict(spec)
    stored = store.get_experiment(spec.name)
    if stored is not None:
        def same(d: dict) -> dict:
            return {**d, "ga": d.get("ga") and {**d["ga"], "generations": None, "frame_budget": None},
                    "arena": d.get("arena") and {**d["arena"], "rounds": None},
                    "tune": d.get("tune") and {**d["tune"], "steps": None},
                    "pso": d.get("pso") and {**d["pso"], "steps": None}}
        if same(stored_spec(spec.name, stored["spec"])) != same(wanted):
            raise ExperimentMismatch(
                f"experiment {spec.name!r} already exists in the store with a different spec; "
                "give this one another name, or run the original file to continue it"
            )
        complete, steps = complete_generations(store, spec.name), getattr(algorithm(spec), "steps", None)
        if steps is not None and steps < complete:
            field = {"arena": "arena.rounds", "tune": "tune.steps", "pso": "pso.steps"}.get(spec.algorithm, "ga.generations")
            raise ExperimentMismatch(
                f"{field} = {spec.steps_wanted} but experiment {spec.name!r} already has "
                f"{complete} complete steps; ask for more"
            )
    created = time.time() if stored is None else stored["created"]
    store.put_experiment(spec.name, {"spec": wanted, "status": "running", "created": created, "updated": time.time(),
                                     "provenance": provenance(spec)})
    # (a new run drops the reason of an earlier failure: the document is replaced whole)


def run(spec: ExperimentSpec, store: ResultStore, executor: Executor,
        on_progress: Callable[[Progress], None] | None = None, heartbeat_s: float = HEARTBEAT_S) -> dict:
    """Run (or continue) experiment `spec` to its last step; return the last step's document.

    A run that fails is recorded as `failed`, with the reason, in the experiment's document
    (running the same command again continues from the last complete step). While it runs, the
    master beats every `heartbeat_s` seconds in that document (heartbeat.py)."""
    register(spec, store)
    algo = algorithm(spec, store)
    try:
        with Heartbeat(store, spec.name, heartbeat_s):
            if hasattr(algo, "react"):
                return run_events(spec, store, executor, algo, on_progress)
            return run_steps(spec, store, executor, algo, on_progress)
    except Exception as exc:
        store.put_experiment(spec.name, {**store.get_experiment(spec.name), "status": "failed",
                                         "reason": f"{type(exc).__name__}: {exc}", "updated": time.time()})
        raise


def run_steps(spec: ExperimentSpec, store: ResultStore, executor: Executor, algo: Algorithm,
              on_progress: Callable[[Progress], None] | None = None) -> dict:
    """Run a step-by-step algorithm (the GA, the arena's rounds) to its last step."""
    last = store.last_generation(spec.name)
    index = 0 if last is None else last + 1
    resumed_from = None if last is None else index
    state = None if last is None else store.get_generation(spec.name, last)
    while index < algo.steps and not stopped(algo, state):
        step = algo.plan(index, state)
        results, stats = run_step(spec.name, store, executor, index, step)
        doc = algo.advance(index, state, step, results)
        doc["stats"] = {**doc.get("stats", {}), **stats}
        store.put_generation(spec.name, index, {"complete": True, **doc, "updated": time.time()})
        metrics.STEPS.labels(spec.name).set(index + 1)
        state = store.get_generation(spec.name, index)
        if on_progress:
            s = state["stats"]
            on_progress(_progress(index, algo.steps, algo.line(index, state), s, s["evals_per_s"], s["hit_rate"],
                                  resumed_from))
            resumed_from = None
        index += 1
    store.put_experiment(spec.name, {**store.get_experiment(spec.name), "status": "complete", "updated": time.time()})
    return state


def run_events(spec: ExperimentSpec, store: ResultStore, executor: Executor, algo: EventAlgorithm,
               on_progress: Callable[[Progress], None] | None = None) -> dict:
    """Run an event-driven algorithm: each result, as it arrives, becomes a new state (stored as
    event `index`) whose new tasks are sent at once. A task whose result is already stored (sent
    before a crash) is consumed without being sent again."""
    last = store.last_generation(spec.name)
    index, resumed_from = (0, None) if last is None else (last, last)
    state = algo.start() if last is None else store.get_generation(spec.name, last)
    if last is None:
        store.put_generation(spec.name, 0, {**state, "updated": time.time()})
    feed, sent, stream, started = Feed(), set(), None, time.perf_counter()
    while not algo.finished(state):
        inflight = {task_id(algo.op, t): t for t in state["inflight"]}
        ready = next((i for i in sorted(inflight) if store.get_result(i) is not None), None)
        if ready is not None:
            state = algo.react(state, inflight[ready], store.get_result(ready))
            index += 1
            store.put_generation(spec.name, index, {**state, "updated": time.time()})
            if on_progress:
                on_progress(_progress(index, index, algo.line(index, state), state["stats"],
                                      index / (time.perf_counter() - started), 0.0, resumed_from))
                resumed_from = None
            continue
        feed.extend(t for i, t in inflight.items() if i not in sent)
        sent.update(inflight)
        stream = stream or executor.map(algo.op, feed)
        summary = next(stream, None)
        if summary is None:  # the executor has nothing left in flight: the next loop sends anew
            stream = None
            if not feed and not any(store.get_result(i) for i in inflight):
                raise RuntimeError(f"event {index}: {len(inflight)} tasks in flight but none running")
            continue
        if summary["_id"] in inflight:
            _record_lost(spec.name, store, inflight[summary["_id"]]["generation"], algo.op, [summary])
    store.put_experiment(spec.name, {**store.get_experiment(spec.name), "status": "complete", "updated": time.time()})
    return state


def _progress(index: int, total: int, line: str, stats: dict, rate: float, hit_rate: float,
              resumed_from: int | None) -> Progress:
    return Progress(index, total, line, stats.get("best", math.nan), stats.get("mean", math.nan), rate, hit_rate,
                    stats.get("errors", 0), resumed_from)


def run_step(experiment: str, store: ResultStore, executor: Executor, index: int, step: Step) -> tuple[list[dict], dict]:
    """Send the step's tasks that have no stored result; return every task's result document (in
    task order) and the step's bookkeeping (seconds, tasks per second, cache hit rate)."""
    started = time.perf_counter()
    ids = [task_id(step.op, t) for t in step.tasks]
    # a task whose infrastructure failed (`transient`) is run again, the others are done
    done = {d["_id"] for d in store.find_results(experiment, index, step.op) if not d.get("transient")}
    todo = [t for i, t in zip(ids, step.tasks) if i not in done]
    summaries = []
    for summary in executor.map(step.op, todo) if todo else ():
        summaries.append(summary)
        _record_lost(experiment, store, index, step.op, [summary])  # at once: a resume knows it

    stored = {d["_id"]: d for d in store.find_results(experiment, index, step.op)}
    missing = [i for i in ids if i not in stored]
    if missing:
        raise RuntimeError(f"step {index}: {len(missing)} results never reached the store (first: {missing[0]})")
    seconds = time.perf_counter() - started
    builds = [s["build"] for s in summaries if s.get("build")]
    hits = sum(b in CACHE_HITS for b in builds)
    stats = {"evals_per_s": len(summaries) / seconds if seconds > 0 else 0.0,
             "hit_rate": hits / len(builds) if builds else 0.0, "seconds": seconds}
    return [stored[i] for i in ids], stats


def _record_lost(experiment: str, store: ResultStore, index: int, op: str, summaries: list[dict]) -> None:
    """Record the error of a task that failed before its worker could store a result (it crashed
    its worker, was dead-lettered, timed out, or its infrastructure kept failing), so that it has a
    document and is not sent again in this run. Only where no result is stored: a real result that
    a late worker stored meanwhile is never overwritten (store.add_result is one atomic write)."""
    for summary in summaries:
        if summary.get("error"):
            store.add_result(lost_result(experiment, index, op, summary))
