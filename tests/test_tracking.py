"""Experiment tracking in MLflow (tracking.py), against a real `mlflow server` on 127.0.0.1 with a
SQLite backend in a temporary folder, read back with MLflow's own client."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_ga

import evoarena
from evoarena.cli import export
from evoarena.store import open_store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """The URI of an MLflow tracking server started for these tests (SQLite backend, local artifacts)."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = (root / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                               "--artifacts-destination", str(root / "artifacts")],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}", pytrace=False)
            time.sleep(0.5)
    yield uri
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


@pytest.fixture
def place(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOARENA_STORE", f"sqlite:///{tmp_path / 'runs.db'}")
    monkeypatch.setenv("EVOARENA_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("EVOARENA_NOISE_DIR", str(tmp_path / "noise"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def mlflow_runs(uri: str, name: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, filter_string=f"tags.`evoarena.experiment` = '{name}'")


def stored_bests(place: Path, name: str) -> list[tuple[int, float]]:
    with open_store(f"sqlite:///{place / 'runs.db'}") as store:
        return [(doc["generation"], doc["stats"]["best"]) for doc in store.list_generations(name)]


def test_a_tracked_run_logs_its_spec_each_steps_summary_and_its_results(place, mlflow_server):
    from mlflow.tracking import MlflowClient

    spec = tiny_ga("trk-ga", generations=3, tracking={"mlflow": {"uri": mlflow_server, "experiment": "evoarena-tests"}})
    run = evoarena.run(spec, executor="inline", out=None)

    (tracked,) = mlflow_runs(mlflow_server, "trk-ga")
    client = MlflowClient(mlflow_server)
    assert client.get_experiment(tracked.info.experiment_id).name == "evoarena-tests"
    assert tracked.info.status == "FINISHED"
    assert tracked.data.tags["evoarena.version"] == evoarena.__version__
    params = tracked.data.params
    assert (params["name"], params["ga.generations"], params["problem.kind"]) == ("trk-ga", "3", "memorize")
    assert params["network.hidden"] == "[16]"
    history = client.get_metric_history(tracked.info.run_id, "best")
    assert sorted((m.step, m.value) for m in history) == stored_bests(place, "trk-ga")
    with open_store(f"sqlite:///{place / 'runs.db'}") as store:
        assert store.get_experiment("trk-ga")["tracking"]["mlflow_run_id"] == tracked.info.run_id

    assert sorted(a.path for a in client.list_artifacts(tracked.info.run_id)) == ["trk-ga-best.safetensors", "trk-ga.html"]
    local = client.download_artifacts(tracked.info.run_id, "trk-ga-best.safetensors", str(place))
    logged, metadata = export.load(local)
    assert metadata["genome_id"] == run.best()["genome_id"]
    for a, b in zip(logged.state_dict().values(), run.network().state_dict().values()):
        assert torch.equal(a, b)


def test_a_run_killed_and_resumed_logs_every_step_once_into_one_mlflow_run(place, mlflow_server, tmp_path):
    name, generations = "trk-resume", 8
    spec_file = tmp_path / "resume.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_ga(name, generations=generations, slow=True)))
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    command = [sys.executable, "-m", "evoarena", "run", str(spec_file), "--inline"]

    master = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(stored_bests(place, name)) < 2:
        assert master.poll() is None and time.monotonic() < deadline, "the run ended or stalled before step 2"
        time.sleep(0.2)
    master.send_signal(signal.SIGKILL)
    master.wait()
    assert len(stored_bests(place, name)) < generations

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    from mlflow.tracking import MlflowClient

    (tracked,) = mlflow_runs(mlflow_server, name)
    client = MlflowClient(mlflow_server)
    steps = [m.step for m in client.get_metric_history(tracked.info.run_id, "step")]
    assert sorted(steps) == list(range(generations))
    best = client.get_metric_history(tracked.info.run_id, "best")
    assert sorted((m.step, m.value) for m in best) == stored_bests(place, name)
    assert tracked.info.status == "FINISHED"


def test_a_tracking_server_that_does_not_answer_is_warned_about_once_and_the_run_completes(place, caplog):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="evoarena.tracking"):
        run = evoarena.run(tiny_ga("trk-down", generations=2, tracking={"mlflow": {"uri": down}}),
                           executor="inline", out=None)

    warnings = [r.getMessage() for r in caplog.records if r.name == "evoarena.tracking"]
    assert len(warnings) == 1 and "does not answer" in warnings[0] and down in warnings[0]
    assert run.status() == "complete" and len(run.steps()) == 2


def test_a_run_without_a_tracking_uri_is_not_tracked(place):
    evoarena.run(tiny_ga("trk-none", generations=1), executor="inline", out=None)
    with open_store(f"sqlite:///{place / 'runs.db'}") as store:
        assert "tracking" not in store.get_experiment("trk-none")
