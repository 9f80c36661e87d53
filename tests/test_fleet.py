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
from collections import Counter
from pathlib import Path

import pytest

from evoarena import scheduler
from evoarena.spec.experiment import parse_spec
from helpers import Fleet, crashing_workers, evolution, local_reference, tiny_ga

pytestmark = pytest.mark.slow


def assert_one_result_per_individual(store, spec) -> None:
    for generation in range(spec.ga.generations):
        docs = store.find_results(spec.name, generation, "evaluate")
        ids = [d["genome_id"] for d in docs]
        assert len(ids) == len(set(ids)) == (spec.ga.initial_population or spec.ga.population)


def test_two_workers_run_the_same_experiment_as_a_local_run(fleet, tmp_path):
    spec = parse_spec(tiny_ga("fleet-e2e", generations=6))
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
    spec = parse_spec(tiny_ga("fleet-kill", generations=5, slow=True))
    victim, survivor = fleet.start("victim"), fleet.start("survivor")
    fleet.wait_ready()

    def kill_when_busy():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # once the victim has finished a few tasks and started another
            log = fleet.log("victim")
            if log.count('"task done"') >= 3 and log.count('"task started"') > log.count('"task done"'):
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
    started = {line["task"] for line in victim_lines if line.get("event") == "task started"}
    finished = {line["task"] for line in victim_lines if line.get("event") == "task done"}
    interrupted = started - finished
    assert len(interrupted) == 1, f"the victim was not killed mid-task: {sorted(interrupted)}"
    assert fleet.store.get_result(interrupted.pop())["node"] == survivor
    assert evolution(fleet.store, spec.name) == local_reference(tmp_path, spec)
    assert_one_result_per_individual(fleet.store, spec)
    later = [d for d in fleet.store.find_results(spec.name) if d["generation"] >= 3]
    assert {d["node"] for d in later} == {survivor}


def test_a_poison_genome_is_recorded_once_and_the_run_goes_on(fleet):
    spec = parse_spec(tiny_ga("fleet-poison", generations=4))
    fleet.start("alpha")
    fleet.wait_ready()
    executor = fleet.executor()
    poisoned = []

    class Poisoning:
        def map(self, op, tasks):
            for task in tasks:
                if task["generation"] == 1 and not poisoned and task["role"] == "child":
                    task["genome"]["deltas"][-1]["k"] = "no-such-kind"  # cannot be built
                    scheduler.plan(fleet.store, op, [task])  # the master itself made it so
                    poisoned.append(task["genome"]["id"])
            return executor.map(op, tasks)

        def close(self):
            pass

    scheduler.run(spec, fleet.store, Poisoning())

    doc = fleet.store.get_result(f"fleet-poison:000001:evaluate:{poisoned[0]}")
    assert doc["fitness"] is None and "no-such-kind" in doc["error"]
    starts = [json.loads(line) for line in fleet.log("alpha").splitlines() if '"event": "task started"' in line]
    assert [s["task"] for s in starts].count(f"fleet-poison:000001:evaluate:{poisoned[0]}") == 1  # delivered once
    assert all(poisoned[0] not in [p["id"] for p in g["parents"]] for g in fleet.store.list_generations(spec.name))
    assert fleet.store.last_generation(spec.name) == spec.ga.generations - 1


def test_a_poison_genome_stops_the_run_when_the_spec_says_so(fleet):
    spec = parse_spec(tiny_ga("fleet-poison-stop", generations=4, ga={"on_error": "stop"}))
    fleet.start("alpha")
    fleet.wait_ready()
    executor = fleet.executor()

    class Poisoning:
        def map(self, op, tasks):
            tasks[-1]["genome"]["deltas"].append({"k": "no-such-kind"})  # the id check fails too
            scheduler.plan(fleet.store, op, tasks[-1:])  # the master itself made it so
            return executor.map(op, tasks)

        def close(self):
            pass

    with pytest.raises(RuntimeError, match="failed .*stopping because ga.on_error = stop"):
        scheduler.run(spec, fleet.store, Poisoning())
    assert fleet.store.last_generation(spec.name) is None


