"""A fleet's broker that is down or wrong: `evoarena run --fleet` and `evoarena worker` say so in one
line within seconds and exit 1, leaving the experiment as it was; told to wait (--wait-for-broker,
EVOARENA_BROKER_WAIT=true), they wait for it and then work. Real processes, the real RabbitMQ on
127.0.0.1:5672, and a port that answers only once the test opens it (a broker that starts late)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from evoarena.fleet.local_workers import LocalWorkers
from evoarena.store import open_store

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "experiments" / "tiny.yaml"
RABBITMQ = ("127.0.0.1", 5672)
LIMIT_S = 10  # the bound on the time to the one line


def free_port() -> int:
    """A port on which nothing listens (a connection to it is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def evoarena(tmp: Path, *args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "evoarena", *args], cwd=tmp, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "EVOARENA_STORE": f"sqlite:///{tmp}/evoarena.db",
                                            "EVOARENA_REQUIRE_CONFIG": "false", **env})
    return done, time.monotonic() - started


def one_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize("command", [["run", str(TINY), "--fleet"], ["worker"]], ids=["run --fleet", "worker"])
def test_a_broker_that_does_not_answer_is_one_line_within_10_s_and_exit_1(tmp_path, command):
    port = free_port()
    done, seconds = evoarena(tmp_path, *command, env={"EVOARENA_BROKER_URL": f"amqp://guest:s3cret@127.0.0.1:{port}//"})

    assert done.returncode == 1, done.stderr
    assert seconds < LIMIT_S
    line = one_line(done)
    assert line == (f"error: the broker at amqp://guest:***@127.0.0.1:{port}// does not answer (connection refused); "
                    "EVOARENA_BROKER_URL sets it")
    assert "s3cret" not in done.stdout + done.stderr


def test_a_broker_that_refuses_the_login_is_one_line_naming_it(tmp_path):
    done, seconds = evoarena(tmp_path, "run", str(TINY), "--fleet",
                             env={"EVOARENA_BROKER_URL": "amqp://guest:not-the-password@127.0.0.1:5672//"})

    assert done.returncode == 1, done.stderr
    assert seconds < LIMIT_S
    assert one_line(done) == ("error: the broker at amqp://guest:***@127.0.0.1:5672// refuses the login (wrong user or "
                              "password); EVOARENA_BROKER_URL sets it")


def test_a_master_stopped_by_its_broker_leaves_the_experiment_as_it_was(tmp_path):
    shutil.copy(TINY, tmp_path / "tiny.yaml")
    first, _ = evoarena(tmp_path, "run", "tiny.yaml", "--inline", env={})
    assert first.returncode == 0, first.stderr
    with open_store(f"sqlite:///{tmp_path}/evoarena.db") as store:
        before = store.get_experiment("tiny")
    again, _ = evoarena(tmp_path, "run", "tiny.yaml", "--fleet",
                        env={"EVOARENA_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}//"})

    assert again.returncode == 1, again.stderr
    with open_store(f"sqlite:///{tmp_path}/evoarena.db") as store:
        assert store.get_experiment("tiny") == before  # no `running` whose heartbeat would go stale
    listed, _ = evoarena(tmp_path, "list", env={})
    assert listed.stdout.splitlines()[1].split()[-1] == "complete"

    fresh, _ = evoarena(tmp_path, "run", str(TINY), "--fleet", "--store", f"sqlite:///{tmp_path}/fresh.db",
                        env={"EVOARENA_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}//"})
    assert fresh.returncode == 1, fresh.stderr
    assert not (tmp_path / "fresh.db").exists()  # a new experiment is not even registered


class LateBroker:
    """A port that answers once `open` is called, forwarding each connection to the real RabbitMQ:
    a broker that starts after its clients do."""

    def __init__(self):
        self.port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.server: socket.socket | None = None

    def open(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(RABBITMQ)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text():
            return
        assert proc.poll() is None, f"exited {proc.returncode}: {path.read_text()}"
        time.sleep(0.2)
    pytest.fail(f"no {text!r} in {path.name} within {timeout} s: {path.read_text()}")


def test_told_to_wait_the_master_and_a_worker_wait_for_the_broker_then_run_the_experiment(tmp_path):
    broker = LateBroker()
    env = {"EVOARENA_BROKER_URL": broker.url, "EVOARENA_STORE": f"sqlite:///{tmp_path}/evoarena.db",
           "EVOARENA_ARTIFACTS": str(tmp_path / "artifacts"), "EVOARENA_NOISE_DIR": str(tmp_path / "noise"),
           "EVOARENA_THREADS": "1", "EVOARENA_BROKER_WAIT": "true"}  # the worker waits by the setting
    with LocalWorkers(tmp_path, env, label="late") as workers:  # a private queue, removed after
        node = workers.start("w")
        out, err = tmp_path / "master.out", tmp_path / "master.err"
        master_env = {**workers.env, "EVOARENA_BROKER_WAIT": "false"}  # the master waits by its flag
        with open(out, "w") as stdout, open(err, "w") as stderr:
            master = subprocess.Popen([sys.executable, "-m", "evoarena", "run", str(TINY), "--fleet",
                                       "--wait-for-broker"], cwd=tmp_path, env=master_env, stdout=stdout, stderr=stderr)
        try:
            waiting = f"waiting: the broker at amqp://guest:***@127.0.0.1:{broker.port}// does not answer"
            wait_for_text(err, waiting, master, timeout=30)
            wait_for_text(workers.logs / f"w-{workers.tag}.log", waiting, workers.procs[node], timeout=30)
            time.sleep(6)  # a try or two more: still waiting, not given up
            assert master.poll() is None and workers.procs[node].poll() is None

            broker.open()
            assert master.wait(timeout=240) == 0, err.read_text()
        finally:
            if master.poll() is None:
                master.kill()
                master.wait()
            broker.close()
    assert "Traceback" not in err.read_text()
    assert "tiny: done; best fitness" in out.read_text()
    with open_store(env["EVOARENA_STORE"]) as store:
        assert store.get_experiment("tiny")["status"] == "complete"
        assert store.last_generation("tiny") == 4
