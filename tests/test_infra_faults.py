"""Failures of the infrastructure are never a genome's result (issue 20, part 1), on real processes.

Each test does to real `evoarena worker` processes on the real RabbitMQ (a private queue per
test) and a real SQLite file what was done when the fault was found, then checks the store: a
store moved away while a worker's pool restarts, a write outage longer than a worker's retries, a
store no worker can write to for a whole run and then fixed, a master without the fleet's task
key and then with it. In each, the run either completes with exactly the results of an
undisturbed run, or stops with InfrastructureFailure and the same command, run again once the
cause is fixed, completes with them; no stored result ever holds the fault as a genome's outcome.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from evoarena import scheduler
from evoarena.scheduler import InfrastructureFailure
from evoarena.spec.experiment import parse_spec
from evoarena.store import open_store
from helpers import arena_dict, arena_outcome, evolution, inline_reference, local_reference, merged, tiny_ga

pytestmark = pytest.mark.slow
FAULTY = Path(__file__).parent / "faulty"  # sitecustomize: result writes fail while a flag file exists


def pool_processes(fleet) -> list[int]:
    """The pids of the pool processes of every worker of `fleet`."""
    pids = []
    for proc in fleet.workers.values():
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    return pids


def with_outage_hook(fleet, flag: Path) -> None:
    """Workers started after this fail every result write while `flag` exists."""
    fleet.env["PYTHONPATH"] = f"{FAULTY}:{fleet.env.get('PYTHONPATH', '')}"
    fleet.env["EVOARENA_TEST_WRITE_OUTAGE"] = str(flag)


def genome_errors(store, name: str) -> list[dict]:
    """Stored results that hold an error, of either kind."""
    return [d for d in store.find_results(name) if d.get("error")]


def test_a_store_moved_away_while_a_workers_pool_restarts_is_waited_for_not_recreated(fleet, tmp_path, monkeypatch):
    monkeypatch.setattr(scheduler, "STEP_RETRY_WAIT_S", 3.0)
    home = tmp_path / "store"
    url = f"sqlite:///{home}/fleet.db"
    fleet.env["EVOARENA_STORE"] = url
    store = open_store(url)
    spec = parse_spec(tiny_ga("fleet-moved", generations=5))
    fleet.start("alpha"), fleet.start("beta")
    fleet.wait_ready()
    moved, seen_while_moved = tmp_path / "elsewhere", []

    def move_back_later():
        time.sleep(12)  # longer than a worker's own retries (1 + 2 + 4 s)
        seen_while_moved.append(home.exists())  # nobody made a fresh store at the old path
        moved.rename(home)

    def after_step(progress):
        if progress.generation == 1:
            pools = pool_processes(fleet)
            home.rename(moved)
            for pid in pools:  # the pools restart: their new processes must open the store again
                subprocess.run(["kill", "-9", str(pid)], check=True)
            threading.Thread(target=move_back_later, daemon=True).start()

    scheduler.run(spec, store, fleet.executor(), on_progress=after_step)

    assert seen_while_moved == [False]
    assert evolution(store, spec.name) == local_reference(tmp_path, spec)
    assert genome_errors(store, spec.name) == []
    assert store.get_experiment(spec.name)["status"] == "complete"
    assert "cannot be opened" in fleet.log("alpha") + fleet.log("beta")  # the workers did meet the fault


def test_a_write_outage_longer_than_a_workers_retries_loses_no_result(fleet, tmp_path):
    flag = tmp_path / "outage"
    with_outage_hook(fleet, flag)
    fleet.start("alpha")
    fleet.wait_ready()
    spec = parse_spec(tiny_ga("fleet-outage", generations=4))

    def after_step(progress):
        if progress.generation == 1:  # 25 s without writes, from the start of step 2
            flag.touch()
            threading.Timer(25, flag.unlink).start()

    scheduler.run(spec, fleet.store, fleet.executor(), on_progress=after_step)

    assert evolution(fleet.store, spec.name) == local_reference(tmp_path, spec)  # the elite included
    assert genome_errors(fleet.store, spec.name) == []
    assert "injected" in fleet.log("alpha")  # the worker did meet the outage


def test_a_store_no_worker_can_write_stops_the_run_unrecorded_and_the_same_command_continues_once_fixed(
        fleet, tmp_path, monkeypatch):
    monkeypatch.setattr(scheduler, "STEP_RETRIES", 1)
    monkeypatch.setattr(scheduler, "STEP_RETRY_WAIT_S", 0.5)
    flag = tmp_path / "read-only"
    flag.touch()
    with_outage_hook(fleet, flag)
    fleet.start("alpha")
    fleet.wait_ready()
    spec = parse_spec(merged(arena_dict("fleet-read-only"), {"arena": {"on_error": "stop"}}))

    with pytest.raises(InfrastructureFailure, match="because of the infrastructure"):
        scheduler.run(spec, fleet.store, fleet.executor())

    assert fleet.store.last_generation(spec.name) is None  # the first step is not complete
    stored = fleet.store.find_results(spec.name)
    assert stored and all(d["transient"] for d in stored)  # recorded as the infrastructure's, not the genomes'
    assert fleet.store.get_experiment(spec.name)["status"] == "failed"

    flag.unlink()  # the permission is fixed: the same command again
    scheduler.run(spec, fleet.store, fleet.executor())

    assert arena_outcome(fleet.store, spec.name) == arena_outcome(inline_reference(tmp_path, spec), spec.name)
    assert genome_errors(fleet.store, spec.name) == []


def test_a_master_without_the_fleets_key_records_no_refusal_and_the_same_command_with_it_completes(
        fleet, tmp_path, monkeypatch):
    monkeypatch.setattr(scheduler, "STEP_RETRIES", 1)
    monkeypatch.setattr(scheduler, "STEP_RETRY_WAIT_S", 0.5)
    fleet.env["EVOARENA_TASK_KEY"] = "the-fleet-key"  # the workers'
    fleet.start("alpha")
    fleet.wait_ready()
    spec = parse_spec(tiny_ga("fleet-unkeyed", generations=3))
    monkeypatch.delenv("EVOARENA_TASK_KEY", raising=False)  # the master's: forgotten

    with pytest.raises(InfrastructureFailure, match="TaskRefused.*not signed"):
        scheduler.run(spec, fleet.store, fleet.executor())
    assert all(d["transient"] for d in fleet.store.find_results(spec.name))

    monkeypatch.setenv("EVOARENA_TASK_KEY", "the-fleet-key")
    scheduler.run(spec, fleet.store, fleet.executor())

    assert evolution(fleet.store, spec.name) == local_reference(tmp_path, spec)
    assert genome_errors(fleet.store, spec.name) == []