# --- a genome that kills the process evaluating it ------------------------------------------------


class Crashing:
    """Marks the first child of generation 1 so that the worker process evaluating it dies
    (tests/crashing/sitecustomize.py, on the workers' PYTHONPATH)."""

    def __init__(self, executor):
        self.executor, self.crashed = executor, []

    def map(self, op, tasks):
        for task in tasks:
            if task["generation"] == 1 and not self.crashed and task["role"] == "child":
                task["crash"] = True
                scheduler.plan(self.executor.store, op, [task])  # as if the master had made it so
                self.crashed.append(f"{task['experiment']}:000001:evaluate:{task['genome']['id']}")
        return self.executor.map(op, tasks)

    def close(self):
        pass


def test_a_genome_that_kills_its_worker_process_is_dead_lettered_recorded_once_and_the_run_goes_on(fleet):
    from evoarena.settings import FleetSettings

    spec = parse_spec(tiny_ga("fleet-crash", generations=4))
    crashing_workers(fleet, "alpha", "beta")
    crashing = Crashing(fleet.executor())

    scheduler.run(spec, fleet.store, crashing)

    task = crashing.crashed[0]
    doc = fleet.store.get_result(task)
    assert doc["fitness"] is None and "delivery limit" in doc["error"] and doc["transient"] is False
    starts = [json.loads(line)["task"] for name in ("alpha", "beta") for line in fleet.log(name).splitlines()
              if '"event": "task started"' in line]
    # delivered once, then again after each death, until the limit: never again after that
    assert starts.count(task) == FleetSettings.from_env().delivery_limit
    assert all(task.split(":")[-1] not in [p["id"] for p in g["parents"]] for g in fleet.store.list_generations(spec.name))
    assert fleet.store.last_generation(spec.name) == spec.ga.generations - 1
    assert all(fleet.workers[n].poll() is None for n in fleet.workers)  # the workers replaced their dead processes
    with fleet.app.connection_for_write() as conn:
        assert conn.default_channel.queue_declare(fleet.queue, passive=True).message_count == 0
        assert conn.default_channel.queue_declare(f"{fleet.queue}.dead", passive=True).message_count == 0


def test_a_genome_that_kills_its_worker_process_stops_the_run_when_the_spec_says_so(fleet):
    spec = parse_spec(tiny_ga("fleet-crash-stop", generations=4, ga={"on_error": "stop"}))
    crashing_workers(fleet, "alpha")

    with pytest.raises(RuntimeError, match="delivery limit.*stopping because ga.on_error = stop"):
        scheduler.run(spec, fleet.store, Crashing(fleet.executor()))
    assert fleet.store.last_generation(spec.name) == 0


# --- deadlines and liveness -------------------------------------------------------------------


def test_the_deadline_counts_from_when_a_worker_starts_the_task_not_from_when_it_was_sent(fleet):
    fleet.start("alpha")  # one worker process for ten tasks of 0.3 s: the last waits 2.7 s in the queue
    fleet.wait_ready()
    executor = fleet.executor()
    executor.deadline = 1.5  # seconds from a task's start: five times what one task takes
    tasks = [{"experiment": "deadline", "generation": 0, "genome": {"id": f"g{i}"}, "seconds": 0.3} for i in range(10)]

    summaries = list(executor.map("sleep", tasks))

    assert sorted(s["genome_id"] for s in summaries) == sorted(t["genome"]["id"] for t in tasks)
    assert [s["error"] for s in summaries] == [None] * 10
    assert executor.outcomes["deadline"] == 0


