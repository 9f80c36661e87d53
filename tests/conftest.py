"""Shared test helpers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from evoarena.fleet.app import make_app
from evoarena.fleet.celery_executor import CeleryExecutor
from evoarena.fleet.local_workers import LocalWorkers
from evoarena.store import ResultStore, open_store

# The batched passes' per-machine choices (batched.calibration_file) go to a file of this test session,
# inherited by the workers and CLI processes the tests start, not to the user's ~/.cache.
os.environ["EVOARENA_CALIBRATION"] = str(Path(tempfile.mkdtemp(prefix="evoarena-tests-")) / "batched-paths.json")


def evolution(store: ResultStore, name: str) -> list[dict]:
    """The generation docs without what depends on the clock or on how warm the caches were."""
    kept = ("best", "mean", "median", "worst", "evaluated", "errors")
    return [
        {"generation": d["generation"], "parents": d["parents"], "checkpoints": d["checkpoints"],
         "best": d["best"], "stats": {k: d["stats"][k] for k in kept}}
        for d in store.list_generations(name)
    ]


class Fleet(LocalWorkers):
    """Worker processes on a private queue, and a scheduler-side store to drive them."""

    def __init__(self, tmp: Path):
        super().__init__(tmp, {"EVOARENA_STORE": f"sqlite:///{tmp}/fleet.db", "EVOARENA_ARTIFACTS": str(tmp / "artifacts"),
                               "EVOARENA_NOISE_DIR": str(tmp / "noise"), "EVOARENA_THREADS": "1"}, label="test")
        self.store = open_store(self.env["EVOARENA_STORE"])

    @property
    def workers(self):
        return self.procs

    def executor(self, heartbeat_window: float = 5.0) -> CeleryExecutor:
        return CeleryExecutor(self.app, self.store, ping_every=1.0, store_every=1.0, heartbeat_window=heartbeat_window)

    def close(self) -> None:
        super().close()
        self.store.close()


def broker_up() -> bool:
    try:
        with make_app(None, "probe").connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:  # noqa: BLE001 - any failure to connect means the same: no broker
        return False


@pytest.fixture
def fleet(tmp_path):
    """Celery workers on the real RabbitMQ (127.0.0.1:5672), started by each test, removed after."""
    if not broker_up():
        pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672: start it with `rabbitmq-server -detached` "
                    "(.ci/run does)", pytrace=False)
    f = Fleet(tmp_path)
    yield f
    f.close()
