"""`evoarena list`: every experiment of a store, one row each, from the store alone; a running experiment
whose master stopped beating reads stale."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from evoarena.cli import main as cli
from evoarena.evolve.ga import GA
from evoarena.heartbeat import Heartbeat
from evoarena.cli.status import state_text
from evoarena.store import open_store
from helpers import Lab, Poisoning, StopAfter, tiny_spec, tiny_yaml


def unreadable(genome: dict) -> None:
    genome["init_seed"] = "seven"  # a genome the master made wrong: its own error, not the infrastructure's


@pytest.fixture
def three(tmp_path):
    """One store with a complete run, a failed one and one still running (stopped like Ctrl-C)."""
    lab = Lab(tmp_path)
    lab.run(tiny_spec("done", generations=2))
    failing = tiny_spec("broken", generations=2, on_error="stop")
    victim = GA(failing).plan(0, None).tasks[2]["genome"]["id"]
    with pytest.raises(RuntimeError):
        lab.run(failing, wrap=lambda executor: Poisoning(executor, victim, unreadable, planned_in=lab.store()))
    with pytest.raises(KeyboardInterrupt):  # generation 0 (7 tasks) and 3 of generation 1
        lab.run(tiny_spec("going", generations=3), wrap=lambda executor: StopAfter(executor, 10))
    yield lab
    lab.close()


def columns(line: str) -> list[str]:
    """A printed row's cells (columns are at least two spaces apart; a cell holds single spaces)."""
    return re.split(r" {2,}", line.rstrip())


