"""`evoarena` as a user runs it: real processes, real signals, a real SQLite file in tmp_path."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from evoarena.store import ResultStore
from helpers import Place, evolution

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "experiments" / "tiny.yaml"
RESUME_HINT = "interrupted: run the same command again to continue from the last complete generation"
PROGRESS = re.compile(
    r"^gen\s+(?P<gen>\d+)/(?P<of>\d+)\s+best\s+(?P<best>-?\d+\.\d+)\s+mean\s+(?P<mean>-?\d+\.\d+)\s+"
    r"evals/s\s+(?P<evals>\d+\.\d)\s+cache hits\s+(?P<hits>\d+\.\d)%$"
)


@pytest.fixture
def place(tmp_path: Path) -> Place:
    return Place(tmp_path)


# --- bad input --------------------------------------------------------------------------------

BAD_FILES = {
    "negative sigma": ("name: bad\nga:\n  generations: 5\n  mutation: {sigma: -1}\n",
                       "ga.mutation.sigma = -1: must be greater than 0"),
    "unknown executor": ("name: bad\nga: {generations: 5}\nexecutor: {kind: slurm}\n",
                         "executor.kind = 'slurm': must be one of 'local' or 'celery'"),
}


@pytest.mark.parametrize(("text", "message"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_experiment_file_exits_2_with_one_error_line_and_creates_nothing(place, text, message):
    bad = place.root / "bad.yaml"
    bad.write_text(text)

    done = place.run("run", bad)

    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: {bad}: {message}")
    assert done.stdout == ""
    assert not place.db.exists()
    assert sorted(p.name for p in place.root.iterdir()) == ["bad.yaml"]


def test_a_binary_experiment_file_exits_2_with_one_line_not_a_traceback(place):
    bad = place.root / "picture.yaml"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")

    done = place.run("run", bad)

    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: {bad}: not a UTF-8 text file (byte 0: 0x89); an experiment file is YAML text"]
    assert not place.db.exists()


# --- a run and its status ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Place, subprocess.CompletedProcess]:
    """experiments/tiny.yaml, run to the end as shipped."""
    place = Place(tmp_path_factory.mktemp("tiny"))
    return place, place.run("run", TINY)


@pytest.mark.slow
def test_run_prints_one_progress_line_per_generation_and_exits_0(finished_tiny):
    place, done = finished_tiny

    assert done.returncode == 0, done.stderr
    lines = [m for line in done.stdout.splitlines() if (m := PROGRESS.match(line))]
    assert [(int(m["gen"]), int(m["of"])) for m in lines] == [(g, 5) for g in range(1, 6)]
    with place.store() as store:
        stored = [g["stats"][k] for g in store.list_generations("tiny") for k in ("best", "mean")]
    printed = [float(m[k]) for m in lines for k in ("best", "mean")]
    assert printed == pytest.approx(stored, abs=5e-6)  # the store's figures, to the 5 decimals shown
    assert float(lines[-1]["hits"]) > 0  # children are built from their cached parents
    assert done.stdout.splitlines()[-1].startswith("tiny: done; best fitness ")


@pytest.mark.slow
def test_status_of_a_finished_run_says_every_generation_is_complete(finished_tiny):
    place, _ = finished_tiny

    status = place.run("status", "tiny")

    assert status.returncode == 0, status.stderr
    assert "generations 5/5 complete" in status.stdout.splitlines()
    assert "experiment  tiny  (complete, updated " in status.stdout
    assert "results     35 stored" in status.stdout.splitlines()


@pytest.mark.slow
def test_status_of_an_unknown_experiment_exits_2_and_names_the_known_ones(finished_tiny):
    place, _ = finished_tiny

    status = place.run("status", "nope")

    assert status.returncode == 2
    assert status.stderr.splitlines() == ["error: no experiment 'nope' in the store; known: tiny"]
    assert status.stdout == ""


# --- stopping a run and starting it again -----------------------------------------------------

LONG = 40  # generations: several seconds of work, so a run can be caught in the middle
WORKERS = 2


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ResultStore]:
    """The long spec under the name `reference`, run once without interruption."""
    place = Place(tmp_path_factory.mktemp("reference"))
    done = place.run("run", place.spec_file("reference", LONG, WORKERS), timeout=300)
    assert done.returncode == 0, done.stderr
    with place.store() as store:
        yield store


def wait_for_generations(place: Place, name: str, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Return once the store holds at least `n` generation docs of `name`."""
    deadline, store = time.monotonic() + timeout, None
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the run ended before it could be stopped:\n{proc.communicate()}"
            if store is None and place.db.exists():
                store = place.store()
            if store is not None and (last := store.last_generation(name)) is not None and last + 1 >= n:
                return
            time.sleep(0.02)
        pytest.fail(f"no {n} generations of {name!r} after {timeout}s")
    finally:
        if store is not None:
            store.close()


