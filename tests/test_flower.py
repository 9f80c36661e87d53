"""Flower against the fleet: Celery users watch workers and tasks in Flower. A live fleet run on
the local broker with Flower pointed at it, and headless Chromium (Debian's `chromium`, which
.ci/run installs) finds the run's tasks, succeeded, on Flower's tasks page."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from evoarena import scheduler
from evoarena.spec import parse_spec
from test_fleet import spec_dict

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("headless Chromium is needed: `apt-get install -y chromium` (.ci/run does)", pytrace=False)
    return found


def rendered_dom(url: str) -> str:
    """The page at `url` after its scripts ran (Flower fills its task table from its own API)."""
    done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000",
                           "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_flower_shows_the_tasks_of_a_fleet_run(fleet, tmp_path):
    port = free_port()
    flower = subprocess.Popen([sys.executable, "-m", "celery", "--app", "evoarena.fleet.app", "flower",
                               f"--port={port}", "--address=127.0.0.1"],
                              env=fleet.env, stdout=open(tmp_path / "flower.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # Flower listens for task events from the start
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        fleet.start("alpha")
        fleet.wait_ready()
        spec = parse_spec(spec_dict("fleet-flower", generations=2))
        scheduler.run(spec, fleet.store, fleet.executor())
        time.sleep(2)  # the last events reach Flower

        dom = rendered_dom(f"http://127.0.0.1:{port}/tasks")
    finally:
        flower.terminate()
        flower.wait(timeout=30)

    rows = re.findall(r'<tr id="([^"]+)"[^>]*>(.*?)</tr>', dom, flags=re.S)
    ours = {d["_id"] for d in fleet.store.find_results(spec.name)}
    shown = [(task, row) for task, row in rows if task in ours]
    assert len(shown) >= min(len(ours), 10), f"{len(rows)} rows, {len(shown)} of this run's {len(ours)} tasks"
    assert all("evoarena.evaluate" in row and "SUCCESS" in row for _, row in shown)
