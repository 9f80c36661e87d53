"""No result can be overwritten by a forged or replayed task (issue 20, part 2).

A real `evoarena worker` on the real RabbitMQ, without a task key (the default outside the Helm
chart), after a finished run: tasks sent to it as anyone who can publish to the broker could send
them. Each is refused before anything is computed or written, and the store is the same after.
"""

from __future__ import annotations

import copy
import logging

import pytest

from evoarena import scheduler
from evoarena.spec.experiment import parse_spec
from evoarena.store import open_store
from evoarena.tasks import task_id
from evoarena.worker.worker import Worker, WorkerConfig
from helpers import tiny_ga

GENERATIONS = 5


def planned_tasks(store, spec, generation: int) -> list[dict]:
    """The tasks the master planned for `generation` (planning is deterministic)."""
    state = None if generation == 0 else store.get_generation(spec.name, generation - 1)
    return scheduler.algorithm(spec).plan(generation, state).tasks


@pytest.fixture
def finished(fleet):
    spec = parse_spec(tiny_ga("forged", generations=GENERATIONS))
    fleet.start("alpha")
    fleet.wait_ready()
    scheduler.run(spec, fleet.store, fleet.executor())
    return fleet, spec


def send(fleet, task: dict) -> dict:
    return fleet.app.send_task("evoarena.evaluate", args=(task,)).get(timeout=60)


def everything(store, name: str) -> list[dict]:
    return store.find_results(name)


@pytest.mark.slow
def test_a_forged_task_naming_the_best_result_cannot_replace_it_with_a_founder(finished):
    fleet, spec = finished
    last = GENERATIONS - 1
    best = fleet.store.get_generation(spec.name, last)["best"]
    before = everything(fleet.store, spec.name)
    founder = planned_tasks(fleet.store, spec, 0)[0]
    forged = {**founder, "generation": last, "key": [best["genome_id"]]}  # "store me under the best's id"

    summary = send(fleet, forged)

    assert summary["error"].startswith("TaskRefused: ") and "not one the master planned" in summary["error"]
    assert summary["_id"] != task_id("evaluate", {"experiment": spec.name, "generation": last,
                                                  "genome": {"id": best["genome_id"]}})  # the id is the genome's
    assert everything(fleet.store, spec.name) == before
    assert fleet.store.get_result(task_id("evaluate", planned_tasks(fleet.store, spec, last)[0]))["fitness"] is not None


@pytest.mark.slow
def test_a_replayed_task_with_its_role_changed_is_refused_and_the_stored_row_stays(finished):
    fleet, spec = finished
    task = planned_tasks(fleet.store, spec, 2)[-1]
    before = everything(fleet.store, spec.name)

    summary = send(fleet, {**task, "role": "elite" if task.get("role") != "elite" else "child"})

    assert summary["error"].startswith("TaskRefused: ")
    assert everything(fleet.store, spec.name) == before


@pytest.mark.slow
def test_a_task_for_a_generation_the_run_does_not_have_adds_no_row(finished):
    fleet, spec = finished
    before = everything(fleet.store, spec.name)

    for task in planned_tasks(fleet.store, spec, 1)[:3]:
        summary = send(fleet, {**task, "generation": 7})  # of a 5-generation run
        assert summary["error"].startswith("TaskRefused: ")

    assert fleet.store.find_results(spec.name, 7) == []
    assert everything(fleet.store, spec.name) == before


@pytest.mark.slow
def test_a_real_task_delivered_again_finds_its_result_and_changes_nothing(finished):
    fleet, spec = finished
    task = planned_tasks(fleet.store, spec, 3)[1]
    before = everything(fleet.store, spec.name)

    summary = send(fleet, copy.deepcopy(task))

    assert summary["error"] is None
    assert summary["fitness"] == fleet.store.get_result(task_id("evaluate", task))["fitness"]
    assert everything(fleet.store, spec.name) == before


# --- the worker's write, without a broker ----------------------------------------------------------


def result(fitness, **extra) -> dict:
    return {"_id": "tiny:000001:evaluate:g1", "experiment": "tiny", "generation": 1, "op": "evaluate",
            "genome_id": "g1", "fitness": fitness, "error": None, "worker": "w1", "seconds": 0.5, **extra}


@pytest.fixture
def worker(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = open_store(url)  # the master makes the store
    yield store, Worker(WorkerConfig(url, str(tmp_path / "art"), str(tmp_path / "noise")))
    store.close()


def test_a_result_stored_with_another_outcome_is_kept_and_the_write_refused_in_the_log(worker, caplog):
    store, w = worker
    store.put_result(result(0.5))

    with caplog.at_level(logging.WARNING, logger="evoarena.worker.worker"):
        kept = w._store(result(0.9, worker="w2"))

    assert kept["fitness"] == 0.5 and store.get_result("tiny:000001:evaluate:g1")["fitness"] == 0.5
    assert "refused to overwrite result tiny:000001:evaluate:g1" in caplog.text


def test_the_same_outcome_from_another_worker_is_no_conflict(worker, caplog):
    store, w = worker
    store.put_result(result(0.5))

    with caplog.at_level(logging.WARNING, logger="evoarena.worker.worker"):
        kept = w._store(result(0.5, worker="w2", seconds=0.7))

    assert kept["worker"] == "w1" and "refused" not in caplog.text


def test_a_record_of_an_infrastructure_failure_is_replaced_by_the_real_result(worker):
    store, w = worker
    store.put_result(result(None, error="Transient: OperationalError: disk I/O error", transient=True))

    w._store(result(0.5))

    assert store.get_result("tiny:000001:evaluate:g1")["fitness"] == 0.5
    assert not store.get_result("tiny:000001:evaluate:g1").get("transient")


def test_a_worker_never_creates_the_sqlite_store_it_was_pointed_at(tmp_path):
    from evoarena.store import StoreUnavailable

    missing = tmp_path / "moved" / "r.db"
    w = Worker(WorkerConfig(f"sqlite:///{missing}", str(tmp_path / "art"), str(tmp_path / "noise")))

    with pytest.raises(StoreUnavailable, match="a worker does not create one"):
        w.store.get_experiment("tiny")
    assert not missing.exists() and not missing.parent.exists()
