"""EVOARENA_DELIVERY_LIMIT is how many times a task is delivered, at most, on the real RabbitMQ.

RabbitMQ's x-delivery-limit counts returns, not deliveries: the queues are declared with one
less (fleet/app.py). A task whose worker process dies on every delivery runs exactly the limit's
number of times, is dead-lettered and recorded once as an error; one that dies on fewer
deliveries than the limit runs to its result. Each test has its own queue, declared with its
own limit by the master (this process) and the workers alike.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from evoarena import scheduler
from evoarena.fleet.app import _task_queue_arguments, dead_letter_queue, make_app, task_queue
from evoarena.spec.experiment import parse_spec
from helpers import Fleet, broker_up, crashing_workers, tiny_ga

pytestmark = pytest.mark.slow


@pytest.fixture
def fleet_with_limit(tmp_path, monkeypatch):
    """fleet_with_limit(N): a Fleet (helpers.py) whose queues, the master's and the workers', have
    EVOARENA_DELIVERY_LIMIT=N. The limit is set before the fleet's app declares anything."""
    if not broker_up():
        pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672 (.ci/run starts it)", pytrace=False)
    made = []

    def make(limit: int) -> Fleet:
        monkeypatch.setenv("EVOARENA_DELIVERY_LIMIT", str(limit))  # the master's side: it declares the queues too
        fleet = Fleet(tmp_path)
        fleet.env["EVOARENA_DELIVERY_LIMIT"] = str(limit)  # the workers'
        made.append(fleet)
        return fleet

    yield make
    for fleet in made:
        fleet.close()


class CrashingFirst:
    """Marks the first child of generation 1 so that the worker process evaluating it dies on its
    first `times` evaluations (tests/crashing/sitecustomize.py: the task itself is left as planned)."""

    def __init__(self, fleet: Fleet, times: int, marks: Path):
        marks.mkdir()
        fleet.env["CRASHING_GENOMES"] = str(marks)  # for the workers started after this
        self.executor, self.times, self.marks, self.crashed = fleet.executor(), times, marks, []

    def map(self, op, tasks):
        for task in tasks:
            if task["generation"] == 1 and not self.crashed and task["role"] == "child":
                (self.marks / task["genome"]["id"]).write_text(str(self.times))
                self.crashed.append(f"{task['experiment']}:000001:evaluate:{task['genome']['id']}")
        return self.executor.map(op, tasks)

    def evaluations(self) -> int:
        """How many times a worker process began evaluating the marked genome."""
        (task,) = self.crashed
        counted = self.marks / f"{task.split(':')[-1]}.evaluations"
        return len(counted.read_text().splitlines()) if counted.exists() else 0

    def close(self):
        pass


def deliveries(fleet: Fleet, task: str, *names: str) -> int:
    """How many times workers `names` started `task`: one "task started" line per delivery."""
    return [json.loads(line)["task"] for name in names for line in fleet.log(name).splitlines()
            if '"event": "task started"' in line].count(task)


# --- the queues' argument, and what the broker does with it ---------------------------------------


@pytest.mark.parametrize(("limit", "argument"), [(1, 0), (3, 2), (5, 4)])
def test_the_queues_are_declared_with_one_less_than_the_limit(monkeypatch, limit, argument):
    monkeypatch.setenv("EVOARENA_DELIVERY_LIMIT", str(limit))

    assert _task_queue_arguments("q")["x-delivery-limit"] == argument


@pytest.mark.parametrize("limit", [1, 3])
@pytest.mark.parametrize("returned_by", ["basic.reject", "a closed channel"])
def test_the_broker_delivers_a_task_that_keeps_coming_back_exactly_the_limit_times(monkeypatch, limit, returned_by):
    """No worker: the broker alone, returning the message the two ways a dying worker does (Celery
    rejects with requeue when a pool process dies; the channel closes when the whole worker does)."""
    if not broker_up():
        pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672 (.ci/run starts it)", pytrace=False)
    monkeypatch.setenv("EVOARENA_DELIVERY_LIMIT", str(limit))
    name = f"evoarena-limit-{uuid.uuid4().hex[:8]}"
    app = make_app(None, name)
    with app.connection_for_write() as conn:
        channel = conn.channel()
        dead, queue = dead_letter_queue(name)(channel), task_queue(name)(channel)
        for q in (dead, queue):
            q.delete()
            q.declare()
        try:
            conn.Producer(channel).publish({"task": 1}, routing_key=name, serializer="json")
            delivered, deadline = 0, time.monotonic() + 30
            while (dead_letter := dead.get(no_ack=True)) is None:
                assert time.monotonic() < deadline, f"not dead-lettered after {delivered} deliveries"
                getter = conn.channel() if returned_by == "a closed channel" else channel
                message = queue(getter).get(no_ack=False)
                if message is not None:
                    delivered += 1
                    if returned_by == "basic.reject":
                        message.reject(requeue=True)
                if getter is not channel:
                    getter.close()  # gives back what it holds, unacknowledged
                if message is None:  # on its way back to the queue, or to the dead letters
                    time.sleep(0.1)
            assert delivered == limit
            assert dead_letter.payload == {"task": 1}
        finally:
            for q in (queue, dead):
                q.delete()


# --- workers whose processes die ---------------------------------------------------------------


@pytest.mark.parametrize("limit", [3, 1])
def test_a_task_that_kills_its_process_every_time_runs_exactly_the_limit_then_is_recorded_once(
        fleet_with_limit, tmp_path, limit):
    # It dies on its first `limit` evaluations: a delivery past the limit would run and store a result.
    fleet = fleet_with_limit(limit)
    spec = parse_spec(tiny_ga(f"limit-{limit}", generations=2))
    crashing = CrashingFirst(fleet, times=limit, marks=tmp_path / "crashing")
    crashing_workers(fleet, "alpha", "beta")

    scheduler.run(spec, fleet.store, crashing)

    (task,) = crashing.crashed
    assert deliveries(fleet, task, "alpha", "beta") == limit
    assert crashing.evaluations() == limit  # each delivery got as far as evaluating, and died
    (doc,) = [d for d in fleet.store.find_results(spec.name, 1, "evaluate") if d["_id"] == task]  # recorded once
    assert doc["fitness"] is None and "delivery limit" in doc["error"] and doc["transient"] is False
    assert not any(f'"task": "{task}"' in line and '"event": "task done"' in line
                   for name in ("alpha", "beta") for line in fleet.log(name).splitlines())  # no run finished it
    assert fleet.store.last_generation(spec.name) == spec.ga.generations - 1  # and the run went on
    with fleet.app.connection_for_write() as conn:
        assert conn.default_channel.queue_declare(fleet.queue, passive=True).message_count == 0
        assert conn.default_channel.queue_declare(f"{fleet.queue}.dead", passive=True).message_count == 0


def test_a_task_that_kills_its_process_fewer_times_than_the_limit_runs_to_its_result(fleet_with_limit, tmp_path):
    fleet = fleet_with_limit(3)
    spec = parse_spec(tiny_ga("limit-recovers", generations=2))
    crashing = CrashingFirst(fleet, times=2, marks=tmp_path / "crashing")
    crashing_workers(fleet, "alpha", "beta")

    scheduler.run(spec, fleet.store, crashing)

    (task,) = crashing.crashed
    assert deliveries(fleet, task, "alpha", "beta") == 3  # died twice, then the third delivery ran it
    assert crashing.evaluations() == 3
    doc = fleet.store.get_result(task)
    assert doc["error"] is None and isinstance(doc["fitness"], float)
    assert fleet.store.last_generation(spec.name) == spec.ga.generations - 1
