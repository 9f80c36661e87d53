"""The RabbitMQ management UI, as people watch a fleet run with it: through its HTTP API (the UI's
own source of data) on 127.0.0.1:15672, during a run on two real workers, the shared queue, the
workers' direct queues and the dead-letter queue exist with their consumers, and messages flow.
.ci/run enables the plugin (`rabbitmq-plugins enable rabbitmq_management`)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from evoarena import scheduler
from evoarena.spec import parse_spec
from test_fleet import spec_dict

pytestmark = pytest.mark.slow

API = "http://127.0.0.1:15672/api"


def api(path: str) -> dict | list:
    request = urllib.request.Request(f"{API}/{path}")
    request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest, the local broker's
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


def queue(name: str) -> dict:
    return api(f"queues/%2F/{urllib.parse.quote(name, safe='')}")


@pytest.fixture
def management():
    try:
        api("overview")
    except (urllib.error.URLError, OSError) as exc:
        pytest.fail(f"the RabbitMQ management API does not answer on {API} ({exc}): "
                    "`rabbitmq-plugins enable rabbitmq_management` (.ci/run does)", pytrace=False)


def test_the_management_api_shows_the_fleets_queues_with_their_consumers_and_messages_flowing(management, fleet):
    nodes = [fleet.start("alpha"), fleet.start("beta")]
    fleet.wait_ready()
    # long enough (about 20 s) for the management plugin, which samples every 5 s, to see it
    spec = parse_spec(spec_dict("fleet-watched", generations=80, slow=True))
    seen: dict[str, dict] = {}
    running = threading.Event()
    replies = fleet.app.backend.oid  # the master's reply queue (Celery names one per thread: read it here)

    def watch():  # what an operator sees while the run goes on
        names = (fleet.queue, f"{fleet.queue}.dead", replies, *(f"{node}.dq2" for node in nodes))
        while running.is_set() and len(seen) < len(names):
            for name in names:
                try:
                    shown = queue(name)
                except urllib.error.HTTPError as exc:  # 404: not declared yet (the reply queue, at first)
                    if exc.code != 404:
                        raise
                    continue
                if "consumers" in shown:  # sampled by the plugin since the queue was declared
                    seen[name] = shown
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
    assert shared["arguments"]["x-delivery-limit"] == 3
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
        stats = queue(fleet.queue).get("message_stats", {})
        delivered = stats.get("deliver_get", 0)
        time.sleep(1)
    assert delivered > 0
    assert stats.get("publish", 0) >= delivered
