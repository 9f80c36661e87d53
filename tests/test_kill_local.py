"""`kill -9` of a local `evoarena run` (the master alone, not its process group): its pool processes
die with it at once, none stores anything after it, and running the same command again ends where
an uninterrupted run ends. A tiny arena on two local worker processes, on a real SQLite file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from evoarena.store import ResultStore, open_store

pytestmark = pytest.mark.slow
NAME = "arena-kill9"
GONE_WITHIN_S = 5


def arena_spec() -> dict:
    """A tiny arena on the ring, 2 rounds (7 steps of the master), on 2 local worker processes."""
    return {
        "name": NAME,
        "problem": {"kind": "gan", "latent": 4, "metric_samples": 200,
                    "data": {"kind": "ring", "train": 2000, "heldout": 500}},
        "arena": {"rounds": 2, "players": 2, "generators": 2, "discriminators": 2,
                  "generator": {"hidden": [16]}, "discriminator": {"hidden": [16]},
                  "train_steps": 200, "chunk_steps": 100, "cross_train_steps": 10, "batch_size": 32,
                  "match_samples": 128, "match_block": 2,
                  "variation": {"arch_rate": 0.5, "crossover_rate": 0.3, "meta_rate": 0.5}},
        "noise": {"size": 65536},
        "executor": {"kind": "local", "workers": 2},
    }


class Place:
    """A directory `evoarena run` runs in, with its own store, artifacts and noise table."""

    def __init__(self, root: Path):
        root.mkdir(parents=True)
        self.root, self.db = root, root / "evoarena.db"
        (root / "arena.yaml").write_text(yaml.safe_dump(arena_spec(), sort_keys=False))
        self.env = {**os.environ, "EVOARENA_STORE": f"sqlite:///{self.db}", "EVOARENA_ARTIFACTS": str(root / "artifacts"),
                    "EVOARENA_NOISE_DIR": str(root / "noise"), "PYTHONUNBUFFERED": "1",
                    "EVOARENA_MASTER_HEARTBEAT_S": "0.5"}  # a killed master's lease is stale 3 s after its last beat
        self.command = [sys.executable, "-m", "evoarena", "run", "arena.yaml"]

    def run(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.command, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=300)

    def store(self) -> ResultStore:
        return open_store(f"sqlite:///{self.db}")


def outcome(store: ResultStore) -> list[dict]:
    """Each step's population (who, which genome, what fitness), its training figures and its
    encounter matrix: what the run decided, without the clock or which process ran what."""
    return [
        {"generation": d["generation"], "phase": d["phase"],
         "members": [(m["id"], m["genome"]["id"], m.get("fitness")) for m in d["members"]],
         "train": d.get("train"), "cross": d.get("cross"), "matrix": (d.get("matrix") or {}).get("values")}
        for d in store.list_generations(NAME)
    ]


def descendants(pid: int) -> set[int]:
    """The live processes below `pid`: its children, theirs, and so on (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while we looked
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def mid_step(store: ResultStore) -> bool:
    """Whether some step from the second on has a result stored but is not complete: its other tasks run."""
    complete = store.last_generation(NAME)
    step = 0 if complete is None else complete + 1
    return step >= 1 and store.count_results(NAME, step) > 0


def test_kill_9_of_a_local_arena_run_leaves_no_process_and_the_rerun_ends_as_an_uninterrupted_one(tmp_path):
    uninterrupted = Place(tmp_path / "uninterrupted")
    done = uninterrupted.run()
    assert done.returncode == 0, done.stderr

    place = Place(tmp_path / "killed")
    with open(place.root / "out.txt", "w") as out:  # a file, not a pipe: a survivor would hold a pipe open
        master = subprocess.Popen(place.command, cwd=place.root, env=place.env, stdout=out, stderr=subprocess.STDOUT)
    store = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert master.poll() is None, f"the run ended before it could be killed:\n{(place.root / 'out.txt').read_text()}"
            if store is None and place.db.exists():
                store = place.store()
            if store is not None and mid_step(store):
                break
            time.sleep(0.005)
        else:
            pytest.fail("no step from the second on was under way within 180 s")
        processes = descendants(master.pid)
        master.kill()  # SIGKILL to the master alone: nothing tells its pool
        master.wait(timeout=30)
        killed = time.monotonic()
        stored_at_kill = store.count_results(NAME)

        while [p for p in processes if alive(p)] and time.monotonic() - killed < GONE_WITHIN_S:
            time.sleep(0.05)
        assert len(processes) >= 2  # the two pool processes (and multiprocessing's resource tracker)
        assert not [p for p in processes if alive(p)], f"still alive {GONE_WITHIN_S} s after the kill"
        time.sleep(1)
        assert store.count_results(NAME) == stored_at_kill  # nobody stored anything after the kill
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
        if store is not None:
            store.close()
    time.sleep(4)  # the killed master's lease is stale now (6 beats of 0.5 s)

    again = place.run()

    assert again.returncode == 0, again.stderr
    assert any(line.startswith(f"{NAME}: resuming at step ") for line in again.stdout.splitlines()), again.stdout
    with place.store() as killed_store, uninterrupted.store() as reference:
        assert outcome(killed_store) == outcome(reference)
        assert killed_store.get_experiment(NAME)["status"] == "complete"
