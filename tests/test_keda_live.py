"""The chart's KEDA metric against what a real worker does to its queues: a worker (prefork, one
process, prefetch one per consumer, as in a pod) on the real RabbitMQ, tasks sent to its own
queue and to the shared one, and the counts read from the management API, as KEDA reads them.

tests/test_deploy.py computes the replicas from made-up counts; this test checks that the counts
a real worker leaves are the ones those scenarios assume (a task waiting behind a running one in
a worker's own queue is ready, not unacknowledged), and feeds them to the same formula. The
live queues have test names (a private shared queue, the worker's node name); they are given the
names a release's queues have, which test_deploy.py checks the chart's patterns against."""

from __future__ import annotations

import time

import pytest

from evoarena.fleet.app import DIRECT_EXCHANGE
from helpers import RELEASE, keda_replicas, management_queue, one, shared_queue, template, worker_queue

pytestmark = pytest.mark.slow

POD = f"{RELEASE}-evoarena-worker-7d9c5b-x2x9k"


def send_sleep(fleet, name: str, seconds: float, node: str | None = None) -> None:
    """One `evoarena.sleep` task: to `node`'s own queue, or to the shared queue."""
    task = {"experiment": "keda-live", "generation": 0, "genome": {"id": name}, "seconds": seconds}
    options = {"exchange": DIRECT_EXCHANGE.name, "routing_key": node, "declare": []} if node else {}
    fleet.app.send_task("evoarena.sleep", args=(task,), task_id=name, **options)


def counts(name: str) -> tuple[int, int]:
    shown = management_queue(name)
    return shown.get("messages_ready", -1), shown.get("messages_unacknowledged", -1)


def wait_for_counts(expected: dict[str, tuple[int, int]], timeout: float = 45.0) -> None:
    """Until the management API (which samples every 5 s) shows (ready, unacknowledged) per queue."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {name: counts(name) for name in expected}
        if seen == expected:
            return
        assert time.monotonic() < deadline, f"the management API shows {seen}, not {expected}"
        time.sleep(1)


def test_the_metric_on_a_real_worker_counts_its_running_task_not_the_one_waiting_for_it(management, fleet, helm):
    node = fleet.start("alpha")
    fleet.wait_ready()
    own = f"{node}.dq2"
    scaled = one(template(helm, "--set", "keda.enabled=true", "--set", "keda.maxReplicas=16"), "ScaledObject",
                 f"{RELEASE}-evoarena-worker")
    keda = template(helm, "--set", "keda.enabled=true")

    def replicas() -> int:  # the live counts, under the names a release's queues have
        shared_ready, shared_held = counts(fleet.queue)
        own_ready, own_held = counts(own)
        return keda_replicas(scaled, [shared_queue(ready=shared_ready, held=shared_held),
                                      worker_queue(keda, POD, ready=own_ready, running=own_held)])

    try:
        # the master's backlog on a busy holder: one task running, its sibling waiting for it
        send_sleep(fleet, "g-own-1", 60, node)
        send_sleep(fleet, "g-own-2", 60, node)
        wait_for_counts({own: (1, 1), fleet.queue: (0, 0)})
        assert replicas() == 1  # a second pod could not take the waiting one

        # three tasks nobody holds: the worker's other consumer prefetches one of them
        for i in range(3):
            send_sleep(fleet, f"g-shared-{i}", 60)
        wait_for_counts({own: (1, 1), fleet.queue: (2, 1)})
        assert replicas() == 4  # 1 running + 3 shared, the prefetched one among them
    finally:
        fleet.kill(node)  # rather than a warm shutdown that would wait for a minute's sleep
