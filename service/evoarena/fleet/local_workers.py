"""Celery worker processes on this machine, on a private queue: for tests, benchmarks, and
trying the fleet without a cluster. Each worker is `evoarena worker`, exactly as in a pod."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from amqp.exceptions import AMQPError

from evoarena.fleet.app import broker_url, dead_letter_queue, direct_queue, make_app


class LocalWorkers:
    """Worker processes on a private shared queue; a context manager that removes them and their queues."""

    def __init__(self, logs: Path, env: dict[str, str] | None = None, label: str = "local"):
        self.tag = uuid.uuid4().hex[:8]
        self.label = label
        self.queue = f"evoarena-{label}-{self.tag}"
        self.logs = logs
        # Workers on one machine share its disk, even when this machine is a pod: SQLite and a
        # directory serve them (settings.check_fleet_config).
        self.env = {**os.environ, "EVOARENA_BROKER_URL": broker_url(), "EVOARENA_QUEUE": self.queue,
                    "EVOARENA_REQUIRE_CONFIG": "false", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.app = make_app(broker_url(), self.queue)
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *options: str) -> str:
        """Start one worker, with `evoarena worker` `options` if any (`"--pool", "threads"`); its
        node name is returned (and its output goes to `logs`/<name>.log)."""
        node = f"{name}-{self.tag}@{self.label}"
        log = open(self.logs / f"{name}-{self.tag}.log", "w")
        self.procs[node] = subprocess.Popen(
            [sys.executable, "-m", "evoarena", "worker", "--name", node, *options],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return node

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"worker {node} exited with code {proc.returncode}; see {self.logs}")
            try:
                alive = {n for r in self.app.control.ping(destination=list(self.procs), timeout=1.0) for n in r}
            except (OSError, AMQPError) as exc:  # a pooled connection the broker closed (it restarted)
                print(f"warning: ping failed ({exc}); trying again", file=sys.stderr)
                alive = set()
            if alive >= set(self.procs):
                return
        raise RuntimeError(f"workers {sorted(set(self.procs) - alive)} did not answer within {timeout:.0f} s")

    def __enter__(self) -> LocalWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # the shared, dead-letter and direct queues are durable: nothing else would delete them soon
        with self.app.connection_for_write() as conn:
            channel = conn.default_channel
            for name in [self.queue, dead_letter_queue(self.queue).name,
                         *(direct_queue(node, self.queue).name for node in self.procs)]:
                try:
                    channel.queue_delete(name)
                except Exception as exc:  # noqa: BLE001 - cleanup goes on with the next queue
                    print(f"warning: could not delete queue {name}: {exc}", file=sys.stderr)
                    channel = conn.channel()
            # and the fleet's own exchanges: its queue's, its events' and its remote control's
            for name in [self.queue, f"{self.queue}.ev", f"{self.queue}.pidbox", f"reply.{self.queue}.pidbox"]:
                try:
                    channel.exchange_delete(name)
                except Exception as exc:  # noqa: BLE001 - cleanup goes on with the next exchange
                    print(f"warning: could not delete exchange {name}: {exc}", file=sys.stderr)
                    channel = conn.channel()

    def log(self, name: str) -> str:
        """What worker `name` (as given to start) has printed so far."""
        return (self.logs / f"{name}-{self.tag}.log").read_text()

    def kill(self, node: str) -> None:
        """SIGKILL a worker and its pool processes, as when a pod or node dies."""
        os.killpg(self.procs[node].pid, signal.SIGKILL)
        self.procs[node].wait()
