"""What a worker does with a task. The local process pool and the Celery fleet call these same functions.

A task is JSON: the genome to build (never weights), the problem, the noise table, and where the
result belongs (experiment, generation). The worker builds the genome through its parent cache,
scores it, writes the result document to the store itself, and returns a short summary.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sqlite3
import time
import traceback
from dataclasses import dataclass
from functools import cached_property

import torch

from evoarena.encoding import arithmetic, batched
from evoarena.encoding.arithmetic import pin_gpu
from evoarena.encoding.batched import retain_freed_memory
from evoarena.encoding.genome import Genome, ancestor, canonical
from evoarena.encoding.materialize import Materializer, ParentCache
from evoarena.encoding.noise import open_noise
from evoarena.metrics import MATERIALIZE_SECONDS
from evoarena.problems import ProblemRefused, gan_data, problem_of
from evoarena.settings import Settings, WorkerSettings, device_for
from evoarena.store import StoreUnavailable, artifact_key, open_artifacts, open_store
from evoarena.tasks import (
    KEY_VARIABLE,
    WORKER_OPS,
    children_tasks,
    error_summary,
    group_summary,
    is_group,
    plan_entry,
    signed_by,
    summary_of,
    task_genomes,
    task_id,
)
from evoarena.worker import arena_ops, trial
from evoarena.worker.arena_ops import models_dir

log = logging.getLogger(__name__)

# A task whose infrastructure fails is run again this many times, after waits of
# BACKOFF_S, 2 * BACKOFF_S, 4 * BACKOFF_S..., before it is given up as an infrastructure error.
TRANSIENT_RETRIES = 3
BACKOFF_S = 1.0


class Transient(Exception):
    """The infrastructure failed, not the genome: the store or the artifact store did not answer,
    a disk filled up, the GPU ran out of memory. The task is run again (run_on) and nothing is
    recorded against the genome."""


def transient(exc: BaseException) -> bool:
    """Whether `exc` is a failure of the infrastructure rather than of the task's genome."""
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as S3ConnectionError

    if isinstance(exc, (Transient, StoreUnavailable, ConnectionError, TimeoutError, HTTPClientError, S3ConnectionError,
                        sqlite3.OperationalError, torch.cuda.OutOfMemoryError)):
        return True
    if isinstance(exc, ClientError):  # S3 answered: a server error or throttling is worth another try
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or exc.response.get("Error", {}).get("Code") in ("SlowDown", "Throttling", "RequestTimeout")
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EIO, errno.EAGAIN, errno.EBUSY)


class TaskRefused(ValueError):
    """A task this worker will not run, and for which it writes nothing: it names an unknown
    experiment, its problem or noise table is not the experiment's, the master did not plan it
    (no such step, or any of its content differs from the planned task's), a genome's id does not
    match its content, or (on the fleet) it is not signed by the master. A stored result is never overwritten by such a task, and a refusal
    is never the genome's result: the master records it as a failure of the infrastructure."""


@dataclass(frozen=True)
class WorkerConfig:
    """Where a worker process finds its stores and how much it may cache."""

    store_url: str
    artifacts_url: str
    noise_dir: str
    cache_bytes: int = 512 << 20
    device: str = "cpu"
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    task_key: bytes | None = None  # a fleet's EVOARENA_TASK_KEY: only tasks signed with it are run
    problem_modules: tuple[str, ...] = ()  # EVOARENA_PROBLEM_MODULES: user problems it may import