def test_a_send_to_a_worker_whose_queue_is_gone_goes_to_the_shared_queue(fleet, caplog):
    spec = parse_spec(tiny_ga("fleet-ghost", generations=3))
    node = fleet.start("alpha")
    fleet.wait_ready()
    executor = fleet.executor()
    scheduler.run(spec.model_copy(update={"ga": spec.ga.model_copy(update={"generations": 1})}), fleet.store, executor)
    # the master believes a worker that has no queue (it stopped for good) holds every parent
    ghost = "ghost@nowhere"
    for genome in fleet.store.find_results(spec.name, 0, "evaluate"):
        executor.router.record(ghost, genome["genome_id"])
    executor.seen[ghost] = time.monotonic()

    scheduler.run(spec, fleet.store, executor)

    assert ghost not in executor.nodes
    assert f"worker {ghost} has no queue" in caplog.text
    assert {d["node"] for d in fleet.store.find_results(spec.name, 1, "evaluate")} == {node}
    assert_one_result_per_individual(fleet.store, spec)


def test_a_worker_silent_for_less_than_the_heartbeat_window_keeps_its_tasks(fleet, caplog):
    import os
    import signal

    spec = parse_spec(tiny_ga("fleet-pause", generations=4, slow=True))
    node = fleet.start("alpha")
    fleet.wait_ready()

    def pause_when_busy():  # SIGSTOP the whole worker (it cannot answer a ping) for 4 s, mid-task
        while '"task started"' not in fleet.log("alpha"):
            time.sleep(0.05)
        os.killpg(fleet.workers[node].pid, signal.SIGSTOP)
        time.sleep(4)
        os.killpg(fleet.workers[node].pid, signal.SIGCONT)

    pauser = threading.Thread(target=pause_when_busy)
    pauser.start()
    scheduler.run(spec, fleet.store, fleet.executor(heartbeat_window=10))
    pauser.join()

    assert "is gone" not in caplog.text
    assert {d["node"] for d in fleet.store.find_results(spec.name)} == {node}
    assert_one_result_per_individual(fleet.store, spec)


def test_the_master_knows_a_worker_started_mid_run_before_it_has_run_a_task(fleet):
    fleet.start("alpha")
    fleet.wait_ready()
    executor = fleet.executor()
    task = {"experiment": "discovery", "generation": 0, "genome": {"id": "g0"}, "seconds": 8.0}
    late = {}

    def start_a_worker_mid_run():  # as KEDA adds a pod while the run goes on
        while not executor.seen:  # alpha has started the task
            time.sleep(0.05)
        late["node"] = fleet.start("beta")

    starter = threading.Thread(target=start_a_worker_mid_run)
    starter.start()
    (summary,) = executor.map("sleep", [task])  # one task, taken by alpha: beta runs nothing
    starter.join()

    assert late["node"] in executor.nodes  # heard from its heartbeats
    assert summary["node"] != late["node"] and '"task started"' not in fleet.log("beta")


def test_a_worker_whose_queue_was_deleted_as_dead_declares_a_fresh_one_and_is_reached_again(fleet):
    from amqp.exceptions import NotFound

    node = fleet.start("alpha")
    fleet.wait_ready()
    executor = fleet.executor()
    executor._delete_direct_queue(node)  # what the master does to a worker silent for the whole window

    deadline, consumers = time.monotonic() + 30, 0
    while consumers == 0 and time.monotonic() < deadline:
        try:
            with fleet.app.connection_for_write() as conn:
                consumers = conn.default_channel.queue_declare(f"{node}.dq2", passive=True).consumer_count
        except NotFound:
            time.sleep(0.2)
    assert consumers == 1
    direct = {"exchange": "C.dq2", "routing_key": node, "declare": [], "mandatory": True}  # as the master sends
    assert fleet.app.send_task("evoarena.noop", **direct).get(timeout=30) == {"node": node}