def local(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def test_list_prints_each_experiment_with_its_algorithm_steps_update_and_state(three, capsys):
    store = three.store()

    assert cli.main(["list", "--store", three.url("main")]) == 0

    rows = [columns(line) for line in capsys.readouterr().out.splitlines()]
    reason = store.get_experiment("broken")["reason"]
    assert reason.startswith("RuntimeError: generation 0: individual ")
    assert reason.endswith("stopping because ga.on_error = stop")
    assert rows == [
        ["experiment", "algorithm", "steps", "updated", "state"],
        ["broken", "ga", "0/2 generations", local(store.get_experiment("broken")["updated"]), f"failed: {reason}"],
        ["done", "ga", "2/2 generations", local(store.get_experiment("done")["updated"]), "complete"],
        ["going", "ga", "1/3 generations", local(store.get_experiment("going")["updated"]), "running"],
    ]


def test_list_aligns_the_columns(three, capsys):
    assert cli.main(["list", "--store", three.url("main")]) == 0

    lines = capsys.readouterr().out.splitlines()
    starts = [[m.start() for m in re.finditer(r"\S+(?: \S+)*", line)][:4] for line in lines]
    assert starts == [starts[0]] * 4  # every row's first four cells start where the header's do


def test_list_of_an_empty_store_says_so(tmp_path, capsys):
    assert cli.main(["list", "--store", f"sqlite:///{tmp_path / 'empty.db'}"]) == 0

    assert capsys.readouterr().out == "no experiments in the store\n"


# --- a run whose master is gone: the heartbeat ---------------------------------------------------


def experiment_doc(status: str, heartbeat: float, every: float = 5.0) -> dict:
    return {"status": status, "updated": heartbeat - 100.0, "heartbeat": heartbeat, "heartbeat_s": every}


def test_a_running_experiment_is_stale_only_after_six_missed_beats():
    doc = experiment_doc("running", heartbeat=1000.0, every=5.0)

    assert state_text(doc, now=1000.0 + 29.0) == "running"
    assert state_text(doc, now=1000.0 + 31.0) == "stale (no heartbeat for 31 s)"
    assert state_text(experiment_doc("running", 1000.0, every=0.5), now=1000.0 + 3.5) == "stale (no heartbeat for 4 s)"


def test_a_complete_or_failed_experiment_is_never_stale():
    assert state_text(experiment_doc("complete", heartbeat=0.0), now=1e9) == "complete"
    assert state_text({**experiment_doc("failed", heartbeat=0.0), "reason": "boom\nmore"}, now=1e9) == "failed: boom"


def test_a_document_without_heartbeat_counts_its_update_as_the_last_sign_of_life():
    assert state_text({"status": "running", "updated": 1000.0}, now=1010.0) == "running"
    assert state_text({"status": "running", "updated": 1000.0}, now=1100.0) == "stale (no heartbeat for 100 s)"


def test_a_run_leaves_its_heartbeat_and_interval_in_the_experiment_document(tmp_path):
    lab = Lab(tmp_path)
    before = time.time()
    lab.run(tiny_spec("beating", generations=1))

    doc = lab.store().get_experiment("beating")
    assert doc["status"] == "complete"
    assert doc["heartbeat_s"] == 5.0
    assert before <= doc["heartbeat"] <= time.time()
    lab.close()


def test_heartbeat_beats_until_its_block_ends_and_never_touches_the_status(tmp_path):
    with open_store(f"sqlite:///{tmp_path / 'results.db'}") as store:
        store.put_experiment("x", {"status": "running", "updated": 0.0})
        with Heartbeat(store, "x", every=0.05):
            first = store.get_experiment("x")["heartbeat"]
            store.put_experiment("x", {**store.get_experiment("x"), "status": "complete"})
            deadline = time.time() + 30
            while store.get_experiment("x")["heartbeat"] == first and time.time() < deadline:
                time.sleep(0.05)
        last = store.get_experiment("x")
        time.sleep(0.3)  # six intervals: a beat would have landed if the thread were still alive

        assert last["heartbeat"] > first  # it beat again inside the block
        assert last["status"] == "complete"  # and its beats left the status alone
        assert store.get_experiment("x") == last  # nothing after the block


def test_heartbeat_refuses_an_interval_that_is_not_positive(tmp_path):
    with open_store(f"sqlite:///{tmp_path / 'results.db'}") as store:
        with pytest.raises(ValueError, match=r"heartbeat interval \(EVOARENA_MASTER_HEARTBEAT_S\) = 0: must be"):
            Heartbeat(store, "x", every=0)


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, seconds: float = 180.0):
    """Poll `condition()` until it is truthy; fail naming `what` after `seconds`, or if `proc` exited."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if (value := condition()):
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the master exited ({proc.returncode}) before {what}: {proc.stderr.read()}")
        time.sleep(0.2)
    pytest.fail(f"no {what} within {seconds} s")


def list_state(url: str, name: str, capsys) -> str:
    assert cli.main(["list", "--store", url]) == 0
    rows = [columns(line) for line in capsys.readouterr().out.splitlines()]
    return next(row[-1] for row in rows if row[0] == name)


def test_a_master_killed_with_sigkill_shows_stale_and_a_live_one_running(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    spec = tiny_yaml(name="killed", ga={"generations": 100_000})
    (tmp_path / "killed.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, "EVOARENA_MASTER_HEARTBEAT_S": "0.5", "EVOARENA_NOISE_DIR": str(tmp_path / "noise"),
           "EVOARENA_ARTIFACTS": str(tmp_path / "artifacts"), "EVOARENA_LOG_LEVEL": "WARNING"}
    master = subprocess.Popen([sys.executable, "-m", "evoarena", "run", str(tmp_path / "killed.yaml"), "--inline",
                               "--store", url], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with open_store(url) as store:
            def beat():
                doc = store.get_experiment("killed")
                return doc and store.last_generation("killed") is not None and doc.get("heartbeat")

            first = wait_for(beat, "first complete generation", master)
            wait_for(lambda: beat() > first, "second heartbeat", master)  # it beats while it runs
            assert list_state(url, "killed", capsys) == "running"

            os.kill(master.pid, signal.SIGKILL)
            master.wait(timeout=60)
            last = store.get_experiment("killed")["heartbeat"]

            stale = wait_for(lambda: (s := list_state(url, "killed", capsys)) != "running" and s, "stale state",
                             seconds=120)
            assert store.get_experiment("killed")["status"] == "running"  # the document still says so
            assert store.get_experiment("killed")["heartbeat"] == last  # nobody beats any more
            silent = int(re.fullmatch(r"stale \(no heartbeat for (\d+) s\)", stale).group(1))
            assert silent >= 3  # six missed beats of 0.5 s

            assert cli.main(["status", "killed", "--store", url]) == 0
            assert "(stale (no heartbeat for " in capsys.readouterr().out.splitlines()[0]
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