def stop(place: Place, name: str, sig: signal.Signals) -> tuple[subprocess.Popen, str, str, int]:
    """Start the long run of `name`, send `sig` to its process group after 3 generations, wait for it
    to end; return the process, its output, and how many generations were complete."""
    spec = place.spec_file(name, LONG, WORKERS)
    proc = place.start("run", spec)
    try:
        wait_for_generations(place, name, 3, proc)
        os.killpg(proc.pid, sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    with place.store() as store:
        complete = store.last_generation(name) + 1
    assert 3 <= complete < LONG, "the signal came too late to interrupt anything"
    return proc, out, err, complete


def children(pid: int) -> set[int]:
    """The live processes whose parent is `pid` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_kill_9_of_the_master_alone_leaves_no_pool_process_behind(place):
    spec = place.spec_file("orphans", LONG, WORKERS)
    proc = place.start("run", spec)
    try:
        wait_for_generations(place, "orphans", 2, proc)
        pool = children(proc.pid)
        assert len(pool) >= WORKERS  # the worker processes (and multiprocessing's resource tracker)
        proc.kill()  # SIGKILL to the master only, not its process group: nothing tells the pool
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while any(alive(p) for p in pool) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in pool if alive(p)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def assert_resumed_to_the_reference(place: Place, name: str, complete: int, reference: ResultStore) -> None:
    again = place.run("run", place.root / f"{name}.yaml", timeout=300)

    assert again.returncode == 0, again.stderr
    assert f"resumed at generation {complete + 1}" in again.stdout.splitlines()
    with place.store() as store:
        assert [g["generation"] for g in store.list_generations(name)] == list(range(LONG))
        counts = [store.count_results(name, g, "evaluate") for g in range(LONG)]
        assert counts == [7] * LONG  # tiny: 2 parents x 3 children + 1 elite, and 7 founders
        ids = [r["_id"] for r in store.find_results(name)]
        assert len(ids) == len(set(ids)) == 7 * LONG
        final = store.get_generation(name, LONG - 1)["best"]["fitness"]
        assert final == reference.get_generation("reference", LONG - 1)["best"]["fitness"]
        assert evolution(store, name) == evolution(reference, "reference")


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(place, reference):
    proc, _, _, complete = stop(place, "killed", signal.SIGKILL)

    assert proc.returncode == -signal.SIGKILL
    # at once: the killed master's lease is taken over, its process being gone from this host (lease.py)

    assert_resumed_to_the_reference(place, "killed", complete, reference)


@pytest.mark.slow
def test_ctrl_c_exits_130_asking_to_run_again_and_the_run_resumes(place, reference):
    proc, out, err, complete = stop(place, "interrupted", signal.SIGINT)

    assert proc.returncode == 130
    assert err.rstrip("\n").splitlines()[-1] == RESUME_HINT
    assert "Traceback" not in err  # the pool workers ignore SIGINT; only the scheduler reports it

    assert_resumed_to_the_reference(place, "interrupted", complete, reference)


# --- the gradient baseline --------------------------------------------------------------------

EPOCH = re.compile(r"^epoch\s+(?P<epoch>\d+)\s+train loss (?P<loss>\d\.\d{3}e[+-]\d+)\s+train acc")


def test_baseline_of_a_problem_without_a_gradient_baseline_is_refused_in_one_line(place):
    done = place.run("baseline", str(ROOT / "experiments" / "atari-pong.yaml"))

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: problem.kind = 'atari': `baseline` trains the network of a memorize problem with Adam; "
        "this one has no gradient baseline"]
    assert not place.db.exists()  # nothing stored


@pytest.mark.slow
def test_baseline_prints_one_line_per_epoch_the_training_loss_falls_and_the_store_keeps_it(place):
    done = place.run("baseline", TINY, "--epochs", "3")

    assert done.returncode == 0, done.stderr
    epochs = [m for line in done.stdout.splitlines() if (m := EPOCH.match(line))]
    assert [int(m["epoch"]) for m in epochs] == [1, 2, 3]
    losses = [float(m["loss"]) for m in epochs]
    assert losses[0] > losses[1] > losses[2]
    with place.store() as store:  # recorded under the experiment, for `evoarena report`
        stored = store.get_baseline("tiny", "adam")["history"]
    assert [f"{r['train_loss']:.3e}" for r in stored] == [m["loss"] for m in epochs]