class Worker:
    """The per-process state a worker keeps between tasks: stores, noise tables, caches, datasets."""

    def __init__(self, config: WorkerConfig):
        self.config = config
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self.node: str | None = None  # the Celery node name, when this worker serves a fleet
        self._materializers: dict[tuple[int, int], Materializer] = {}
        self._data: dict[str, object] = {}
        self._specs: dict[str, dict] = {}  # experiment name -> its stored spec
        if config.threads:
            torch.set_num_threads(config.threads)
        retain_freed_memory()  # a batched pass's activations are reused, not page-faulted in again (batched.py)
        pin_gpu(WorkerSettings.from_env().tf32)  # a GPU computes float32 as IEEE float32, not TF32 (arithmetic.py)

    @cached_property
    def store(self):
        # create=False: a missing SQLite file is the infrastructure's failure, never a fresh store
        return open_store(self.config.store_url, create=False)

    @cached_property
    def device_kind(self) -> str:
        """What this worker computes on, for the provenance of its results: the GPU's name, or "cpu"."""
        return torch.cuda.get_device_name(self.config.device) if self.config.device.startswith("cuda") else "cpu"

    @cached_property
    def artifacts(self):
        return open_artifacts(self.config.artifacts_url)

    def materializer(self, noise: dict) -> Materializer:
        key = (int(noise["seed"]), int(noise["size"]))
        if key not in self._materializers:
            self._materializers[key] = Materializer(
                noise=open_noise(*key, self.config.noise_dir),
                cache=ParentCache(self.config.cache_bytes),
                load_checkpoint=self.artifacts.get,
                device=self.config.device,
            )
        return self._materializers[key]

    def cache_bytes(self) -> int:
        """Bytes of weights in this worker's parent caches (all noise tables together)."""
        return sum(m.cache.used for m in self._materializers.values())

    def hit_rate(self) -> float:
        """Share of this worker's builds that came from its cache (all noise tables together)."""
        stats = [m.stats for m in self._materializers.values()]
        builds = sum(s.builds for s in stats)
        return sum(s.hit_rate * s.builds for s in stats) / builds if builds else 0.0

    def data(self, problem: dict):
        key = repr(sorted(problem.items()))
        if key not in self._data:
            self._data[key] = self.problem(problem).make_data(problem, self.config.device)
        return self._data[key]

    def gan_data(self, problem: dict):
        """The real data of a gan problem, made (or downloaded and checked) once per process."""
        key = repr(problem["data"])
        if key not in self._data:
            self._data[key] = gan_data.make_data(problem["data"], self.models_dir)
        return self._data[key]

    @property
    def models_dir(self):
        return models_dir(self.config.noise_dir)

    def problem(self, problem: dict):
        """The Problem (problems/__init__.py) of a task's problem section; one of the user's only
        from the modules this worker trusts (ProblemRefused otherwise)."""
        return problem_of(problem, self.config.problem_modules)

    def admit(self, op: str, task: dict) -> str:
        """The task's result id, once the task is known to belong to its experiment (TaskRefused if
        not, before anything is written): the experiment is in the store, this process computes in
        its CPU arithmetic, the task's problem and noise table are the experiment's, and every
        genome it names is what its id says."""
        _id = task_id(op, task)
        if self.config.task_key and not signed_by(task, self.config.task_key):
            raise TaskRefused(f"task {_id} is not signed with this fleet's {KEY_VARIABLE}")
        spec = self._spec(task["experiment"])
        self._check_arithmetic(task["experiment"], _id)
        self._check_planned(op, task, _id)
        for field in ("problem", "noise"):
            if task.get(field) != spec[field]:
                raise TaskRefused(f"task {_id}: its {field} {task.get(field)!r} is not experiment "
                                  f"{task['experiment']!r}'s {spec[field]!r}")
        if task["problem"].get("kind") == "user":  # a problem of the user's: only from trusted modules
            try:
                self.problem(task["problem"])
            except ProblemRefused as exc:
                log.warning("task %s refused: %s", _id, exc)
                raise TaskRefused(f"task {_id}: {exc}") from None
        for genome_json in task_genomes(task):
            claimed = genome_json.get("id") if isinstance(genome_json, dict) else None
            try:
                actual = Genome.from_json({k: v for k, v in genome_json.items() if k != "id"}).id
            except Exception:  # noqa: BLE001 - a genome that cannot be read is its own error: recorded
                continue
            if claimed != actual:
                raise TaskRefused(f"task {_id}: genome {claimed!r} does not match its content (computed {actual!r})")
        return _id

    def _check_planned(self, op: str, task: dict, _id: str) -> None:
        """TaskRefused unless the master planned this very task (results.plan_entry): a sibling
        group, each of its children."""
        try:
            entries = [plan_entry(op, t) for t in children_tasks(task)] if is_group(task) else [plan_entry(op, task)]
        except (ValueError, KeyError, TypeError) as exc:
            raise TaskRefused(f"task {_id}: {exc}") from exc
        for entry in entries:
            try:
                planned = self.store.planned(task["experiment"], task["generation"], op, entry)
            except Exception as exc:
                _unless_transient(exc)
                raise
            if not planned:
                raise TaskRefused(f"task {entry.partition('@')[0]} is not one the master planned: experiment "
                                  f"{task['experiment']!r} has no such step or genome, or this task's content "
                                  "differs from the planned task's")

    def _check_arithmetic(self, experiment: str, _id: str) -> None:
        """TaskRefused unless this process computes in the CPU arithmetic the experiment is recorded
        with (arithmetic.require; a process that chose none yet takes it now), on a CPU where that is
        `reproducible`. The spec is read again before a refusal: a run continued in another arithmetic."""
        wanted = self._spec(experiment).get("arithmetic")
        if wanted is None:  # recorded by a master older than the field
            return
        try:
            arithmetic.require(wanted)
        except arithmetic.ArithmeticMismatch:
            self._specs.pop(experiment, None)
            wanted = self._spec(experiment).get("arithmetic")
            try:
                arithmetic.require(wanted)
            except arithmetic.ArithmeticMismatch as exc:
                raise TaskRefused(f"task {_id}: {exc}") from None
        if wanted == "reproducible" and torch.device(self.config.device).type != "cpu":
            raise TaskRefused(f"task {_id}: experiment {experiment!r} computes in reproducible arithmetic, which is "
                              f"defined on CPUs only, and this worker computes on {self.config.device}")

    def _spec(self, experiment: str) -> dict:
        """The stored spec of `experiment` (read once: a stored spec changes only in its length and,
        from reproducible to fast, its arithmetic: `_check_arithmetic` reads it again then)."""
        if experiment not in self._specs:
            try:
                doc = self.store.get_experiment(experiment)
            except Exception as exc:
                _unless_transient(exc)
                raise
            if doc is None:
                raise TaskRefused(f"experiment {experiment!r} is not in the store")
            self._specs[experiment] = doc["spec"]
        return self._specs[experiment]

    def arena(self, op: str, task: dict) -> dict:
        """Run an arena op (worker/arena_ops.py), or a meta-parameter search's trial (trial.py: a whole
        arena run), and store its result document, or its error."""
        _id = self.admit(op, task)
        doc = {"_id": _id, "experiment": task["experiment"], "generation": task["generation"], "op": op,
               "round": task.get("round"), "key": task["key"], "worker": self.name, "node": self.node,
               "device": self.config.device, "device_kind": self.device_kind}
        started = time.perf_counter()
        try:
            doc.update(trial.trial(self, task, _id) if op == "trial" else getattr(arena_ops, op)(self, task, _id))
            doc["error"] = None
        except Exception as exc:  # a poison task: record why, do not retry
            _unless_transient(exc)
            doc.update(build=None, holds=[], error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=5))
        doc["seconds"] = time.perf_counter() - started
        return summary_of(self._store(doc))

    def evaluate(self, task: dict) -> dict:
        """Build the task's genome, score it on its problem, store the result document."""
        doc = self._evaluation_doc(task)
        doc = {"_id": self.admit("evaluate", task), **doc}
        started = time.perf_counter()
        try:
            doc.update(self._evaluate(task, Genome.from_json(task["genome"])))
            doc["error"] = None
        except Exception as exc:  # a poison task: record why against the individual, do not retry
            _unless_transient(exc)
            doc.update(_failed(exc))
        doc["seconds"] = time.perf_counter() - started
        return summary_of(self._store(doc))

    def evaluate_group(self, group: dict) -> dict:
        """A group of siblings (tasks.py): build each child from the cached parent, score
        them together in batched passes (batched.py), store each child's document as `evaluate`
        would, under its own id. A child that fails to build or score fails alone."""
        group_id = self.admit("evaluate", group)
        try:
            tasks = children_tasks(group)
        except ValueError as exc:
            raise TaskRefused(f"task {group_id}: {exc}") from exc
        docs = [{"_id": task_id("evaluate", t), **self._evaluation_doc(t)} for t in tasks]
        started = time.perf_counter()
        materializer, problem = self.materializer(group["noise"]), self.problem(group["problem"])
        genomes = [Genome.from_json(t["genome"]) for t in tasks]
        flats = {}
        for i, (genome, doc) in enumerate(zip(genomes, docs)):
            try:
                with MATERIALIZE_SECONDS.time():
                    weights, doc["build"] = materializer.build_how(genome)
                flats[i] = weights.flat
            except Exception as exc:
                _unless_transient(exc)
                doc.update(_failed(exc))
        arch = genomes[0].arch
        built = list(flats)
        cap = batched.group_cap(arch, self.config.cache_bytes)
        for chunk in (built[j : j + cap] for j in range(0, len(built), cap)):
            try:
                scored = _score_many(problem, arch, [flats[i] for i in chunk], self.data(group["problem"]),
                                     [tasks[i] for i in chunk])
            except Exception as exc:  # score one by one: each error then lands on its own child
                _unless_transient(exc)
                scored = None
            for i, metrics in zip(chunk, scored or [None] * len(chunk)):
                try:
                    metrics = metrics or _score(problem, arch, flats[i], self.data(group["problem"]), tasks[i])
                    checkpoints = [self._save(ancestor(genomes[i], a), materializer, group["experiment"])
                                   for a in tasks[i].get("checkpoint", [])]
                    docs[i].update(fitness=metrics.pop("fitness"), metrics=metrics, checkpoints=checkpoints, error=None)
                except Exception as exc:
                    _unless_transient(exc)
                    docs[i].update(_failed(exc))
        share = (time.perf_counter() - started) / len(docs)  # the group's time, shared evenly
        for doc in docs:
            doc["seconds"] = share
        return group_summary(group_id, [summary_of(self._store(doc)) for doc in docs])

    def _evaluation_doc(self, task: dict) -> dict:
        """The fields of an evaluate result document that depend neither on its id nor on its outcome."""
        experiment, generation, genome_json = _required(task, "experiment", "generation", "genome")
        if not isinstance(genome_json, dict) or "id" not in genome_json:
            raise ValueError("task 'genome' must be a genome JSON object with an 'id'")
        return {
            "experiment": experiment,
            "generation": generation,
            "op": "evaluate",
            "genome_id": genome_json["id"],
            "genome": genome_json,
            "parents": genome_json.get("parents", []),
            "role": task.get("role", "child"),
            "worker": self.name,
            "node": self.node,
            "device": self.config.device,
            "device_kind": self.device_kind,
        }

    def _store(self, doc: dict) -> dict:
        """Write `doc` unless a result with its id is already stored (a record of the
        infrastructure's failure is replaced); return the stored document. A stored result is
        never overwritten: one with another outcome (a redelivered task that computed otherwise,
        or a replay) is kept, and the write refused with a log line."""
        try:
            stored = self.store.record_result(doc)
        except Exception as exc:
            _unless_transient(exc)
            raise
        if stored is None:
            return doc
        if canonical(outcome(stored)) != canonical(outcome(doc)):
            log.warning("refused to overwrite result %s: it is already stored with another outcome (stored error %r, "
                        "fitness %r; this task's error %r, fitness %r)", doc["_id"], stored.get("error"),
                        stored.get("fitness"), doc.get("error"), doc.get("fitness"))
        return stored

    def _evaluate(self, task: dict, genome: Genome) -> dict:
        materializer = self.materializer(task["noise"])
        with MATERIALIZE_SECONDS.time():
            weights, build = materializer.build_how(genome)
        metrics = _score(self.problem(task["problem"]), genome.arch, weights.flat, self.data(task["problem"]), task)
        checkpoints = [self._save(ancestor(genome, i), materializer, task["experiment"]) for i in task.get("checkpoint", [])]
        return {"fitness": metrics.pop("fitness"), "metrics": metrics, "build": build, "checkpoints": checkpoints}

    def _save(self, genome: Genome, materializer: Materializer, experiment: str) -> dict:
        """Save `genome`'s weights (usually a parent still in the cache) so descendants can be rebased on them."""
        weights = materializer.build(genome)
        key = artifact_key(experiment, genome.id)
        return {"id": genome.id, "uri": self.artifacts.put(key, weights.tensors(genome.arch), {"experiment": experiment})}


