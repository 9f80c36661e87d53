"""The master loop: ask the algorithm for a step's tasks, send them, wait, record, resume.

The scheduler knows no algorithm (evolve/__init__.py says what one is) and keeps no state of its
own (DESIGN invariant 6). A step's state document (stored as "generation" `index`) is written
only once every task of that step has a result in the store; on start, the scheduler takes the
last such document and asks the algorithm for the step after it. Planning is deterministic, so
an interrupted step is planned again identically and only the tasks whose result documents are
missing are sent again: nothing is evaluated or trained twice.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy
import torch

from evoarena import __version__, metrics
from evoarena.encoding.arithmetic import LEGACY, in_effect
from evoarena.encoding.arithmetic import apply as apply_arithmetic
from evoarena.encoding.materialize import CACHE_HITS
from evoarena.encoding.noise import fingerprint
from evoarena.evolve import DOCUMENTS, Algorithm, EventAlgorithm, Step
from evoarena.evolve.arena import Arena
from evoarena.evolve.fight import Fight
from evoarena.evolve.ga import GA
from evoarena.evolve.pso import PSO
from evoarena.evolve.tune import Tune
from evoarena.heartbeat import HEARTBEAT_S
from evoarena.lease import ExperimentBusy, MasterLease
from evoarena.spec.experiment import ExperimentSpec, SpecError, parse_spec, spec_to_dict
from evoarena.store import ResultStore
from evoarena.tasks import Executor, Feed, lost_result, plan_entry, settled, task_id

log = logging.getLogger(__name__)

# A step whose tasks failed because of the infrastructure (a store that did not answer, a refused
# task, a lost worker) sends those tasks again, up to STEP_RETRIES times after waits of
# STEP_RETRY_WAIT_S, twice that, ...; if some still fail the run stops with InfrastructureFailure,
# the step not complete and nothing recorded against their genomes: the same command continues it.
STEP_RETRIES = 3
STEP_RETRY_WAIT_S = 5.0


class ExperimentMismatch(Exception):
    """The store already holds an experiment of this name with a different spec."""


class InfrastructureFailure(RuntimeError):
    """Tasks of a step kept failing for reasons that are not their genomes' (the store, the
    artifacts, a refusal, a lost worker), after every retry: the run stops with the step not
    complete. Nothing is recorded against a genome; running the same command again continues."""


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


def algorithm(spec: ExperimentSpec) -> Algorithm | EventAlgorithm:
    """The algorithm that runs `spec`: the GA, PSO, a tuning search, or the GAN arena in rounds or
    as an asynchronous fight."""
    if spec.algorithm == "arena":
        return Fight(spec) if spec.arena.mode == "async" else Arena(spec)
    return {"pso": PSO, "tune": Tune, "ga": GA}[spec.algorithm](spec)


def write_documents(store: ResultStore, state: dict) -> None:
    """Store the documents an algorithm returned with `state` (evolve.DOCUMENTS), taking them out of it."""
    for collection, batch in state.pop(DOCUMENTS, {}).items():
        store.put_docs(collection, batch)


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
    the master, its device, the CPU arithmetic it computes in (arithmetic.in_effect: the mode, the
    variables, the kernels the libraries say they run), and the fingerprint of the noise table
    every genome is built from (each result document names the device its worker computed on).
    Recorded at each (re)start."""
    return {"evoarena": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__,
            "master_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
            "arithmetic": in_effect(),
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


def stored_arithmetic(stored: dict) -> str:
    """The arithmetic the stored run computed its last steps in: its spec's `arithmetic`, or, for
    a run stored before the spec had the field, arithmetic.LEGACY (what evoarena's import pinned then)."""
    return stored["spec"].get("arithmetic", LEGACY)


def arithmetic_history(spec: ExperimentSpec, stored: dict | None, store: ResultStore) -> list[list]:
    """Which arithmetic computed which steps of the run, as [[mode, first step], ...], oldest
    first, the last entry the arithmetic of this (re)start."""
    if stored is None:
        return [[spec.arithmetic, 0]]
    history = (stored.get("provenance") or {}).get("arithmetic_history") or [[stored_arithmetic(stored), 0]]
    if history[-1][0] != spec.arithmetic:
        since = complete_generations(store, spec.name)
        kept = history[:-1] if history[-1][1] == since else history  # no step computed since: replaced
        history = [*kept, [spec.arithmetic, since]]
    return history


def register(spec: ExperimentSpec, store: ResultStore) -> None:
    """Record the experiment, or check that the stored one is the same experiment (`registered`).

    A run recorded `complete` that this spec asks nothing more of is left as it is: running it again
    changes nothing in the store. One whose every step is stored but whose end was never recorded
    (its master died in between) is recorded `complete`; any other is `running`.

    From here this process computes in the run's arithmetic (`arithmetic.apply(spec.arithmetic)`),
    and so do the local pools it starts. A run continued in `fast` after steps computed in
    `reproducible` is noted in the log and in its provenance's `arithmetic_history`.
    """
    apply_arithmetic(spec.arithmetic)  # before provenance asks the libraries what they run
    stored = registered(spec, store)
    done = stored is not None and finished(spec, store)
    if done and stored.get("status") == "complete":
        return
    created = time.time() if stored is None else stored["created"]
    history = arithmetic_history(spec, stored, store)
    if stored is not None and stored_arithmetic(stored) != spec.arithmetic:  # to fast: `registered` refuses the rest
        log.warning("experiment %r: its %d stored steps were computed in %s arithmetic; it continues in %s, so its "
                    "bits from step %d on depend on the CPU that computes them (docs/ARCHITECTURE.md, CPU arithmetic)",
                    spec.name, history[-1][1], stored_arithmetic(stored), spec.arithmetic, history[-1][1])
    kept = {"tracking": stored["tracking"]} if stored is not None and stored.get("tracking") else {}
    store.put_experiment(spec.name, {"spec": spec_to_dict(spec), "status": "complete" if done else "running",
                                     "created": created, "updated": time.time(),
                                     "provenance": {**provenance(spec), "arithmetic_history": history}, **kept})
    # (a new run drops the reason of an earlier failure: the document is replaced whole, but for
    # the id of its run in an experiment tracker, which a resumed run continues: tracking.py)


def already_complete(spec: ExperimentSpec, store: ResultStore) -> bool:
    """Whether the store holds this very experiment run to its end and recorded `complete`
    (ExperimentMismatch if it holds another of the name). Writes nothing: `evoarena run` asks before
    it takes the lease, so that running a complete experiment again leaves the store as it was."""
    stored = registered(spec, store)
    return stored is not None and stored.get("status") == "complete" and finished(spec, store)


def registered(spec: ExperimentSpec, store: ResultStore) -> dict | None:
    """The stored document of experiment `spec`, None if there is none; ExperimentMismatch if the
    stored one is another experiment. Writes nothing.

    Only the length of the run (`ga.generations`, `ga.frame_budget`, `arena.rounds`, `tune.steps`, `pso.steps`) may
    differ, to extend it, its `tracking`, and its `arithmetic` from reproducible to fast (`register` notes it); a run
    asked for in `reproducible` is refused if any of its stored steps was computed otherwise. The
    stored spec is compared as today's spec reads it (`stored_spec`).
    """
    wanted = spec_to_dict(spec)
    stored = store.get_experiment(spec.name)
    if stored is not None:
        def same(d: dict) -> dict:
            return {**d, "ga": d.get("ga") and {**d["ga"], "generations": None, "frame_budget": None},
                    "arena": d.get("arena") and {**d["arena"], "rounds": None},
                    "tune": d.get("tune") and {**d["tune"], "steps": None},
                    "pso": d.get("pso") and {**d["pso"], "steps": None}, "arithmetic": None,
                    "tracking": None}  # where a run is tracked does not make it another experiment
        if same(stored_spec(spec.name, stored["spec"])) != same(wanted):
            raise ExperimentMismatch(
                f"experiment {spec.name!r} already exists in the store with a different spec; "
                "give this one another name, or run the original file to continue it"
            )
        steps = complete_generations(store, spec.name)
        if spec.arithmetic == "reproducible" and stored_arithmetic(stored) != "reproducible" and (
                steps or store.find_results(spec.name)):  # a run that computed nothing yet may still choose
            raise ExperimentMismatch(
                f"experiment {spec.name!r} was computed in {stored_arithmetic(stored)} arithmetic ({steps} complete "
                "steps), so it cannot be reproducible: continue it in fast (arithmetic: fast, "
                "EVOARENA_ARITHMETIC=fast), or give this one another name")
        complete, steps = complete_generations(store, spec.name), getattr(algorithm(spec), "steps", None)
        if steps is not None and steps < complete:
            raise ExperimentMismatch(
                f"{spec.length_field} = {spec.steps_wanted} but experiment {spec.name!r} already has "
                f"{complete} complete steps; ask for more"
            )
    return stored


def run(spec: ExperimentSpec, store: ResultStore, executor: Executor,
        on_progress: Callable[[Progress], None] | None = None, heartbeat_s: float = HEARTBEAT_S,
        lease: MasterLease | None = None, on_state: Callable[[int, dict], None] | None = None) -> dict:
    """Run (or continue) experiment `spec` to its last step; return the last step's document.

    A run that fails is recorded as `failed`, with the reason, in the experiment's document
    (running the same command again continues from the last complete step). While it runs, the
    master beats every `heartbeat_s` seconds in that document (heartbeat.py).

    One master at a time: the run holds the experiment's lease (lease.py) from before it writes
    anything until it returns or raises, and raises ExperimentBusy, having written nothing, while
    another master holds it. A caller that holds the lease already (the CLI, around its own checks)
    passes it as `lease`; its interval is then the lease's. `on_state(index, state)` is called with
    each step's (or event's) state once it is stored (api.py's experiment tracking)."""
    with nullcontext(lease) if lease is not None else MasterLease(store, spec.name, heartbeat_s) as held:
        register(spec, store)
        held.beat()  # register replaced the document whole: the heartbeat goes back in at once
        algo = algorithm(spec)

        def progress(p: Progress) -> None:
            held.check()  # a master whose lease was taken over stops after the step it stored
            if on_progress:
                on_progress(p)

        try:
            if hasattr(algo, "react"):
                return run_events(spec, store, executor, algo, progress, on_state)
            return run_steps(spec, store, executor, algo, progress, on_state)
        except ExperimentBusy:
            raise  # the experiment is the other master's now: its document is not ours to mark
        except Exception as exc:
            store.put_experiment(spec.name, {**store.get_experiment(spec.name), "status": "failed",
                                             "reason": f"{type(exc).__name__}: {exc}", "updated": time.time()})
            raise


def run_steps(spec: ExperimentSpec, store: ResultStore, executor: Executor, algo: Algorithm,
              on_progress: Callable[[Progress], None] | None = None,
              on_state: Callable[[int, dict], None] | None = None) -> dict:
    """Run a step-by-step algorithm (the GA, the arena's rounds) to its last step."""
    last = store.last_generation(spec.name)
    index = 0 if last is None else last + 1
    resumed_from = None if last is None else index
    state = None if last is None else store.get_generation(spec.name, last)
    while index < algo.steps and not stopped(algo, state):
        step = algo.plan(index, state)
        results, stats = run_step(spec.name, store, executor, index, step)
        doc = algo.advance(index, state, step, results)
        write_documents(store, doc)
        doc["stats"] = {**doc.get("stats", {}), **stats}
        store.put_generation(spec.name, index, {"complete": True, **doc, "updated": time.time()})
        metrics.STEPS.labels(spec.name).set(index + 1)
        state = store.get_generation(spec.name, index)
        if on_state:
            on_state(index, state)
        if on_progress:
            s = state["stats"]
            on_progress(_progress(index, algo.steps, algo.line(index, state), s, s["evals_per_s"], s["hit_rate"],
                                  resumed_from))
            resumed_from = None
        index += 1
    store.put_experiment(spec.name, {**store.get_experiment(spec.name), "status": "complete", "updated": time.time()})
    return state


def run_events(spec: ExperimentSpec, store: ResultStore, executor: Executor, algo: EventAlgorithm,
               on_progress: Callable[[Progress], None] | None = None,
               on_state: Callable[[int, dict], None] | None = None) -> dict:
    """Run an event-driven algorithm: each result, as it arrives, becomes a new state (stored as
    event `index`) whose new tasks are sent at once. A task whose result is already stored (sent
    before a crash) is consumed without being sent again."""
    last = store.last_generation(spec.name)
    index, resumed_from = (0, None) if last is None else (last, last)
    state = algo.start() if last is None else store.get_generation(spec.name, last)
    if last is None:
        store.put_generation(spec.name, 0, {**state, "updated": time.time()})
    feed, sent, stream, started = Feed(), set(), None, time.perf_counter()
    retries: dict[str, int] = {}  # sends again of each task whose infrastructure failed
    while not algo.finished(state):
        inflight = {task_id(algo.op, t): t for t in state["inflight"]}
        ready = next((i for i in sorted(inflight) if settled(store.get_result(i))), None)
        if ready is not None:
            state = algo.react(state, inflight[ready], store.get_result(ready))
            write_documents(store, state)
            index += 1
            store.put_generation(spec.name, index, {**state, "updated": time.time()})
            if on_state:
                on_state(index, state)
            if on_progress:
                on_progress(_progress(index, index, algo.line(index, state), state["stats"],
                                      index / (time.perf_counter() - started), 0.0, resumed_from))
                resumed_from = None
            continue
        new = [t for i, t in inflight.items() if i not in sent]
        plan(store, algo.op, new)
        feed.extend(new)
        sent.update(inflight)
        stream = stream or executor.map(algo.op, feed)
        summary = next(stream, None)
        if summary is None:  # the executor has nothing left in flight: the next loop sends anew
            stream = None
            if not feed and not any(settled(store.get_result(i)) for i in inflight) and sent >= set(inflight):
                raise RuntimeError(f"event {index}: {len(inflight)} tasks in flight but none running")
            continue
        if summary["_id"] in inflight:
            _record_lost(spec.name, store, inflight[summary["_id"]]["generation"], algo.op, [summary])
            if summary.get("transient"):  # not the genome's result: send it again, a while later
                tries = retries[summary["_id"]] = retries.get(summary["_id"], 0) + 1
                if tries > STEP_RETRIES:
                    raise InfrastructureFailure(
                        f"event {index}: task {summary['_id']} failed {tries} times because of the infrastructure, "
                        f"not its genome ({summary['error']}); nothing is recorded against it: fix the cause, then "
                        "run the same command again to continue")
                log.warning("task %s: %s; sending it again", summary["_id"], summary["error"])
                time.sleep(STEP_RETRY_WAIT_S * 2 ** (tries - 1))
                sent.discard(summary["_id"])
    store.put_experiment(spec.name, {**store.get_experiment(spec.name), "status": "complete", "updated": time.time()})
    return state


def _progress(index: int, total: int, line: str, stats: dict, rate: float, hit_rate: float,
              resumed_from: int | None) -> Progress:
    return Progress(index, total, line, stats.get("best", math.nan), stats.get("mean", math.nan), rate, hit_rate,
                    stats.get("errors", 0), resumed_from)


def plan(store: ResultStore, op: str, tasks: list[dict]) -> None:
    """Store `tasks` in their steps' plans before they are sent: a worker runs only a planned task
    (results.plan_entry)."""
    by_step: dict[tuple[str, int], list[str]] = {}
    for task in tasks:
        by_step.setdefault((task["experiment"], task["generation"]), []).append(plan_entry(op, task))
    for (experiment, generation), entries in by_step.items():
        store.add_plan(experiment, generation, op, entries)


def run_step(experiment: str, store: ResultStore, executor: Executor, index: int, step: Step) -> tuple[list[dict], dict]:
    """Send the step's tasks that have no stored result; return every task's result document (in
    task order) and the step's bookkeeping (seconds, tasks per second, cache hit rate).

    A task whose result records a failure of the infrastructure (`transient`: its worker could
    not reach the store, refused it, or was lost) is sent again, up to STEP_RETRIES times; if
    some still fail, InfrastructureFailure: the step is not complete and its algorithm never sees
    such a result as the genome's."""
    started = time.perf_counter()
    ids = [task_id(step.op, t) for t in step.tasks]
    plan(store, step.op, step.tasks)
    summaries = []
    for attempt in range(STEP_RETRIES + 1):
        # a task whose infrastructure failed (`transient`) is run again, the others are done
        done = {d["_id"] for d in store.find_results(experiment, index, step.op) if settled(d)}
        todo = [t for i, t in zip(ids, step.tasks) if i not in done]
        if not todo:
            break
        if attempt:
            wait = STEP_RETRY_WAIT_S * 2 ** (attempt - 1)
            log.warning("step %d: %d tasks failed because of the infrastructure (first: %s); sending them again "
                        "in %.0f s", index, len(todo), _first_failure(store, experiment, index, step.op, ids), wait)
            time.sleep(wait)
        for summary in executor.map(step.op, todo):
            summaries.append(summary)
            _record_lost(experiment, store, index, step.op, [summary])  # at once: a resume knows it

    stored = {d["_id"]: d for d in store.find_results(experiment, index, step.op)}
    missing = [i for i in ids if i not in stored]
    if missing:
        raise RuntimeError(f"step {index}: {len(missing)} results never reached the store (first: {missing[0]})")
    failed = [i for i in ids if stored[i].get("transient")]
    if failed:
        raise InfrastructureFailure(
            f"step {index}: {len(failed)} tasks failed {STEP_RETRIES + 1} times because of the infrastructure, not "
            f"their genomes (first: {failed[0]}: {stored[failed[0]]['error']}); nothing is recorded against them "
            "and the step is not complete: fix the cause, then run the same command again to continue")
    seconds = time.perf_counter() - started
    builds = [s["build"] for s in summaries if s.get("build")]
    hits = sum(b in CACHE_HITS for b in builds)
    stats = {"evals_per_s": len(summaries) / seconds if seconds > 0 else 0.0,
             "hit_rate": hits / len(builds) if builds else 0.0, "seconds": seconds}
    return [stored[i] for i in ids], stats


def _first_failure(store: ResultStore, experiment: str, index: int, op: str, ids: list[str]) -> str:
    wanted = set(ids)
    doc = next((d for d in store.find_results(experiment, index, op) if d["_id"] in wanted and d.get("transient")), None)
    return "none stored" if doc is None else f"{doc['_id']}: {doc['error']}"


def _record_lost(experiment: str, store: ResultStore, index: int, op: str, summaries: list[dict]) -> None:
    """Record the error of a task that failed before its worker could store a result (it crashed
    its worker, was dead-lettered, timed out, was refused, or its infrastructure kept failing), so
    that a resume knows it. A failure that is not the genome's is recorded `transient` and sent
    again (run_step); one that is (its process died on it up to the delivery limit) is the
    genome's result. Only where no result is stored, or only a record of an earlier such failure:
    a real result a late worker stored meanwhile is never overwritten (store.record_result is one
    atomic write)."""
    for summary in summaries:
        if summary.get("error"):
            store.record_result(lost_result(experiment, index, op, summary))
