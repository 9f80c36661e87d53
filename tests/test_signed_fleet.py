"""A worker with a task key runs only the ops the master signs; one without a key takes tasks
only from a broker on its own machine, unless told otherwise (EVOARENA_ALLOW_UNSIGNED=true).

The benchmark tasks (evoarena.noop, evoarena.whoami, evoarena.sleep) take no signature: a worker
with a key does not have them, and rejects them as Celery rejects any task it does not know.
"""

from __future__ import annotations

import json

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evoarena import scheduler
from evoarena.settings import check_task_key
from evoarena.spec.experiment import parse_spec
from helpers import tiny_ga

ROOT = Path(__file__).resolve().parent.parent
BENCHMARK_TASKS = ("evoarena.sleep", "evoarena.whoami", "evoarena.noop")


# --- a worker with a key -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_worker_with_a_key_runs_no_benchmark_task_and_goes_on_with_signed_work(fleet, monkeypatch):
    monkeypatch.setenv("EVOARENA_TASK_KEY", "the-fleet-key")  # the master's side
    fleet.env["EVOARENA_TASK_KEY"] = "the-fleet-key"  # the worker's
    fleet.start("alpha")  # one process: a sleep it ran would hold it for a minute
    fleet.wait_ready()
    sleep = {"experiment": "bench", "generation": 0, "genome": {"id": "g0"}, "seconds": 110}
    for name in BENCHMARK_TASKS:
        fleet.app.send_task(name, args=(sleep,) if name == "evoarena.sleep" else ())

    deadline = time.monotonic() + 30  # rejected, so dead-lettered: nothing waits on the shared queue
    with fleet.app.connection_for_write() as conn:
        while conn.default_channel.queue_declare(f"{fleet.queue}.dead", passive=True).message_count < 3:
            assert time.monotonic() < deadline, "the benchmark tasks were not dead-lettered within 30 s"
            time.sleep(0.2)
        assert conn.default_channel.queue_declare(fleet.queue, passive=True).message_count == 0
    rejected = [json.loads(line) for line in fleet.log("alpha").splitlines() if '"rejected"' in line]
    assert sorted(r["rejected"] for r in rejected) == sorted(BENCHMARK_TASKS)
    assert all(r["why"] == "a task this worker does not have" for r in rejected)
    assert '"task started"' not in fleet.log("alpha")  # none of them ran

    spec = parse_spec(tiny_ga("signed-after-benchmarks", generations=1))
    scheduler.run(spec, fleet.store, fleet.executor())  # signed evaluations, on the same one process
    assert '"op": "sleep"' not in fleet.log("alpha")
    stored = fleet.store.find_results(spec.name, 0, "evaluate")
    assert stored and all(d["error"] is None for d in stored)


# --- a worker without a key --------------------------------------------------------------------


@pytest.mark.parametrize(("broker", "refused"), [
    ("amqp://guest:guest@127.0.0.1:5672//", None),
    ("amqp://guest:guest@127.0.0.2:5672//", None),
    ("amqp://guest:guest@localhost:5672//", None),
    ("amqp://guest:guest@[::1]:5672//", None),
    ("amqp://guest:guest@10.255.255.1:5672//", "10.255.255.1"),
    ("amqps://evoarena:pw@arena-evoarena-rabbitmq.ns.svc:5671//", "arena-evoarena-rabbitmq.ns.svc"),
    ("amqp://guest:guest@127.0.0.1//;amqp://guest:guest@rabbitmq-2//", "rabbitmq-2"),  # a failover list
])
def test_without_a_key_only_a_broker_on_loopback_is_accepted(broker, refused):
    problem = check_task_key({"EVOARENA_BROKER_URL": broker})

    if refused is None:
        assert problem is None
    else:
        assert problem.startswith(f"EVOARENA_TASK_KEY is not set and the broker ({refused}) is not on this machine")
        assert "EVOARENA_ALLOW_UNSIGNED=true" in problem and "pw" not in problem and "guest" not in problem


@pytest.mark.parametrize("given", [{"EVOARENA_TASK_KEY": "the-fleet-key"}, {"EVOARENA_ALLOW_UNSIGNED": "true"}])
def test_a_key_or_an_explicit_allowance_accepts_any_broker(given):
    assert check_task_key({"EVOARENA_BROKER_URL": "amqp://guest:guest@10.255.255.1:5672//", **given}) is None


@pytest.fixture
def remote_broker():
    """(url, accepted): a listener on this machine's address on its network (not loopback), which
    nothing but a worker given its URL would connect to; accepted(s) waits up to s seconds for a
    connection and says whether one came."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.1", 9))  # sends nothing: picks the interface a packet would leave by
        address = probe.getsockname()[0]
    except OSError:
        address = "127.0.0.1"
    finally:
        probe.close()
    if address.startswith("127."):
        pytest.skip("this machine has no address but loopback")
    listener = socket.create_server((address, 0))
    port = listener.getsockname()[1]

    def accepted(seconds: float) -> bool:
        listener.settimeout(seconds)
        try:
            listener.accept()[0].close()
            return True
        except TimeoutError:
            return False

    yield f"amqp://guest:guest@{address}:{port}//", accepted
    listener.close()


def worker_env(broker: str, **more: str) -> dict[str, str]:
    """The environment of `evoarena worker` off Kubernetes: no EVOARENA_ setting but these."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("EVOARENA_") and k != "KUBERNETES_SERVICE_HOST"}
    return {**base, "EVOARENA_BROKER_URL": broker, "PYTHONUNBUFFERED": "1", **more}


def test_a_worker_without_a_key_refuses_a_broker_on_the_network_before_connecting(remote_broker):
    broker, accepted = remote_broker

    done = subprocess.run([sys.executable, "-m", "evoarena", "worker", "--name", "unsigned@test"], cwd=ROOT,
                          env=worker_env(broker), capture_output=True, text=True, timeout=120)

    assert (done.returncode, done.stdout) == (2, "")
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: EVOARENA_TASK_KEY is not set and the broker (") and "not on this machine" in line
    assert not accepted(0.5)  # it never tried


def test_a_worker_told_to_allow_unsigned_tasks_goes_on_to_its_broker(remote_broker, tmp_path):
    broker, accepted = remote_broker
    with open(tmp_path / "worker.log", "w") as log:
        worker = subprocess.Popen([sys.executable, "-m", "evoarena", "worker", "--name", "unsigned@test"], cwd=ROOT,
                                  env=worker_env(broker, EVOARENA_ALLOW_UNSIGNED="true"), stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert accepted(90), (tmp_path / "worker.log").read_text()  # it connects to the broker it was given
        assert worker.poll() is None
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
