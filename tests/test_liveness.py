"""The worker's liveness probe: a file the worker touches while it consumes, and a probe that
reads the file's age without importing torch or Celery (service/evoarena/liveness.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from evoarena import liveness


def probe(path, max_age: float) -> subprocess.CompletedProcess:
    """The probe as the kubelet runs it (helm/evoarena/templates/worker.yaml), with this Python."""
    return subprocess.run([sys.executable, "-m", "evoarena.liveness", str(path), "--max-age", str(max_age)],
                          capture_output=True, text=True)


def wait_for(condition, timeout: float = 60.0, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s"
        time.sleep(every)


def test_a_file_touched_within_the_limit_is_alive(tmp_path):
    alive = tmp_path / "alive"
    liveness.touch(str(alive))

    done = probe(alive, max_age=60)

    assert (done.returncode, done.stdout) == (0, "")


def test_a_file_older_than_the_limit_is_not_alive_and_says_how_old(tmp_path):
    alive = tmp_path / "alive"
    liveness.touch(str(alive))
    an_hour_ago = time.time() - 3600
    os.utime(alive, (an_hour_ago, an_hour_ago))

    done = probe(alive, max_age=60)

    assert done.returncode == 1
    assert done.stdout.startswith(f"not alive: {alive} was last touched 360") and "(more than 60 s)" in done.stdout


def test_a_missing_file_is_not_alive(tmp_path):
    done = probe(tmp_path / "never", max_age=60)

    assert done.returncode == 1
    assert "does not exist" in done.stdout


BLOCKED = ("torch", "celery", "kombu", "billiard", "numpy", "pydantic", "evoarena.fleet", "evoarena.worker")


def test_the_probe_imports_neither_torch_nor_celery(tmp_path):
    """A meta-path hook in a fresh interpreter refuses and records every import of the heavy
    packages; the probe must run to its answer without asking for one."""
    alive = tmp_path / "alive"
    liveness.touch(str(alive))
    code = f"""
import runpy, sys
asked = []
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in {BLOCKED!r}):
            asked.append(name)
            raise ImportError("the probe must not import " + name)
        return None
sys.meta_path.insert(0, Refuse())
sys.argv = ["evoarena.liveness", {str(alive)!r}, "--max-age", "60"]
try:
    runpy.run_module("evoarena.liveness", run_name="__main__")
except SystemExit as exit:
    print("exit", exit.code, "asked", asked)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    assert done.stdout.strip() == "exit 0 asked []", done.stdout + done.stderr


def test_the_hook_in_that_test_does_catch_a_heavy_import():
    code = f"""
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in {BLOCKED!r}):
            raise ImportError("refused " + name)
sys.meta_path.insert(0, Refuse())
import evoarena.worker
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    assert done.returncode != 0 and "ImportError: refused " in done.stderr


@pytest.mark.parametrize("pool", ["prefork", "threads"])  # the two the chart allows
def test_a_real_worker_is_alive_while_it_consumes_and_not_once_its_main_process_stops(fleet, tmp_path, pool):
    alive = tmp_path / "alive"
    node = fleet.start("alpha", "--pool", pool, "--alive-file", str(alive), "--alive-every", "0.5")
    fleet.wait_ready()
    wait_for(alive.exists)

    assert probe(alive, max_age=3).returncode == 0  # consuming, touched every 0.5 s

    main = fleet.workers[node].pid
    os.kill(main, signal.SIGSTOP)  # a wedged main process: its event loop touches nothing
    try:
        wait_for(lambda: liveness.age(str(alive)) > 4, timeout=30)
        stale = probe(alive, max_age=3)
    finally:
        os.kill(main, signal.SIGCONT)
    assert stale.returncode == 1 and "not alive" in stale.stdout

    wait_for(lambda: liveness.age(str(alive)) < 1, timeout=30)  # running again, touching again
    assert probe(alive, max_age=3).returncode == 0
