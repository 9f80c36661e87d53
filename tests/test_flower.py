"""Flower against the fleet, as docs/DEPLOY.md and the chart start it: `celery --app
evoarena.fleet.flower flower`, an app that needs only celery and flower (no torch, no evoarena
module beyond its settings). A live fleet run of two workers on the local broker with Flower
pointed at it, and headless Chromium (Debian's `chromium`, which .ci/run installs) finds both
workers on Flower's workers page and the run's tasks, succeeded, on its tasks page."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from evoarena import scheduler
from evoarena.spec.experiment import parse_spec
from helpers import tiny_ga

# What Flower's process must do without: it would fail to import any of them (a module made None
# in sys.modules cannot be imported), so a Flower that starts and shows the fleet did not need them.
HEAVY = ("torch", "numpy", "pydantic", "yaml", "safetensors", "boto3", "pymongo", "sklearn", "scipy", "matplotlib")
WITHOUT_HEAVY = f"import sys; sys.modules.update(dict.fromkeys({HEAVY!r}))"


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


def test_the_flower_app_imports_celery_and_evoarenas_settings_only():
    code = (f"{WITHOUT_HEAVY}\nimport json\nimport evoarena.fleet.flower as f\n"
            "print(json.dumps([sorted(m for m in sys.modules if m.startswith('evoarena')), f.app.conf.event_exchange]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "EVOARENA_QUEUE": "arena"})
    assert done.returncode == 0, done.stderr[-2000:]
    modules, exchange = json.loads(done.stdout)
    # the package, its settings (and the standard-library modules they import), nothing that computes
    assert set(modules) <= {"evoarena", "evoarena.encoding", "evoarena.encoding.arithmetic", "evoarena.fleet", "evoarena.fleet.flower",
                            "evoarena.heartbeat", "evoarena.settings"}, modules
    assert exchange == "arena.ev"


def test_the_flower_app_listens_where_the_fleet_sends_its_events_and_answers_pings():
    from evoarena.fleet import flower
    from evoarena.fleet.app import make_app

    fleet, watcher = make_app("memory://", "arena"), flower.make_app("memory://", "arena")
    for key in ("event_exchange", "control_exchange", "accept_content"):
        assert watcher.conf[key] == fleet.conf[key], key


@pytest.mark.slow
def test_flower_started_with_the_light_app_lists_both_workers_and_the_runs_tasks(fleet, tmp_path):
    port = free_port()
    start = f"{WITHOUT_HEAVY}\nfrom celery.bin.celery import main\nsys.exit(main())"
    flower = subprocess.Popen([sys.executable, "-c", start, "--app", "evoarena.fleet.flower", "flower",
                               f"--port={port}", "--address=127.0.0.1"],
                              env=fleet.env, stdout=open(tmp_path / "flower.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # Flower listens for task events from the start
            assert flower.poll() is None, (tmp_path / "flower.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        nodes = [fleet.start("alpha"), fleet.start("beta")]
        fleet.wait_ready()
        spec = parse_spec(tiny_ga("fleet-flower", generations=2))
        scheduler.run(spec, fleet.store, fleet.executor())
        time.sleep(2)  # the last events reach Flower

        workers = rendered_dom(f"http://127.0.0.1:{port}/workers")
        tasks = rendered_dom(f"http://127.0.0.1:{port}/tasks")
    finally:
        flower.terminate()
        flower.wait(timeout=30)

    # Flower's workers table (filled by its scripts): a row per worker, its name in a link's title
    listed = {name: row for row in re.findall(r"<tr[^>]*>(.*?)</tr>", workers, flags=re.S)
              for name in re.findall(r'class="worker-name-link"[^>]*title="([^"]+)"', row)}
    assert set(nodes) <= set(listed), f"workers shown: {sorted(listed)}"
    assert all("Online" in listed[node] for node in nodes)
    rows = re.findall(r'<tr id="([^"]+)"[^>]*>(.*?)</tr>', tasks, flags=re.S)
    ours = {d["_id"] for d in fleet.store.find_results(spec.name)}
    shown = [(task, row) for task, row in rows if task in ours]
    assert len(shown) >= min(len(ours), 10), f"{len(rows)} rows, {len(shown)} of this run's {len(ours)} tasks"
    assert all("evoarena.evaluate" in row and "SUCCESS" in row for _, row in shown)
    assert {node for _, row in shown for node in nodes if node in row} == set(nodes)  # both workers ran some


def test_the_flower_extra_is_celery_and_flower_alone():
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "requirements.py"
    done = subprocess.run([sys.executable, str(script), "--extra", "flower", "--extras-only"],
                          capture_output=True, text=True, check=True)
    assert sorted(done.stdout.split()) == ["celery>=5.7,<6", "flower>=2.0"]
