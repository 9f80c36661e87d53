"""The RabbitMQ management UI, as people watch a fleet run with it: through its HTTP API (the UI's
own source of data) on 127.0.0.1:15672, during a run on two real workers, the shared queue, the
workers' direct queues and the dead-letter queue exist with their consumers, and messages flow.
.ci/run enables the plugin (`rabbitmq-plugins enable rabbitmq_management`)."""

from __future__ import annotations

import threading
import time
import urllib.error

import pytest

from evoarena import scheduler
from evoarena.spec.experiment import parse_spec
from helpers import management_queue, tiny_ga

pytestmark = pytest.mark.slow


def test_the_management_api_shows_the_fleets_queues_with_their_consumers_and_messages_flowing(management, fleet):
    nodes = [fleet.start("alpha"), fleet.start("beta")]
    fleet.wait_ready()
    # long enough (about 20 s) for the management plugin, which samples every 5 s, to see it
    spec = parse_spec(tiny_ga("fleet-watched", generations=80, slow=True))
    seen: dict[str, dict] = {}
    running = threading.Event()
    replies = fleet.app.backend.oid  # the master's reply queue (Celery names one per thread: read it here)

    def watch():  # what an operator sees while the run goes on
        names = (fleet.queue, f"{fleet.queue}.dead", replies, *(f"{node}.dq2" for node in nodes))
        while running.is_set():  # the whole run: a queue's first sample may predate its consumer
            for name in names:
                try:
                    shown = management_queue(name)
                except urllib.error.HTTPError as exc:  # 404: not declared yet (the reply queue, at first)
                    if exc.code != 404:
                        raise
                    continue
                if "consumers" in shown and shown["consumers"] >= seen.get(name, {}).get("consumers", 0):
                    seen[name] = shown  # sampled by the plugin since declared; the busiest sample kept
            time.sleep(0.5)

    running.set()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        scheduler.run(spec, fleet.store, fleet.executor())
    finally:
        running.clear()
        watcher.join()

    shared = seen[fleet.queue]
    assert (shared["type"], shared["consumers"]) == ("quorum", 2)
    assert shared["arguments"]["x-delivery-limit"] == 2  # the default limit of 3 deliveries: 2 redeliveries
    assert shared["arguments"]["x-dead-letter-routing-key"] == f"{fleet.queue}.dead"
    assert seen[f"{fleet.queue}.dead"]["type"] == "quorum"
    reply_queue = seen[replies]  # the master's: gone an hour after it stops using it
    assert (reply_queue["consumers"], reply_queue["auto_delete"], reply_queue["arguments"]["x-expires"]) == (
        1, True, 3_600_000)
    for node in nodes:
        direct = seen[f"{node}.dq2"]
        assert (direct["type"], direct["consumers"]) == ("quorum", 1)
        assert direct["arguments"]["x-expires"] == 3_600_000
    # the management plugin samples its message rates every few seconds: wait for the run's
    deadline, delivered = time.monotonic() + 30, 0
    while time.monotonic() < deadline and delivered == 0:
        stats = management_queue(fleet.queue).get("message_stats", {})
        delivered = stats.get("deliver_get", 0)
        time.sleep(1)
    assert delivered > 0
    assert stats.get("publish", 0) >= delivered


def test_queue_lines_sum_a_fleets_queues_and_leave_out_other_fleets():
    from evoarena.fleet.management import queue_lines

    ours = {"x-dead-letter-routing-key": "arena.dead"}
    listed = [
        {"name": "arena", "messages_ready": 12, "messages_unacknowledged": 3, "consumers": 4, "arguments": ours},
        {"name": "w1@pod-a.dq2", "messages_ready": 2, "messages_unacknowledged": 1, "arguments": ours},
        {"name": "w2@pod-b.dq2", "messages_ready": 0, "messages_unacknowledged": 1, "arguments": ours},
        {"name": "w9@other.dq2", "messages_ready": 50, "messages_unacknowledged": 9,
         "arguments": {"x-dead-letter-routing-key": "other.dead"}},
        {"name": "arena.dead", "messages": 1, "arguments": {}},
        {"name": "fresh", "arguments": {}},
    ]
    assert queue_lines(listed, "arena") == ["queue arena: 12 ready, 3 running, 4 consumers",
                                            "direct queues: 2, 2 ready, 2 running", "dead letters: 1"]


def test_a_count_the_plugin_has_not_sampled_yet_shows_as_unknown():
    from evoarena.fleet.management import queue_lines

    assert queue_lines([{"name": "arena", "arguments": {}}], "arena")[0] == "queue arena: ? ready, ? running, ? consumers"


def test_status_watch_shows_the_fleets_queues_from_the_management_api(management, fleet, monkeypatch):
    import io

    from evoarena.cli.watch import watch

    fleet.start("alpha")
    fleet.wait_ready()
    spec = parse_spec(tiny_ga("fleet-watch-queues", generations=1))
    scheduler.run(spec, fleet.store, fleet.executor())
    monkeypatch.setenv("EVOARENA_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672")
    monkeypatch.setenv("EVOARENA_QUEUE", fleet.queue)
    deadline = time.monotonic() + 30
    while "consumers" not in management_queue(fleet.queue) and time.monotonic() < deadline:  # sampled every 5 s
        time.sleep(0.5)

    out = io.StringIO()
    assert watch(fleet.store, spec.name, every=0.1, stream=out) == 0

    assert f"queue {fleet.queue}: 0 ready, 0 running, 1 consumers" in out.getvalue().splitlines()
    assert "direct queues: 1, 0 ready, 0 running" in out.getvalue().splitlines()