def outcomes_after(fleet, tmp_path, name: str, fault) -> Counter:
    """Run a 10-generation experiment on two workers; once generation 0 is stored, `fault()`
    happens. Return how the results reached the master once it had settled after the fault (two
    more generations: the results of the moment itself are read from the store), checking that
    the evolution is the uninterrupted one."""
    spec = parse_spec(tiny_ga(name, generations=10, slow=True))
    fleet.start("alpha")
    fleet.start("beta")
    fleet.wait_ready()
    executor, before = fleet.executor(), Counter()

    def at_generation_one():
        while fleet.store.last_generation(spec.name) is None:
            time.sleep(0.1)
        fault()
        now, deadline = fleet.store.last_generation(spec.name), time.monotonic() + 60
        while fleet.store.last_generation(spec.name) < now + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        before.update(executor.outcomes)

    thread = threading.Thread(target=at_generation_one)
    thread.start()
    try:
        scheduler.run(spec, fleet.store, executor)
    finally:
        thread.join()
    assert evolution(fleet.store, spec.name) == local_reference(tmp_path, spec)
    assert_one_result_per_individual(fleet.store, spec)
    return executor.outcomes - before


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl to restart the broker")
def test_the_run_survives_a_broker_restart_and_hears_results_through_the_backend_again(fleet, tmp_path):
    def restart_broker():
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True)
        time.sleep(3)
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True)
        subprocess.run(["rabbitmqctl", "await_startup"], check=True, capture_output=True)

    try:
        after = outcomes_after(fleet, tmp_path, "fleet-restart", restart_broker)
    finally:
        subprocess.run(["rabbitmqctl", "start_app"], capture_output=True)  # never leave the broker stopped

    # the master is subscribed to its reply queue again: results come through it, not from
    # polling the store every few seconds (which made generations 8x slower)
    assert after["backend"] >= 0.9 * sum(after.values()) > 0, dict(after)


def test_when_the_reply_queue_is_lost_mid_run_results_come_through_the_backend_again(fleet, tmp_path):
    reply_queue = fleet.app.backend.oid  # the master's (Celery names one per thread: read it in the master's)

    def delete_reply_queue():  # as a broker restart may: the queue is auto-delete
        with fleet.app.connection_for_write() as conn:
            assert conn.default_channel.queue_declare(reply_queue, passive=True).consumer_count == 1
            conn.default_channel.queue_delete(reply_queue)

    after = outcomes_after(fleet, tmp_path, "fleet-reply-lost", delete_reply_queue)

    assert after["backend"] >= 0.9 * sum(after.values()) > 0, dict(after)


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

    from evoarena.fleet.app import direct_queue

    monkeypatch.setenv("EVOARENA_DIRECT_QUEUE_EXPIRES_S", "2")  # the master's side; the worker gets the same
    fleet = Fleet(tmp_path)
    fleet.env["EVOARENA_DIRECT_QUEUE_EXPIRES_S"] = "2"
    try:
        node = fleet.start("alpha")
        fleet.wait_ready()
        queue = direct_queue(node, fleet.queue)
        assert queue.queue_arguments == {"x-queue-type": "quorum", "x-delivery-limit": 2, "x-expires": 2000,
                                         "x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{fleet.queue}.dead"}
        # the master reaches the worker through the queue as the worker declared it
        assert fleet.app.send_task("evoarena.noop", queue=queue).get(timeout=30) == {"node": node}
        with fleet.app.connection_for_write() as conn, pytest.raises(PreconditionFailed, match="x-expires"):
            no_expiry = {k: v for k, v in queue.queue_arguments.items() if k != "x-expires"}
            conn.default_channel.queue_declare(f"{node}.dq2", durable=True, auto_delete=False, arguments=no_expiry)
        fleet.procs[node].terminate()  # a normal stop (SIGTERM: Celery's warm shutdown)
        fleet.procs[node].wait(timeout=30)
        time.sleep(4)
        with fleet.app.connection_for_write() as conn, pytest.raises(NotFound):
            conn.default_channel.queue_declare(f"{node}.dq2", passive=True)
    finally:
        fleet.close()


