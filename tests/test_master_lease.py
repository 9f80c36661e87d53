"""The master's lease: one master at a time runs an experiment (lease.py, issue 20 part 5).

The first half holds leases in this process on a SQLite file; the second runs real `evoarena run`
processes on one SQLite file, side by side, killed, and one after the other.
"""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from evoarena import scheduler
from evoarena.heartbeat import silence
from evoarena.lease import ExperimentBusy, MasterLease
from evoarena.store import ResultStore, open_store
from helpers import evolution, tiny_spec, tiny_yaml

HOST, PID = socket.gethostname(), os.getpid()
PROBE = {"id": "probe", "host": "probe-host", "pid": 1}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResultStore]:
    with open_store(f"sqlite:///{tmp_path / 'results.db'}") as s:
        yield s


def wait_until(condition, what: str, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    pytest.fail(f"no {what} within {seconds} s")


# --- in this process --------------------------------------------------------------------------


def test_a_second_master_is_refused_with_one_line_naming_the_first(store):
    with MasterLease(store, "exp", every=5.0):
        with pytest.raises(ExperimentBusy) as refused:
            MasterLease(store, "exp", every=5.0).__enter__()
    assert re.fullmatch(
        rf"experiment 'exp' is being run by the master on {re.escape(HOST)} \(pid {PID}\), last heartbeat \d+ s ago; "
        r"wait for it to finish, or stop it \(a master whose heartbeat is over 30 s old is taken over\)",
        str(refused.value))


def test_a_refused_master_writes_nothing(store):
    store.put_experiment("exp", {"status": "complete", "updated": 1.0})
    store.take_lease("exp", PROBE, stale_s=30.0, now=time.time())
    with pytest.raises(ExperimentBusy, match="probe-host"):
        MasterLease(store, "exp", every=5.0).__enter__()
    assert store.get_experiment("exp") == {"_id": "exp", "status": "complete", "updated": 1.0}
    assert store.take_lease("exp", {**PROBE, "id": "other"}, stale_s=30.0, now=time.time())["id"] == "probe"


def test_the_lease_is_released_when_its_block_ends(store):
    with MasterLease(store, "exp", every=5.0):
        pass
    with MasterLease(store, "exp", every=5.0) as again:
        assert store.take_lease("exp", PROBE, stale_s=30.0, now=time.time())["id"] == again.holder["id"]


def test_the_lease_is_released_when_its_block_is_interrupted(store):
    with pytest.raises(KeyboardInterrupt):
        with MasterLease(store, "exp", every=5.0):
            raise KeyboardInterrupt
    assert store.take_lease("exp", PROBE, stale_s=30.0, now=time.time()) is None


def test_a_stale_lease_is_taken_over(store):
    store.take_lease("exp", {**PROBE, "heartbeat_s": 0.5}, stale_s=3.0, now=time.time() - 10.0)
    with MasterLease(store, "exp", every=0.5) as taken:
        held = store.take_lease("exp", PROBE, stale_s=math.inf, now=time.time())
        assert (held["id"], held["host"], held["pid"]) == (taken.holder["id"], HOST, PID)


def test_a_fast_beating_master_waits_for_the_slow_beating_holders_own_stale_time(store):
    # 10 s without a beat is stale for a master beating every 0.5 s, not for one beating every 60 s
    store.take_lease("exp", {**PROBE, "heartbeat_s": 60.0}, stale_s=360.0, now=time.time() - 10.0)
    with pytest.raises(ExperimentBusy, match=r"on probe-host \(pid 1\), last heartbeat 10 s ago; .* over 360 s old"):
        MasterLease(store, "exp", every=0.5).__enter__()


def test_a_master_whose_lease_was_taken_over_learns_it_and_keeps_the_new_holders_lease(store):
    lease = MasterLease(store, "exp", every=0.05)
    with lease:
        # another master, whose clock says our last beat is long past, takes it over
        assert store.take_lease("exp", PROBE, stale_s=1.0, now=time.time() + 60.0) is None
        wait_until(lambda: lease.heartbeat.lost, "lost lease noticed by the heartbeat")
        with pytest.raises(ExperimentBusy, match="'exp' was taken over by another master"):
            lease.check()
    assert store.take_lease("exp", {**PROBE, "id": "third"}, stale_s=30.0, now=time.time())["id"] == "probe"


def test_scheduler_run_refused_by_a_live_lease_writes_nothing(store):
    store.take_lease("exp", PROBE, stale_s=30.0, now=time.time())
    with pytest.raises(ExperimentBusy, match="probe-host"):
        scheduler.run(tiny_spec("exp", generations=2), store, executor=None)  # refused before any task
    assert store.get_experiment("exp") is None
    assert store.list_generations("exp") == []


class Interrupting:
    """An executor that stops the run like Ctrl-C as soon as a task is sent."""

    def map(self, op: str, tasks: list[dict]) -> Iterator[dict]:
        raise KeyboardInterrupt
        yield  # a generator, as executors are

    def close(self) -> None:
        pass


def test_scheduler_run_releases_the_lease_when_interrupted(store):
    with pytest.raises(KeyboardInterrupt):
        scheduler.run(tiny_spec("exp", generations=2), store, Interrupting())
    assert store.get_experiment("exp")["status"] == "running"  # it did start
    assert store.take_lease("exp", PROBE, stale_s=30.0, now=time.time()) is None


# --- real masters on one SQLite file ----------------------------------------------------------

GENERATIONS = 60  # long enough (tens of seconds) to still be running when a second master starts
ONE_LINE = (r"error: experiment 'lease' is being run by the master on {host} \(pid {pid}\), last heartbeat \d+ s ago; "
            r"wait for it to finish, or stop it \(a master whose heartbeat is over {stale} s old is taken over\)")


class Place:
    """A directory with an experiment file, a store, and the environment `evoarena run` gets there."""

    def __init__(self, root: Path, name: str = "lease", generations: int = GENERATIONS):
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.url = root, f"sqlite:///{root / 'evoarena.db'}"
        self.spec = root / f"{name}.yaml"
        self.spec.write_text(yaml.safe_dump(tiny_yaml(name=name, ga={"generations": generations}), sort_keys=False))
        self.env = {k: v for k, v in os.environ.items() if k != "EVOARENA_MASTER_HEARTBEAT_S"}
        self.env |= {"EVOARENA_NOISE_DIR": str(root / "noise"), "EVOARENA_ARTIFACTS": str(root / "artifacts"),
                     "EVOARENA_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}

    def command(self, heartbeat_s: float | None) -> tuple[list[str], dict[str, str]]:
        env = self.env if heartbeat_s is None else {**self.env, "EVOARENA_MASTER_HEARTBEAT_S": str(heartbeat_s)}
        return [sys.executable, "-m", "evoarena", "run", str(self.spec), "--inline", "--store", self.url], env

    def run(self, heartbeat_s: float | None = None) -> subprocess.CompletedProcess:
        command, env = self.command(heartbeat_s)
        return subprocess.run(command, cwd=self.root, env=env, capture_output=True, text=True, timeout=300)

    def start(self, heartbeat_s: float | None = None) -> subprocess.Popen:
        command, env = self.command(heartbeat_s)
        return subprocess.Popen(command, cwd=self.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)

    def store(self) -> ResultStore:
        return open_store(self.url)


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ResultStore]:
    """The experiment run to its end by one master alone."""
    place = Place(tmp_path_factory.mktemp("solo"))
    done = place.run()
    assert done.returncode == 0, done.stderr
    with place.store() as store:
        yield store


def generations_stored(store: ResultStore) -> int:
    last = store.last_generation("lease")
    return 0 if last is None else last + 1


def without_heartbeat(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in ("heartbeat", "heartbeat_s")}


@pytest.mark.slow
def test_a_second_master_exits_2_naming_the_first_which_completes_as_a_solo_run(tmp_path, solo):
    place = Place(tmp_path)
    first = place.start()
    try:
        with place.store() as store:
            wait_until(lambda: generations_stored(store) >= 1 or first.poll() is not None, "first generation", 120)
            assert first.poll() is None, first.communicate()
            before = store.get_experiment("lease")

            second = place.run()

            after = store.get_experiment("lease")
            assert first.poll() is None, "the first master ended before the second was refused; lengthen the run"
            assert second.returncode == 2, (second.stdout, second.stderr)
            (line,) = second.stderr.splitlines()
            assert re.fullmatch(ONE_LINE.format(host=re.escape(HOST), pid=first.pid, stale=30), line)
            assert second.stdout == ""
            assert without_heartbeat(after) == without_heartbeat(before)  # the refused master wrote nothing

            out, err = first.communicate(timeout=300)
            assert first.returncode == 0, err
            assert generations_stored(store) == GENERATIONS
            assert evolution(store, "lease") == evolution(solo, "lease")
            assert store.count_results("lease") == solo.count_results("lease")
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.communicate()


@pytest.mark.slow
def test_a_lease_left_by_a_master_killed_with_sigkill_is_taken_over_once_stale_and_the_run_completes(tmp_path, solo):
    place = Place(tmp_path)
    killed = place.start(heartbeat_s=0.5)
    try:
        with place.store() as store:
            wait_until(lambda: generations_stored(store) >= 2 or killed.poll() is not None, "two generations", 120)
            os.killpg(killed.pid, signal.SIGKILL)
            killed.communicate(timeout=60)
            complete = generations_stored(store)
            assert complete < GENERATIONS, "the master finished before it could be killed"
            left = store.take_lease("lease", PROBE, math.inf, time.time())
            assert left["pid"] == killed.pid  # left behind
            # as if that master had run on another node, whence this one cannot see that its process is gone
            # (on this host a dead pid's lease is taken over at once: test_a_lease_whose_master_process_is_gone...)
            elsewhere = {"id": left["id"], "host": "node-b", "pid": left["pid"], "heartbeat_s": left["heartbeat_s"]}
            assert store.take_lease("lease", elsewhere, 0.0, left["beat"]) is None

            # a master beating every 60 s counts 360 s of silence as stale: it is refused
            refused = place.run(heartbeat_s=60)
            assert refused.returncode == 2
            assert re.fullmatch(ONE_LINE.format(host="node-b", pid=killed.pid, stale=360), refused.stderr.strip())

            wait_until(lambda: silence(store.get_experiment("lease")), "stale heartbeat (3 s at 0.5 s)", 60)
            taker = place.run(heartbeat_s=0.5)
            assert taker.returncode == 0, taker.stderr
            assert f"resumed at generation {complete + 1}" in taker.stdout.splitlines()
            assert evolution(store, "lease") == evolution(solo, "lease")
    finally:
        if killed.poll() is None:
            os.killpg(killed.pid, signal.SIGKILL)
            killed.communicate()


@pytest.mark.slow
def test_a_master_releases_the_lease_at_exit_so_the_next_run_continues_at_once(tmp_path):
    first = Place(tmp_path, "released", generations=3).run(heartbeat_s=60)  # a lease left would hold 360 s
    assert first.returncode == 0, first.stderr

    longer = Place(tmp_path, "released", generations=5)
    again = longer.run(heartbeat_s=60)

    assert again.returncode == 0, again.stderr
    assert "resumed at generation 4" in again.stdout.splitlines()
    with longer.store() as store:
        assert [g["generation"] for g in store.list_generations("released")] == [0, 1, 2, 3, 4]
        assert store.get_experiment("released")["status"] == "complete"


def test_a_lease_whose_master_process_is_gone_on_this_host_is_taken_over_at_once(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that existed and is no more (as after kill -9 of a master)
    with MasterLease(store, "x", every=60.0) as first:
        pass
    first.holder["pid"] = gone.pid
    assert store.take_lease("x", first.holder, 1e9, time.time()) is None  # a fresh lease, held by the dead pid

    with MasterLease(store, "x", every=60.0) as second:  # its beat is fresh: only the dead pid lets this in
        assert second.holder["pid"] == os.getpid()
    store.close()


def test_a_lease_of_a_live_process_on_this_host_is_not_taken_over_before_it_is_stale(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = {"id": "other", "host": socket.gethostname(), "pid": alive.pid, "heartbeat_s": 60.0,
                  "pidns": os.stat("/proc/self/ns/pid").st_ino}
        assert store.take_lease("x", holder, 1e9, time.time()) is None
        with pytest.raises(ExperimentBusy, match=f"pid {alive.pid}"):
            MasterLease(store, "x", every=60.0).__enter__()
    finally:
        alive.kill()
        alive.wait()
        store.close()
