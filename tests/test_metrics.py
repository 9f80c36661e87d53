"""Prometheus metrics: a worker's endpoint scraped while it runs tasks, and the master's gauges."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from evoarena import scheduler
from evoarena.worker.inline import InlineExecutor
from evoarena.metrics import outcome
from evoarena.spec.experiment import parse_spec
from evoarena.store import open_store
from evoarena.worker.worker import WorkerConfig
from helpers import tiny_ga


@pytest.mark.parametrize(("summary", "expected"), [
    ({"error": None}, "ok"),
    ({"error": "ValueError: delta kind 'gaussain' is unknown", "transient": False}, "error"),
    ({"error": "Transient: ConnectionResetError: reset (tried 4 times)", "transient": True}, "transient"),
    ({"error": "TaskRefused: task x is not signed", "transient": False}, "refused"),
])
def test_a_task_outcome_is_named_by_whose_failure_it_was(summary, expected):
    assert outcome(summary) == expected


def test_the_master_reports_the_steps_complete(tmp_path):
    spec = parse_spec(tiny_ga("metrics-master", generations=3))
    config = WorkerConfig(f"sqlite:///{tmp_path}/m.db", str(tmp_path / "a"), str(tmp_path / "noise"), threads=1)

    scheduler.run(spec, open_store(config.store_url), InlineExecutor(config))

    assert REGISTRY.get_sample_value("evoarena_steps_complete", {"experiment": "metrics-master"}) == 3


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.slow
def test_a_workers_metrics_endpoint_counts_the_tasks_it_runs(fleet):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fleet.env["EVOARENA_METRICS_PORT"] = str(port)
    fleet.start("alpha", "--concurrency", "2")  # two pool processes: the endpoint serves their sum
    fleet.wait_ready()
    deadline = time.monotonic() + 30
    while True:
        try:
            before = scrape(port)
            break
        except OSError:
            assert time.monotonic() < deadline, "the metrics endpoint never answered"
            time.sleep(0.5)
    spec = parse_spec(tiny_ga("metrics-worker", generations=3))

    scheduler.run(spec, fleet.store, fleet.executor())

    after = scrape(port)
    ran = fleet.store.count_results(spec.name)
    ok = ("evoarena_tasks_total", (("op", "evaluate"), ("outcome", "ok")))
    assert after[ok] - before.get(ok, 0) == ran
    assert after[("evoarena_task_seconds_count", (("op", "evaluate"),))] == ran
    builds = sum(v for (name, _), v in after.items() if name == "evoarena_cache_builds_total")
    assert builds == ran == after[("evoarena_materialize_seconds_count", ())]
    assert after[("evoarena_cache_bytes", ())] > 0
