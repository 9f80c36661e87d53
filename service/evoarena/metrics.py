"""Prometheus metrics of the workers and the master, served on EVOARENA_METRICS_PORT (0: none).

Workers: tasks by op and outcome, task seconds, materialize seconds, parent-cache hits and
misses, bytes in the parent caches. The master: steps complete and tasks pending. A Celery
worker's pool processes each count their own; the worker's main process serves their sum
(prometheus_client's multiprocess mode, in a directory `serve_worker` makes before the pool
starts). The chart scrapes them through an optional ServiceMonitor.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server

from evoarena.encoding.materialize import CACHE_HITS

_SECONDS = (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000, 3000)

TASKS = Counter("evoarena_tasks", "Tasks a worker finished, by op and outcome (ok, error: the genome's, "
                "transient: the infrastructure's, refused)", ["op", "outcome"])
TASK_SECONDS = Histogram("evoarena_task_seconds", "Seconds a task took on its worker", ["op"], buckets=_SECONDS)
MATERIALIZE_SECONDS = Histogram("evoarena_materialize_seconds", "Seconds to build a genome's weights",
                                buckets=_SECONDS)
CACHE_BUILDS = Counter("evoarena_cache_builds", "Genome builds, by whether the parent cache served them "
                       "(hit: cached, from its parent or an ancestor; miss: replayed from a checkpoint or the start)",
                       ["result"])
CACHE_BYTES = Gauge("evoarena_cache_bytes", "Bytes of weights in the parent caches", multiprocess_mode="livesum")
STEPS = Gauge("evoarena_steps_complete", "Steps (generations, arena steps) complete", ["experiment"],
              multiprocess_mode="max")
PENDING = Gauge("evoarena_pending_tasks", "Tasks the master has sent and not heard back from, or not sent yet",
                multiprocess_mode="livesum")


def outcome(summary: dict) -> str:
    """ok, error (the genome's own), transient (its infrastructure's), or refused."""
    error = summary.get("error")
    if not error:
        return "ok"
    if summary.get("transient"):
        return "transient"
    return "refused" if error.startswith("TaskRefused") else "error"


def record_task(op: str, summary: dict, seconds: float, cache_bytes: int) -> None:
    """Count one finished task of this process."""
    TASKS.labels(op, outcome(summary)).inc()
    TASK_SECONDS.labels(op).observe(seconds)
    if summary.get("build"):
        CACHE_BUILDS.labels("hit" if summary["build"] in CACHE_HITS else "miss").inc()
    CACHE_BYTES.set(cache_bytes)


def serve(port: int) -> None:
    """Serve this process's metrics (the master, a local run) on `port`."""
    start_http_server(port)


def serve_worker(port: int) -> None:
    """Serve the sum of a Celery worker's pool processes on `port`. PROMETHEUS_MULTIPROC_DIR must
    name an empty directory before prometheus_client is first imported (cli.cmd_worker sees to it):
    that is where each process keeps its counts."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    start_http_server(port, registry=registry)


def process_ended(pid: int) -> None:
    """Drop a pool process's live gauges (its cache bytes) once it has exited."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
