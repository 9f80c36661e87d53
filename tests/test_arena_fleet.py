"""The GAN arena on real worker processes: two Celery workers on the real RabbitMQ on
127.0.0.1:5672, and the `evoarena run` command killed with SIGKILL in the middle of a round.

Both tests run one tiny arena (2 rounds of 2 train chunks, a match and a cross-train: 8 steps of
the master) against SQLite files in tmp_path, and compare it with the same spec run without
workers or without interruption: what each step recorded, floats bit for bit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from evoarena import scheduler
from evoarena.fleet.executor import InlineExecutor
from evoarena.spec import ExperimentSpec, parse_spec
from evoarena.store import ResultStore, open_store
from evoarena.store.results import task_id
from evoarena.worker import WorkerConfig

pytestmark = pytest.mark.slow
MATCH_STEP = 2  # round 0 is steps 0 and 1 (train chunks), 2 (match) and 3 (cross-train)


def arena_dict(name: str, workers: int = 1) -> dict:
    """A tiny arena on the ring: 2 players x (2 generators + 2 discriminators), 2 rounds, 7 steps
    (round 1 ends at its match)."""
    return {
        "name": name,
        "problem": {"kind": "gan", "latent": 4, "metric_samples": 200,
                    "data": {"kind": "ring", "train": 2000, "heldout": 500}},
        "arena": {"rounds": 2, "players": 2, "generators": 2, "discriminators": 2,
                  "generator": {"hidden": [16]}, "discriminator": {"hidden": [16]},
                  "train_steps": 40, "chunk_steps": 20, "cross_train_steps": 10, "batch_size": 32,
                  "match_samples": 128, "match_block": 2,
                  "variation": {"arch_rate": 0.5, "crossover_rate": 0.3, "meta_rate": 0.5}},
        "noise": {"size": 65536},
        "executor": {"kind": "local", "workers": workers},
    }


def outcome(store: ResultStore, name: str) -> list[dict]:
    """Each step's population (who, which genome, what fitness) and its training figures: what a
    run decided, without what depends on the clock or on which worker ran what."""
    return [
        {"generation": d["generation"], "phase": d["phase"],
         "members": [(m["id"], m["genome"]["id"], m.get("fitness")) for m in d["members"]],
         "train": d.get("train"), "cross": d.get("cross"), "matrix": (d.get("matrix") or {}).get("values")}
        for d in store.list_generations(name)
    ]


def inline_reference(root: Path, spec: ExperimentSpec) -> ResultStore:
    """`spec` run to the end by one worker in this process, into a store and artifacts of its own
    (where checkpoints are stored must not change any id)."""
    url = f"sqlite:///{root}/reference.db"
    store = open_store(url)
    config = WorkerConfig(url, str(root / "ref-artifacts"), str(root / "ref-noise"), threads=1)
    scheduler.run(spec, store, InlineExecutor(config))
    return store


# --- two Celery workers -------------------------------------------------------------------------


def test_arena_on_two_real_celery_workers_writes_exactly_one_document_per_task(fleet, tmp_path):
    spec = parse_spec(arena_dict("arena-fleet"))
    reference = inline_reference(tmp_path, spec)
    nodes = {fleet.start("alpha"), fleet.start("beta")}
    fleet.wait_ready()

    scheduler.run(spec, fleet.store, fleet.executor())

    store, algo = fleet.store, scheduler.algorithm(spec)
    assert store.last_generation(spec.name) == algo.steps - 1  # every step's state doc is there
    for index in range(algo.steps):
        previous = None if index == 0 else store.get_generation(spec.name, index - 1)
        step = algo.plan(index, previous)  # planning is deterministic: the step as the master sent it
        stored = store.find_results(spec.name, index)
        assert {d["_id"] for d in stored} == {task_id(step.op, t) for t in step.tasks}, f"step {index}"
        assert [d["error"] for d in stored] == [None] * len(step.tasks), f"step {index}"
    assert {d["node"] for d in store.find_results(spec.name)} == nodes  # both workers took part

    for round in range(spec.arena.rounds):
        gens = store.find_docs("pure_gen", spec.name, round=round)
        assert len(gens) == spec.arena.players * spec.arena.generators
        for doc in gens:
            trace = store.get_doc("pure_match_trace", doc["encounter_trace"])
            assert trace is not None and trace["member"] == doc["member"], doc["_id"]

    assert outcome(store, spec.name) == outcome(reference, spec.name)  # the same run, bit for bit
    reference.close()


# --- `evoarena run`, killed and run again ---------------------------------------------------------


class Place:
    """A directory `evoarena run` runs in, with its own store, artifacts and noise table."""

    def __init__(self, root: Path, name: str, artifacts: Path):
        root.mkdir(parents=True)
        self.root, self.name, self.artifacts = root, name, artifacts
        self.db = root / "evoarena.db"
        self.spec = root / f"{name}.yaml"
        self.spec.write_text(yaml.safe_dump(arena_dict(name, workers=1), sort_keys=False))
        self.env = {**os.environ, "EVOARENA_STORE": f"sqlite:///{self.db}", "EVOARENA_ARTIFACTS": str(artifacts),
                    "EVOARENA_NOISE_DIR": str(root / "noise"), "PYTHONUNBUFFERED": "1"}
        self.command = [sys.executable, "-m", "evoarena.cli", "run", str(self.spec)]

    def run(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.command, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=180)

    def start(self) -> subprocess.Popen:
        """In a session of its own, so that a signal reaches its worker process too."""
        return subprocess.Popen(self.command, cwd=self.root, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def store(self) -> ResultStore:
        return open_store(f"sqlite:///{self.db}")


def kill_mid_first_round(place: Place) -> int:
    """Start the run and SIGKILL its process group once round 0's first train chunk is recorded and
    the second has a result, but the round's match has not been recorded; return how many steps
    were complete."""
    proc, store = place.start(), None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.communicate()}"
            if store is None and place.db.exists():
                store = place.store()
            if store is not None and store.count_results(place.name, 1, "train_pair") and \
                    store.get_generation(place.name, MATCH_STEP) is None:
                break
            time.sleep(0.005)
        else:
            pytest.fail("no result of round 0's second train chunk within 120 s")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        if store is not None:
            store.close()
    assert proc.returncode == -signal.SIGKILL
    with place.store() as store:
        return store.last_generation(place.name) + 1


def test_arena_resumes_after_kill_9_mid_round_and_trains_nothing_twice(tmp_path):
    uninterrupted = Place(tmp_path / "uninterrupted", "arena-kill", tmp_path / "uninterrupted-artifacts")
    done = uninterrupted.run()
    assert done.returncode == 0, done.stderr
    place = Place(tmp_path / "killed", "arena-kill", tmp_path / "killed-artifacts")
    complete = kill_mid_first_round(place)
    assert complete in (1, 2), f"the kill came after the round's match ({complete} steps complete)"
    with place.store() as store:
        before = {d["_id"]: (d["worker"], d["seconds"]) for d in store.find_results(place.name)}

    again = place.run()

    assert again.returncode == 0, again.stderr
    assert f"resumed at generation {complete + 1}" in again.stdout.splitlines()
    with place.store() as store, uninterrupted.store() as reference:
        after = {d["_id"]: (d["worker"], d["seconds"]) for d in store.find_results(place.name)}
        assert {i: after[i] for i in before} == before  # a task run again would have rewritten its doc
        killed_run = {worker for worker, _ in before.values()}
        assert {i for i, (worker, _) in after.items() if worker in killed_run} == set(before)
        assert outcome(store, place.name) == outcome(reference, place.name)