# What a result document says of where and how fast it was computed, not of its outcome.
PROVENANCE_FIELDS = ("worker", "node", "device", "device_kind", "seconds", "compute_seconds", "build", "traceback")


def outcome(doc: dict) -> dict:
    """A result document without its provenance: two runs of one task agree on this."""
    return {k: v for k, v in doc.items() if k not in PROVENANCE_FIELDS}


def _score(problem, arch: dict, flat: torch.Tensor, data, task: dict) -> dict:
    """One network's metrics: from its task where the fitness depends on it (atari: its episode
    seeds), else from its weights alone."""
    if hasattr(problem, "evaluate_task"):
        return problem.evaluate_task(arch, flat, data, task)
    return problem.evaluate(arch, flat, data)


def _score_many(problem, arch: dict, flats: list[torch.Tensor], data, tasks: list[dict]) -> list[dict] | None:
    """Several networks' metrics in batched passes (batched.py), or None for a problem that
    scores one network at a time."""
    if hasattr(problem, "evaluate_tasks"):
        return problem.evaluate_tasks(arch, flats, data, tasks)
    if hasattr(problem, "evaluate_many"):
        return problem.evaluate_many(arch, torch.stack(flats), data)
    return None


def _failed(exc: Exception) -> dict:
    """The fields of an evaluate result document whose individual failed with `exc`."""
    return {"fitness": None, "metrics": {}, "build": None, "checkpoints": [],
            "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=5)}


def _unless_transient(exc: Exception) -> None:
    """Raise Transient from `exc` when the infrastructure failed (nothing is recorded then)."""
    if transient(exc):
        raise Transient(f"{type(exc).__name__}: {exc}") from exc


def _required(task: dict, *keys: str) -> list:
    missing = [k for k in keys if k not in task]
    if missing:
        raise ValueError(f"task lacks {missing}; a task needs {list(keys)}")
    return [task[k] for k in keys]


def run_on(worker: Worker, op: str, task: dict) -> dict:
    """Run `op` on `task` in `worker`, on every executor alike. A task that fails because of its
    infrastructure (Transient) is run again after a growing wait, up to TRANSIENT_RETRIES times; a
    refused task, or one whose infrastructure kept failing, comes back as an error summary with
    nothing written (the master records it once, where no result is stored yet)."""
    if op not in WORKER_OPS:
        raise ValueError(f"unknown op {op!r}; accepted: {', '.join(WORKER_OPS)}")
    retries = 0
    while True:
        try:
            if op == "evaluate":
                return worker.evaluate_group(task) if "children" in task else worker.evaluate(task)
            return worker.arena(op, task)
        except TaskRefused as exc:  # not the genome's doing: transient, so the master never records it as its result
            log.warning("refused task %s: %s", task_id(op, task), exc)
            return {**error_summary(task_id(op, task), task, f"TaskRefused: {exc}", transient=True),
                    "seconds": 0.0, "worker": worker.name}
        except Transient as exc:
            if retries == TRANSIENT_RETRIES:
                return {**error_summary(task_id(op, task), task, f"Transient: {exc} (tried {retries + 1} times)",
                                        transient=True), "seconds": 0.0, "worker": worker.name}
            wait = BACKOFF_S * 2 ** retries
            log.warning("task %s: %s; trying again in %.1f s", task_id(op, task), exc, wait)
            time.sleep(wait)
            retries += 1


def worker_config(slot: int = 0) -> WorkerConfig:
    """A fleet worker process's configuration, from the environment: pool process `slot` gets its
    own GPU where there are GPUs."""
    settings, worker = Settings.from_env(), WorkerSettings.from_env()
    return WorkerConfig(
        store_url=settings.store,
        artifacts_url=settings.artifacts,
        noise_dir=str(settings.noise_dir),
        cache_bytes=worker.cache_mb << 20,
        device=device_for(slot, torch.cuda.device_count(), worker.device),
        threads=worker.threads,
        task_key=settings.task_key.encode() or None,
        problem_modules=worker.trusted_problems,
    )
