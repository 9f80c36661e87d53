"""`evoarena run` of an experiment already in the store: a complete one changes nothing (no
`running` left behind to go stale), and a resumed one says in one line where it resumes.
Real processes on a real SQLite file; the `--fleet` rerun talks to the real RabbitMQ."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from evoarena.store import open_store

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "experiments" / "tiny.yaml"


class Place:
    """A directory with its own store, artifacts and noise table, and tiny.yaml in it."""

    def __init__(self, root: Path, generations: int = 5):
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.db = root, root / "evoarena.db"
        spec = yaml.safe_load(TINY.read_text())
        spec["ga"]["generations"] = generations
        self.spec = root / "tiny.yaml"
        self.spec.write_text(yaml.safe_dump(spec, sort_keys=False))
        self.env = {**os.environ, "EVOARENA_STORE": f"sqlite:///{self.db}", "EVOARENA_ARTIFACTS": str(root / "artifacts"),
                    "EVOARENA_NOISE_DIR": str(root / "noise"), "EVOARENA_REQUIRE_CONFIG": "false",
                    "PYTHONUNBUFFERED": "1"}

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "evoarena", *args]

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), cwd=self.root, env=self.env, capture_output=True, text=True,
                              timeout=300)

    def contents(self) -> dict[str, list[tuple]]:
        """Every row of every table of the store: what "changes nothing" compares."""
        with sqlite3.connect(self.db) as conn:
            tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}

    def listed_state(self) -> str:
        done = self.run("list")
        assert done.returncode == 0, done.stderr
        header, row = done.stdout.splitlines()
        return row[header.index("state"):]


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory) -> Path:
    """tiny.yaml run to its end once; each test copies it."""
    place = Place(tmp_path_factory.mktemp("complete") / "place")
    done = place.run("run", "tiny.yaml")
    assert done.returncode == 0, done.stderr
    return place.root


def copy_of(complete_run: Path, tmp_path: Path) -> Place:
    shutil.copytree(complete_run, tmp_path / "place")
    return Place(tmp_path / "place")


@pytest.mark.parametrize("how", [[], ["--fleet"]], ids=["local", "fleet"])
def test_running_a_complete_experiment_again_changes_nothing_in_the_store(complete_run, tmp_path, how):
    place = copy_of(complete_run, tmp_path)
    before = place.contents()

    again = place.run("run", "tiny.yaml", *how)

    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("tiny: already complete (5 generations of 7)")
    assert place.contents() == before  # not the status, not a heartbeat, not a lease
    assert place.listed_state() == "complete"


def test_a_complete_run_whose_end_was_never_recorded_is_recorded_complete(complete_run, tmp_path):
    place = copy_of(complete_run, tmp_path)
    with open_store(place.env["EVOARENA_STORE"]) as store:  # its master died after storing its last step
        store.put_experiment("tiny", {**store.get_experiment("tiny"), "status": "running",
                                      "heartbeat": time.time() - 3600})
    assert place.listed_state().startswith("stale")

    again = place.run("run", "tiny.yaml")

    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("tiny: already complete")
    assert place.listed_state() == "complete"


def test_a_resumed_run_says_in_one_line_which_step_it_resumes_at_and_what_is_stored(tmp_path):
    place = Place(tmp_path / "place", generations=12)
    place.env["EVOARENA_MASTER_HEARTBEAT_S"] = "0.5"  # the killed master's lease is stale 3 s after its last beat
    proc = subprocess.Popen(place.command("run", "tiny.yaml"), cwd=place.root, env=place.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if place.db.exists():
                with open_store(place.env["EVOARENA_STORE"]) as store:
                    if (store.last_generation("tiny") or 0) >= 2:
                        break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with open_store(place.env["EVOARENA_STORE"]) as store:
        done = store.last_generation("tiny") + 1
        partial = store.count_results("tiny", done)
    assert 3 <= done < 12
    time.sleep(4)  # the killed master's lease is stale now

    again = place.run("run", "tiny.yaml")

    assert again.returncode == 0, again.stderr
    resuming = [line for line in again.stdout.splitlines() if line.startswith("tiny: resuming")]
    assert resuming == [f"tiny: resuming at generation {done + 1} of 12 ({done} complete; {partial} results of "
                        f"generation {done + 1} already stored, not run again)"]
    with open_store(place.env["EVOARENA_STORE"]) as store:
        assert store.get_experiment("tiny")["status"] == "complete"
