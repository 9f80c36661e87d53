"""The fleet against the real RabbitMQ on 127.0.0.1:5672: worker processes, kills, poison, a broker restart.

Each test gets its own shared queue and worker names, so tests never see each other's tasks.
The store is a SQLite file every process opens (the fleet's MongoDB is covered by the store
contract suite); what is checked is what the broker and the workers do.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import evolution
from evoarena import scheduler
from evoarena.fleet.executor import InlineExecutor
from evoarena.spec import parse_spec
from evoarena.store import open_store
from evoarena.worker import WorkerConfig

pytestmark = pytest.mark.slow
def spec_dict(name: str, generations: int = 5, slow: bool = False) -> dict:
    """tiny.yaml, or with `slow` a problem whose evaluations take a few hundred ms."""
    problem = {"kind": "memorize", "image": [3, 16, 16], "classes": 4, "batch_size": 8, "train_batches": 2,
               "val_batches": 1}
    network = {"convs": [{"channels": 4, "kernel": 4, "stride": 2}], "hidden": [16]}
    if slow:
        problem.update(image=[3, 64, 64], batch_size=64, train_batches=8)
        network = {"convs": [{"channels": 32, "kernel": 8, "stride": 4}], "hidden": [64]}
    return {"name": name, "problem": problem, "network": network, "noise": {"size": 1 << 20},
            "ga": {"generations": generations, "parents": 2, "children_per_parent": 3, "elites": 1}}


def local_reference(tmp: Path, spec) -> list[dict]:
    store = open_store(f"sqlite:///{tmp}/reference.db")
    config = WorkerConfig(store_url=f"sqlite:///{tmp}/reference.db", artifacts_url=str(tmp / "ref-artifacts"),
                          noise_dir=str(tmp / "noise"), threads=1)
    scheduler.run(spec, store, InlineExecutor(config))
    return evolution(store, spec.name)


def assert_one_result_per_individual(store, spec) -> None:
    for generation in range(spec.ga.generations):
        docs = store.find_results(spec.name, generation, "evaluate")
        ids = [d["genome_id"] for d in docs]
        assert len(ids) == len(set(ids)) == (spec.ga.initial_population or spec.ga.population)


def test_two_workers_run_the_same_experiment_as_a_local_run(fleet, tmp_path):
    spec = parse_spec(spec_dict("fleet-e2e", generations=6))
    for name in ("alpha", "beta"):
        fleet.start(name)
    fleet.wait_ready()

    scheduler.run(spec, fleet.store, fleet.executor())

    assert evolution(fleet.store, spec.name) == local_reference(tmp_path, spec)
    assert_one_result_per_individual(fleet.store, spec)
    nodes = {d["node"] for d in fleet.store.find_results(spec.name)}
    assert nodes == set(fleet.workers)  # both workers took part
    assert '"op": "evaluate"' in fleet.log("alpha")  # one JSON line per task for kubectl logs


def test_a_worker_killed_mid_task_loses_nothing_and_duplicates_nothing(fleet, tmp_path):
    spec = parse_spec(spec_dict("fleet-kill", generations=5, slow=True))
    victim, survivor = fleet.start("victim"), fleet.start("survivor")
    fleet.wait_ready()

    def kill_when_busy():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # once the victim has finished a few tasks and started another
            log = fleet.log("victim")
            if log.count('{"op"') >= 3 and log.count('{"started"') > log.count('{"op"'):
                fleet.kill(victim)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    scheduler.run(spec, fleet.store, fleet.executor())
    killer.join()

    assert fleet.workers[victim].returncode is not None, "the victim was never killed"
    # the victim died mid-task, and that task's result is the survivor's (redelivered or sent again)
    victim_lines = [json.loads(line) for line in fleet.log("victim").splitlines() if line.startswith("{")]
    started = {line["task"] for line in victim_lines if "started" in line}
    finished = {line["task"] for line in victim_lines if "op" in line}
    interrupted = started - finished
    assert len(interrupted) == 1, f"the victim was not killed mid-task: {sorted(interrupted)}"
    assert fleet.store.get_result(interrupted.pop())["node"] == survivor
    assert evolution(fleet.store, spec.name) == local_reference(tmp_path, spec)
    assert_one_result_per_individual(fleet.store, spec)
    later = [d for d in fleet.store.find_results(spec.name) if d["generation"] >= 3]
    assert {d["node"] for d in later} == {survivor}


def test_a_poison_genome_is_recorded_once_and_the_run_goes_on(fleet):
    spec = parse_spec(spec_dict("fleet-poison", generations=4))
    fleet.start("alpha")
    fleet.wait_ready()
    executor = fleet.executor()
    poisoned = []

    class Poisoning:
        def map(self, op, tasks):
            for task in tasks:
                if task["generation"] == 1 and not poisoned and task["role"] == "child":
                    task["genome"]["deltas"][-1]["k"] = "no-such-kind"  # cannot be built
                    poisoned.append(task["genome"]["id"])
            return executor.map(op, tasks)

        def close(self):
            pass

    scheduler.run(spec, fleet.store, Poisoning())

    doc = fleet.store.get_result(f"fleet-poison:000001:evaluate:{poisoned[0]}")
    assert doc["fitness"] is None and "no-such-kind" in doc["error"]
    starts = [json.loads(line) for line in fleet.log("alpha").splitlines() if line.startswith('{"started"')]
    assert [s["task"] for s in starts].count(f"fleet-poison:000001:evaluate:{poisoned[0]}") == 1  # delivered once
    assert all(poisoned[0] not in [p["id"] for p in g["parents"]] for g in fleet.store.list_generations(spec.name))
    assert fleet.store.last_generation(spec.name) == spec.ga.generations - 1


def test_a_poison_genome_stops_the_run_when_the_spec_says_so(fleet):
    spec = parse_spec({**spec_dict("fleet-poison-stop", generations=4),
                       "ga": {**spec_dict("x")["ga"], "generations": 4, "on_error": "stop"}})
    fleet.start("alpha")
    fleet.wait_ready()
    executor = fleet.executor()

    class Poisoning:
        def map(self, op, tasks):
            tasks[-1]["genome"]["deltas"].append({"k": "no-such-kind"})  # the id check fails too
            return executor.map(op, tasks)

        def close(self):
            pass

    with pytest.raises(RuntimeError, match="failed .*stopping because ga.on_error = stop"):
        scheduler.run(spec, fleet.store, Poisoning())
    assert fleet.store.last_generation(spec.name) is None


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl to restart the broker")
def test_the_run_survives_a_broker_restart(fleet, tmp_path):
    spec = parse_spec(spec_dict("fleet-restart", generations=8, slow=True))
    fleet.start("alpha")
    fleet.start("beta")
    fleet.wait_ready()

    def restart_broker():
        while fleet.store.last_generation(spec.name) is None:
            time.sleep(0.1)
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True)
        time.sleep(3)
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True)

    restarter = threading.Thread(target=restart_broker)
    restarter.start()
    try:
        scheduler.run(spec, fleet.store, fleet.executor())
    finally:
        restarter.join()
        subprocess.run(["rabbitmqctl", "start_app"], capture_output=True)  # never leave the broker stopped

    assert evolution(fleet.store, spec.name) == local_reference(tmp_path, spec)
    assert_one_result_per_individual(fleet.store, spec)


# --- a message of the wrong shape ----------------------------------------------------------------


def test_a_malformed_message_is_rejected_in_one_line_and_the_worker_goes_on(fleet):
    import json
    import uuid

    from kombu import Connection, Producer

    node = fleet.start("alpha")
    fleet.wait_ready()
    # the exact message that used to stop every worker that took it
    with Connection(fleet.env["EVOARENA_BROKER_URL"]) as conn:
        Producer(conn).publish(json.dumps({"hello": "world"}), routing_key=fleet.queue, exchange="",
                               headers={"task": "evoarena.evaluate", "id": str(uuid.uuid4())},
                               content_type="application/json", content_encoding="utf-8", serializer=None)
    deadline = time.monotonic() + 30
    while '"rejected"' not in fleet.log("alpha") and time.monotonic() < deadline:
        time.sleep(0.2)

    rejected = [line for line in fleet.log("alpha").splitlines() if '"rejected"' in line]
    assert [json.loads(line)["why"] for line in rejected] == ["a body that is not [args, kwargs, embed]"]
    assert fleet.procs[node].poll() is None  # still running
    with fleet.app.connection_for_write() as conn:
        assert conn.default_channel.queue_declare(fleet.queue, passive=True).message_count == 0  # not requeued
    assert fleet.app.send_task("evoarena.noop").get(timeout=30) == {"node": node}  # and it still works


class Message:
    """What `malformed` reads of a kombu message."""

    def __init__(self, payload, headers=None):
        self.payload, self.headers = payload, {"id": "t1", "task": "evoarena.evaluate"} if headers is None else headers


@pytest.mark.parametrize(("payload", "headers", "why"), [
    ({"hello": "world"}, None, "a body that is not [args, kwargs, embed]"),
    ([[], {}, {}], None, "arguments that are not one JSON object (the task)"),
    ([["x"], {}, {}], None, "arguments that are not one JSON object (the task)"),
    ([[{}, {}], {}, {}], None, "arguments that are not one JSON object (the task)"),
    ([[{}], {"a": 1}, {}], None, "keyword arguments, or an embed that is not an object"),
    ([[{}], {}, {}], {"task": "evoarena.evaluate"}, "no task id in its headers"),
])
def test_malformed_names_what_is_wrong_with_a_message(payload, headers, why):
    from evoarena.fleet.app import malformed

    assert malformed(Message(payload, headers)) == why


def test_malformed_accepts_what_the_master_sends():
    from evoarena.fleet.app import malformed

    assert malformed(Message([[{"experiment": "x", "generation": 0}], {}, {"callbacks": None}])) is None


def test_the_direct_queue_of_a_worker_that_stopped_is_deleted_by_the_broker(tmp_path, monkeypatch):
    from amqp.exceptions import NotFound, PreconditionFailed

    from conftest import Fleet
    from evoarena.fleet.app import direct_queue

    monkeypatch.setenv("EVOARENA_DIRECT_QUEUE_EXPIRES_S", "2")  # the master's side; the worker gets the same
    fleet = Fleet(tmp_path)
    fleet.env["EVOARENA_DIRECT_QUEUE_EXPIRES_S"] = "2"
    try:
        node = fleet.start("alpha")
        fleet.wait_ready()
        assert direct_queue(node).queue_arguments == {"x-expires": 2000}
        # the master reaches the worker through the queue as the worker declared it
        assert fleet.app.send_task("evoarena.noop", queue=direct_queue(node)).get(timeout=30) == {"node": node}
        with fleet.app.connection_for_write() as conn, pytest.raises(PreconditionFailed, match="x-expires"):
            conn.default_channel.queue_declare(f"{node}.dq2", durable=True, auto_delete=False)  # Celery's, no expiry
        fleet.procs[node].terminate()  # a normal stop (SIGTERM: Celery's warm shutdown)
        fleet.procs[node].wait(timeout=30)
        time.sleep(4)
        with fleet.app.connection_for_write() as conn, pytest.raises(NotFound):
            conn.default_channel.queue_declare(f"{node}.dq2", passive=True)
    finally:
        fleet.close()


# --- signed tasks ------------------------------------------------------------------------------------


def test_with_a_task_key_workers_run_only_the_tasks_the_master_signed(fleet, monkeypatch):
    from evoarena.fleet.signing import sign

    monkeypatch.setenv("EVOARENA_TASK_KEY", "the-fleet-key")  # the master's side
    fleet.env["EVOARENA_TASK_KEY"] = "the-fleet-key"  # the workers'
    fleet.start("alpha")
    fleet.wait_ready()
    spec = parse_spec(spec_dict("fleet-signed", generations=2))

    scheduler.run(spec, fleet.store, fleet.executor())  # the master signs: everything runs

    stored = fleet.store.find_results(spec.name, 0, "evaluate")
    assert stored and all(d["error"] is None for d in stored)
    task = scheduler.algorithm(spec).plan(0, None).tasks[0]
    for forged in (task, sign(task, b"another-key"), {**sign(task, b"the-fleet-key"), "role": "elite"}):
        summary = fleet.app.send_task("evoarena.evaluate", args=(forged,)).get(timeout=60)
        assert summary["error"].startswith("TaskRefused: ") and "not signed" in summary["error"]
    assert fleet.store.find_results(spec.name, 0, "evaluate") == stored  # nothing was written