def test_a_worker_stopped_with_sigterm_finishes_its_running_task_before_it_exits(fleet):
    node = fleet.start("alpha")
    fleet.wait_ready()
    task = {"experiment": "warm", "generation": 0, "genome": {"id": "g0"}, "seconds": 3.0}
    reply = fleet.app.send_task("evoarena.sleep", args=(task,), task_id="warm:000000:sleep:g0")
    deadline = time.monotonic() + 30
    while reply.state != "STARTED" and time.monotonic() < deadline:  # the worker reports it (task_track_started)
        time.sleep(0.05)
    assert reply.state == "STARTED"

    fleet.workers[node].terminate()  # SIGTERM, as the kubelet sends it: Celery's warm shutdown

    assert reply.get(timeout=30)["error"] is None  # the task ran to its end and its result came back
    assert fleet.workers[node].wait(timeout=30) == 0
    with fleet.app.connection_for_write() as conn:  # and it was acknowledged: nothing comes back
        assert conn.default_channel.queue_declare(fleet.queue, passive=True).message_count == 0


# --- GPUs ------------------------------------------------------------------------------------------


def test_each_process_of_a_worker_on_a_four_gpu_node_computes_on_its_own_gpu(fleet):
    fleet.env["PYTHONPATH"] = f"{Path(__file__).parent / 'fakegpus'}:{fleet.env.get('PYTHONPATH', '')}"
    fleet.env["EVOARENA_TEST_FAKE_GPUS"] = "4"  # torch in the workers sees 4 GPUs
    fleet.start("alpha", "--concurrency", "4")
    fleet.wait_ready()

    devices: dict[int, set[str]] = {}  # pool process -> the devices it reported
    deadline = time.monotonic() + 60
    while len(devices) < 4 and time.monotonic() < deadline:
        for reply in [fleet.app.send_task("evoarena.whoami") for _ in range(16)]:
            answer = reply.get(timeout=30)
            devices.setdefault(answer["pid"], set()).add(answer["device"])

    assert sorted(device for chosen in devices.values() for device in chosen) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]


@pytest.mark.parametrize(("slot", "gpus", "wanted", "device"), [
    (0, 0, None, "cpu"), (3, 0, None, "cpu"), (0, 4, None, "cuda:0"), (3, 4, None, "cuda:3"), (5, 4, None, "cuda:1"),
    (2, 4, "cuda", "cuda:2"), (2, 4, "cpu", "cpu"), (2, 4, "cuda:0", "cuda:0"),
])
def test_device_for_gives_each_pool_slot_its_own_gpu_unless_one_is_named(slot, gpus, wanted, device):
    from evoarena.settings import device_for

    assert device_for(slot, gpus, wanted) == device


def test_asking_for_cuda_where_torch_sees_no_gpu_is_an_error():
    from evoarena.settings import device_for

    with pytest.raises(RuntimeError, match="EVOARENA_DEVICE=cuda but torch sees no GPU"):
        device_for(0, 0, "cuda")


# --- signed tasks ------------------------------------------------------------------------------------


def test_with_a_task_key_workers_run_only_the_tasks_the_master_signed(fleet, monkeypatch):
    from evoarena.tasks import sign

    monkeypatch.setenv("EVOARENA_TASK_KEY", "the-fleet-key")  # the master's side
    fleet.env["EVOARENA_TASK_KEY"] = "the-fleet-key"  # the workers'
    fleet.start("alpha")
    fleet.wait_ready()
    spec = parse_spec(tiny_ga("fleet-signed", generations=2))

    scheduler.run(spec, fleet.store, fleet.executor())  # the master signs: everything runs

    stored = fleet.store.find_results(spec.name, 0, "evaluate")
    assert stored and all(d["error"] is None for d in stored)
    task = scheduler.algorithm(spec).plan(0, None).tasks[0]
    for forged in (task, sign(task, b"another-key"), {**sign(task, b"the-fleet-key"), "role": "elite"}):
        summary = fleet.app.send_task("evoarena.evaluate", args=(forged,)).get(timeout=60)
        assert summary["error"].startswith("TaskRefused: ") and "not signed" in summary["error"]
    assert fleet.store.find_results(spec.name, 0, "evaluate") == stored  # nothing was written
