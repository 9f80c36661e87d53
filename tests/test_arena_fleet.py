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
from evoarena.spec.experiment import parse_spec
from evoarena.store import ResultStore, open_store
from evoarena.tasks import task_id
from helpers import arena_dict, arena_outcome, inline_reference

pytestmark = pytest.mark.slow
MATCH_STEP = 2  # round 0 is steps 0 and 1 (train chunks), 2 (match) and 3 (cross-train)


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

    assert arena_outcome(store, spec.name) == arena_outcome(reference, spec.name)  # the same run, bit for bit
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
        self.command = [sys.executable, "-m", "evoarena", "run", str(self.spec)]

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
        assert arena_outcome(store, place.name) == arena_outcome(reference, place.name)
