"""Watching a fleet run from the command line: `status --watch` asks the RabbitMQ management API
about the broker URL's own virtual host; `status` reads a SQLite store without waiting for a
writer's lock; `status | head` ends quietly. Real processes, the real broker on 127.0.0.1:5672
and its management API on 15672."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from evoarena import scheduler
from evoarena.fleet.management import broker_vhost
from evoarena.spec.experiment import parse_spec
from evoarena.store import open_store
from helpers import Fleet, broker_up, tiny_ga

MANAGEMENT = "http://guest:guest@127.0.0.1:15672"


def api(method: str, path: str, body: dict | None = None):
    request = urllib.request.Request(f"http://127.0.0.1:15672/api/{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"content-type": "application/json",
                                              "Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})  # guest:guest
    with urllib.request.urlopen(request, timeout=10) as answer:
        text = answer.read()
        return json.loads(text) if text else None


@pytest.mark.parametrize("url, vhost", [("amqp://u:p@h:5672//", "/"), ("amqp://h:5672", "/"), ("amqp://h/", "/"),
                                        ("amqp://u:p@h:5672/arena", "arena"), ("amqp://h/%2Farena", "/arena")])
def test_the_vhost_is_the_broker_urls_as_kombu_reads_it(url, vhost):
    assert broker_vhost(url) == vhost


@pytest.fixture
def vhost():
    """A virtual host of its own on the local broker, guest allowed in it; deleted after the test."""
    if not broker_up():
        pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672: `rabbitmq-server -detached`", pytrace=False)
    name = f"evoarena-watch-{uuid.uuid4().hex[:8]}"
    try:
        api("PUT", f"vhosts/{name}")
    except (urllib.error.URLError, OSError) as exc:
        pytest.fail(f"the RabbitMQ management API does not answer ({exc}): "
                    "`rabbitmq-plugins enable rabbitmq_management`", pytrace=False)
    api("PUT", f"permissions/{name}/guest", {"configure": ".*", "write": ".*", "read": ".*"})
    yield name
    api("DELETE", f"vhosts/{name}")


@pytest.mark.slow
def test_status_watch_counts_the_consumers_of_the_broker_urls_vhost(vhost, tmp_path, monkeypatch):
    monkeypatch.setenv("EVOARENA_BROKER_URL", f"amqp://guest:guest@127.0.0.1:5672/{vhost}")
    from evoarena.cli.watch import watch

    with Fleet(tmp_path) as fleet:
        fleet.start("alpha")
        fleet.start("beta")
        fleet.wait_ready()
        spec = parse_spec(tiny_ga("watch-vhost", generations=1))
        scheduler.run(spec, fleet.store, fleet.executor())
        monkeypatch.setenv("EVOARENA_MANAGEMENT_URL", MANAGEMENT)
        monkeypatch.setenv("EVOARENA_QUEUE", fleet.queue)
        wanted = [f"queue {fleet.queue}: 0 ready, 0 running, 2 consumers", "direct queues: 2, 0 ready, 0 running"]
        deadline = time.monotonic() + 60
        while True:  # the plugin samples each queue every 5 s (a busy machine: later), not all at once; ? until then
            out = io.StringIO()
            assert watch(fleet.store, spec.name, every=0.1, stream=out) == 0
            lines = out.getvalue().splitlines()
            if all(line in lines for line in wanted) or time.monotonic() > deadline:
                break
            time.sleep(1)

    queue_lines = [line for line in lines if "queue" in line]
    assert wanted[0] in lines, queue_lines
    assert wanted[1] in lines, queue_lines


# --- `evoarena status` beside a writer, and into a pipe that closes ---------------------------------


@pytest.fixture
def stored_run(tmp_path) -> tuple[dict, str]:
    """A complete tiny GA in a SQLite store: the environment that names it, and its name."""
    from evoarena.worker.inline import InlineExecutor
    from evoarena.worker.worker import WorkerConfig

    url = f"sqlite:///{tmp_path}/evoarena.db"
    spec = parse_spec(tiny_ga("status-beside-writer", generations=2))
    with open_store(url) as store:
        scheduler.run(spec, store, InlineExecutor(WorkerConfig(url, str(tmp_path / "art"), str(tmp_path / "noise"),
                                                               threads=1)))
    return {**os.environ, "EVOARENA_STORE": url, "PYTHONUNBUFFERED": "1"}, spec.name


def status_command(name: str) -> list[str]:
    return [sys.executable, "-m", "evoarena", "status", name]


@pytest.mark.slow
def test_status_reads_the_store_while_another_process_holds_its_write_lock(stored_run, tmp_path):
    env, name = stored_run
    path = env["EVOARENA_STORE"].removeprefix("sqlite:///")
    # a writer in the middle of a long transaction (a master's, a worker's): it holds the lock 120 s
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        f"c = sqlite3.connect({path!r}, isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE'); c.execute(\"UPDATE experiments SET doc = doc\")\n"
        "print('locked', flush=True); time.sleep(120); c.execute('COMMIT')")], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "locked"
        started = time.monotonic()
        done = subprocess.run(status_command(name), env=env, capture_output=True, text=True, timeout=100)
        took = time.monotonic() - started
        assert writer.poll() is None  # the lock was held all along
    finally:
        writer.kill()
        writer.wait()
    assert done.returncode == 0, done.stderr
    assert f"experiment  {name}  (complete" in done.stdout
    assert took < 60, f"status took {took:.1f} s beside a writer"  # it never waited for the 120 s lock

    from evoarena.cli.status import open_experiment, status_lines  # and the reads alone take no time

    store, experiment, spec = open_experiment(env["EVOARENA_STORE"], name)
    with store:
        started = time.monotonic()
        status_lines(store, experiment, spec)
        assert time.monotonic() - started < 1.0


@pytest.mark.slow
def test_status_into_a_pipe_its_reader_closed_ends_without_a_traceback(stored_run):
    env, name = stored_run
    status = subprocess.Popen(status_command(name), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    status.stdout.close()  # `| head -3` that has its lines already, or `| true`
    err = status.stderr.read().decode()
    assert status.wait(timeout=100) == 141  # 128 + SIGPIPE, as a shell reports it
    assert "Traceback" not in err and "BrokenPipeError" not in err and err == ""

    shell = subprocess.run(f"{' '.join(status_command(name))} | head -1", shell=True, env=env,
                           capture_output=True, text=True, timeout=100)
    assert shell.stdout.startswith(f"experiment  {name}") and shell.stderr == ""


# --- progress inside a long task, and the ETA ------------------------------------------------------


def long_chunks(name: str) -> dict:
    """One round of 2 players whose train_pair chunks each take seconds (2,000 steps in one chunk)."""
    return {"name": name,
            "problem": {"kind": "gan", "latent": 4, "metric_samples": 200,
                        "data": {"kind": "ring", "train": 2000, "heldout": 500}},
            "arena": {"rounds": 1, "players": 2, "generators": 1, "discriminators": 1,
                      "generator": {"hidden": [16]}, "discriminator": {"hidden": [16]},
                      "train_steps": 2000, "chunk_steps": 2000, "cross_train_steps": 0, "batch_size": 32,
                      "match_samples": 128, "match_block": 2},
            "noise": {"size": 65536}}


@pytest.mark.slow
def test_the_watch_shows_the_steps_a_running_train_pair_has_done(fleet):
    import threading

    from evoarena.cli.watch import live

    fleet.start("alpha")
    fleet.wait_ready()
    spec = parse_spec(long_chunks("watch-progress"))
    executor = fleet.executor()
    states, seen, running = [], [], threading.Event()
    heard = executor._on_state  # every state a worker reports reaches the master here
    executor._on_state = lambda meta, pending: (states.append(meta.get("status")), heard(meta, pending))[-1]

    def watch():  # `status --watch`'s live row, from a store connection of its own
        with open_store(fleet.env["EVOARENA_STORE"]) as store:
            while running.is_set():
                if store.get_experiment(spec.name) is not None:
                    seen.append(live(store, spec))
                time.sleep(0.3)

    running.set()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        scheduler.run(spec, fleet.store, executor)
    finally:
        running.clear()
        watcher.join()

    training = [row for row in seen if row.step.startswith("round 1/1 train ") and row.done == 0]
    partly = [row for row in training if 0 < int(row.step.split()[-2].split("/")[0]) < 4000]
    assert partly, [row.line() for row in seen]
    assert all(row.step.endswith("/4000 steps") for row in training)  # 2 pending pairs x 2,000 steps
    assert "PROGRESS" in states  # Celery's own state for it, which the master hears and lets pass
    assert seen[0].estimating or seen[0].eta_s is not None


def test_the_eta_comes_from_measured_task_times_shared_among_the_workers():
    from evoarena.cli.watch import Live, eta_from_tasks

    assert eta_from_tasks({"train_pair": 4}, {}, workers=2) is None  # nothing measured yet
    # a first task that warmed up for 3 s does not make every later one 3 s: the median does not move
    times = {"train_pair": [3.0, 0.5, 0.5, 0.5], "match": [1.0]}
    assert eta_from_tasks({"train_pair": 8, "match": 1}, times, workers=2) == pytest.approx((8 * 0.5 + 1.0) / 2)
    # an op not measured yet: the median of every task's time
    assert eta_from_tasks({"cross_train": 2}, times, workers=1) == pytest.approx(2 * 0.5)
    assert Live("round 1/8 train", 0, 4, 0, None, None, estimating=True).line().endswith("eta estimating")
