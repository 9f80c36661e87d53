"""The master loop: turn generations into tasks, hand them to an executor, read results from the store.

The scheduler keeps no state of its own (DESIGN invariant 6). A generation document is written
only once every individual of that generation has a stored result; on start, the scheduler finds
the last such document and continues after it. Children are a deterministic function of
(seed, generation, parents), so an interrupted generation is regenerated identically, and only the
individuals without a stored result are sent again.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from .evolve import ga
from .fleet.executor import Executor
from .genome import Checkpoint, Genome
from .problems import PROBLEMS
from .spec import ExperimentSpec, spec_to_dict
from .store import ResultStore
from .worker import result_id



class ExperimentMismatch(Exception):
    """The store already holds an experiment of this name with a different spec."""


@dataclass(frozen=True)
class Progress:
    """What the progress line shows after each generation."""

    generation: int
    generations: int
    best: float
    mean: float
    evals_per_s: float
    hit_rate: float
    errors: int
    resumed_from: int | None = None


def architecture(spec: ExperimentSpec) -> dict:
    problem = spec.problem.model_dump(mode="json")
    return PROBLEMS[spec.problem.kind].architecture(problem, spec.network.model_dump(mode="json"))


def complete_generations(store: ResultStore, name: str) -> int:
    """How many generations of experiment `name` are complete (they are numbered from 0)."""
    last = store.last_generation(name)
    return 0 if last is None else last + 1


def register(spec: ExperimentSpec, store: ResultStore) -> None:
    """Record the experiment, or check that the stored one is the same experiment.

    Only `ga.generations` may differ (to extend a finished run).
    """
    wanted = spec_to_dict(spec)
    stored = store.get_experiment(spec.name)
    if stored is not None:
        def same(d: dict) -> dict:
            return {**d, "ga": {**d["ga"], "generations": None}}
        if same(stored["spec"]) != same(wanted):
            raise ExperimentMismatch(
                f"experiment {spec.name!r} already exists in the store with a different spec; "
                "give this one another name, or run the original file to continue it"
            )
        complete = complete_generations(store, spec.name)
        if spec.ga.generations < complete:
            raise ExperimentMismatch(
                f"ga.generations = {spec.ga.generations} but experiment {spec.name!r} already has "
                f"{complete} complete generations; ask for at least {complete}"
            )
    created = time.time() if stored is None else stored["created"]
    store.put_experiment(spec.name, {"spec": wanted, "status": "running", "created": created, "updated": time.time()})


def run(spec: ExperimentSpec, store: ResultStore, executor: Executor,
        on_progress: Callable[[Progress], None] | None = None) -> dict:
    """Run (or continue) the GA experiment `spec` to its last generation; return the final generation doc."""
    register(spec, store)
    arch = architecture(spec)
    last = store.last_generation(spec.name)
    resumed_from = None if last is None else last + 1
    generation = 0 if last is None else last + 1
    previous = None if last is None else store.get_generation(spec.name, last)
    while generation < spec.ga.generations:
        population = _population(spec, arch, generation, previous)
        doc = _run_generation(spec, store, executor, generation, population, previous)
        if on_progress:
            s = doc["stats"]
            on_progress(Progress(generation, spec.ga.generations, s["best"], s["mean"], s["evals_per_s"],
                                 s["hit_rate"], s["errors"], resumed_from))
            resumed_from = None
        previous, generation = doc, generation + 1
    store.put_experiment(spec.name, {**store.get_experiment(spec.name), "status": "complete", "updated": time.time()})
    return previous


def _population(spec: ExperimentSpec, arch: dict, generation: int, previous: dict | None) -> list[ga.Individual]:
    rng = ga.generation_rng(spec.seed, generation)
    if previous is None:
        return ga.founders(spec.ga, arch, rng)
    parents = [Genome.from_json(g) for g in previous["parents"]]
    elites = parents[: spec.ga.elites]
    return ga.reproduce(parents, elites, spec.ga, rng, spec.noise.size)


def _run_generation(spec: ExperimentSpec, store: ResultStore, executor: Executor, generation: int,
                    population: list[ga.Individual], previous: dict | None) -> dict:
    started = time.perf_counter()
    save = spec.ga.checkpoint_every > 0 and generation > 0 and generation % spec.ga.checkpoint_every == 0
    to_save = _checkpoint_carriers(population, previous) if save else {}
    done = {d["genome_id"] for d in store.find_results(spec.name, generation, "evaluate")}
    tasks = [_task(spec, generation, ind, to_save.get(ind.genome.id, []))
             for ind in population if ind.genome.id not in done]
    summaries = list(executor.map("evaluate", tasks))
    _record_lost(spec, store, generation, population, summaries)

    results = {d["genome_id"]: d for d in store.find_results(spec.name, generation, "evaluate")}
    missing = [ind.genome.id for ind in population if ind.genome.id not in results]
    if missing:
        raise RuntimeError(f"generation {generation}: {len(missing)} results never reached the store (first: {missing[0]})")
    errors = [results[ind.genome.id] for ind in population if results[ind.genome.id].get("error")]
    if errors and spec.ga.on_error == "stop":
        raise RuntimeError(f"generation {generation}: individual {errors[0]['genome_id']} failed "
                           f"({errors[0]['error']}); stopping because ga.on_error = stop")
    scored = [ga.Scored(ind.genome, results[ind.genome.id]["fitness"]) for ind in population]
    parents, _ = ga.select(scored, spec.ga)  # the elites are parents[:E]; _population takes them from there
    if not parents:
        errors = sorted({d["error"] for d in results.values() if d.get("error")})
        raise RuntimeError(f"generation {generation}: every evaluation failed; first error: {errors[0] if errors else '?'}")

    checkpoints = [Checkpoint(**c) for c in (previous or {}).get("checkpoints", [])]
    checkpoints += [Checkpoint(**c) for ind in population for c in results[ind.genome.id].get("checkpoints", [])]
    checkpoints = checkpoints[-2 * spec.ga.parents :]  # the last two rounds; older lineages have died out
    parents = ga.rebase_all(parents, checkpoints)

    fitnesses = [s.fitness for s in scored if s.fitness is not None and not math.isnan(s.fitness)]
    seconds = time.perf_counter() - started
    builds = [s["build"] for s in summaries if s.get("build")]
    hits = sum(b in ("cached", "from_parent", "from_ancestor") for b in builds)
    best = results[parents[0].id]
    doc = {
        "complete": True,
        "parents": [p.to_json() for p in parents],
        "checkpoints": [{"id": c.id, "uri": c.uri} for c in checkpoints],
        "best": {"genome_id": best["genome_id"], "fitness": best["fitness"], "metrics": best["metrics"]},
        "stats": {
            "best": max(fitnesses),
            "mean": statistics.fmean(fitnesses),
            "median": statistics.median(fitnesses),
            "worst": min(fitnesses),
            "evaluated": len(population),
            "errors": len(population) - len(fitnesses),
            "evals_per_s": len(summaries) / seconds if seconds > 0 else 0.0,
            "hit_rate": hits / len(builds) if builds else 0.0,
            "seconds": seconds,
        },
        "updated": time.time(),
    }
    store.put_generation(spec.name, generation, doc)
    return store.get_generation(spec.name, generation)


def _record_lost(spec: ExperimentSpec, store: ResultStore, generation: int,
                 population: list[ga.Individual], summaries: list[dict]) -> None:
    """Record the error of a task that failed before its worker could store a result (it
    crashed its worker, or timed out), so the individual has a document and is not sent again."""
    failed = {s["genome_id"]: s["error"] for s in summaries if s.get("error")}
    if not failed:
        return
    stored = {d["genome_id"] for d in store.find_results(spec.name, generation, "evaluate")}
    for ind in population:
        if ind.genome.id in failed and ind.genome.id not in stored:
            store.put_result({
                "_id": result_id(spec.name, generation, "evaluate", [ind.genome.id]),
                "experiment": spec.name, "generation": generation, "op": "evaluate",
                "genome_id": ind.genome.id, "genome": ind.genome.to_json(), "parents": list(ind.genome.parents),
                "role": ind.role, "fitness": None, "metrics": {}, "build": None, "checkpoints": [],
                "error": failed[ind.genome.id], "worker": None, "node": None,
            })


def _checkpoint_carriers(population: list[ga.Individual], previous: dict) -> dict[str, list[str]]:
    """Which task saves which parent's weights: each parent rides, by id, on the first task whose
    genome lists it as an ancestor (itself, or a mutation child), whose worker has (or soon has)
    the parent in its cache. A parent whose children are all crossovers waits for the next round."""
    carriers: dict[str, list[str]] = {}
    for parent in previous["parents"]:
        for ind in population:
            if parent["id"] in ind.genome.prefix_ids[-2:]:
                carriers.setdefault(ind.genome.id, []).append(parent["id"])
                break
    return carriers


def _task(spec: ExperimentSpec, generation: int, ind: ga.Individual, checkpoint: list[str]) -> dict:
    return {
        "experiment": spec.name,
        "generation": generation,
        "genome": ind.genome.to_json(),
        "role": ind.role,
        "problem": spec.problem.model_dump(mode="json"),
        "noise": spec.noise.model_dump(mode="json"),
        "checkpoint": checkpoint,  # ids of ancestors in the genome's list whose weights to save too
    }
