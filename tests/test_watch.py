"""`evoarena status NAME --watch`: a live view on a terminal, plain lines elsewhere, until the run ends.

The run goes on in a thread of this process, one generation at a time: each generation's tasks
wait behind a gate that the test opens only once the watcher, a real `evoarena` process, has shown
that generation waiting (its 7 tasks pending). So the watcher sees every step, however fast or slow
the machine is, and no assertion depends on timing.
"""

from __future__ import annotations

import collections
import io
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from evoarena.cli import main as cli
from evoarena import scheduler
from evoarena.evolve.ga import GA
from evoarena.worker.inline import InlineExecutor
from evoarena.store import open_store
from helpers import Lab, Poisoning, content_not_matching_id, sigint_default, tiny_spec

GENERATIONS = 3
TASKS = 7  # tiny.yaml: 7 founders, then 2 parents x 3 children + 1 elite


class Gated:
    """Runs a generation's tasks only once the test opens that generation's gate."""

    def __init__(self, inner):
        self.inner, self.gates = inner, collections.defaultdict(threading.Event)

    def map(self, op, tasks):
        generation = tasks[0]["generation"]
        if not self.gates[generation].wait(120):
            raise TimeoutError(f"the gate of generation {generation} was never opened")
        yield from self.inner.map(op, tasks)

    def close(self):
        self.inner.close()


class GatedRun:
    """tiny.yaml run in a thread, behind gates; registered before the thread starts."""

    def __init__(self, lab: Lab, name: str):
        self.spec, self.url = tiny_spec(name, generations=GENERATIONS), lab.url("main")
        self.store = open_store(self.url)
        scheduler.register(self.spec, self.store)
        self.executor = Gated(InlineExecutor(lab.config("main")))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            scheduler.run(self.spec, self.store, self.executor)
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def open(self, generation: int) -> None:
        self.executor.gates[generation].set()

    def finish(self) -> None:
        for generation in range(GENERATIONS):
            self.open(generation)  # whatever happened, let the thread end
        self.thread.join(120)
        self.executor.close()
        assert self.error is None, self.error

    def best(self, generation: int) -> float:
        return self.store.get_generation(self.spec.name, generation)["stats"]["best"]


class Output:
    """What a child process writes to a file descriptor (a pty's master side, or a pipe), as it comes."""

    def __init__(self, fd: int):
        self.fd, self.text = fd, ""

    def wait_for(self, pattern: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text):
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} in the watcher's output after {timeout}s:\n{self.text}")
            if not self._read(1.0):
                pytest.fail(f"the watcher's output ended without {pattern!r}:\n{self.text}")

    def read_to_end(self, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while self._read(1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"the watcher did not end within {timeout}s:\n{self.text}")
        return self.text

    def _read(self, wait: float) -> bool:
        """Read what is there (waiting up to `wait` s); False once the writer has closed its end."""
        ready, _, _ = select.select([self.fd], [], [], wait)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: every process holding the pty's other side has closed it
            return False
        self.text += chunk.decode(errors="replace")
        return bool(chunk)


def watcher(url: str, name: str, tty: bool) -> tuple[subprocess.Popen, Output]:
    """`evoarena status NAME --watch --every 0.1` in a child process, its output on a pty or a pipe."""
    command = [sys.executable, "-m", "evoarena", "status", name, "--watch", "--every", "0.1", "--store", url]
    if tty:
        master, slave = pty.openpty()
        proc = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, close_fds=True, preexec_fn=sigint_default)
        os.close(slave)
        return proc, Output(master)
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc, Output(proc.stdout.fileno())


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path)
    yield lab
    lab.close()


def test_on_a_terminal_the_table_is_redrawn_at_each_step_and_ends_with_the_complete_state(lab):
    run = GatedRun(lab, "tiny-tty")
    proc, out = watcher(run.url, run.spec.name, tty=True)
    try:
        for generation in range(GENERATIONS):
            # the live table's row of a generation whose tasks all wait behind the gate
            out.wait_for(rf"generation {generation + 1}/{GENERATIONS} +0 +{TASKS} +0 ")
            run.open(generation)
        text = out.read_to_end()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(out.fd)
        run.finish()

    assert text.count("\x1b[J") >= GENERATIONS + 1  # drawn in place again and again
    for done in range(GENERATIONS + 1):
        assert f"generations {done}/{GENERATIONS} complete" in text
    last_drawing = text.rsplit("\x1b[J", 1)[1].splitlines()
    header = next(i for i, line in enumerate(last_drawing) if line.split()[:2] == ["step", "done"])
    assert last_drawing[header + 1].split() == [
        "generation", f"{GENERATIONS}/{GENERATIONS}", str(TASKS), "0", "0", f"{run.best(GENERATIONS - 1):.6g}", "0s"]
    assert [line for line in last_drawing if line.strip()][-1].strip() == "tiny-tty: complete"


def test_off_a_terminal_it_prints_plain_lines_one_per_change_and_ends_with_the_complete_state(lab):
    run = GatedRun(lab, "tiny-plain")
    proc, out = watcher(run.url, run.spec.name, tty=False)
    try:
        for generation in range(GENERATIONS):
            out.wait_for(rf"generation {generation + 1}/{GENERATIONS}  done 0  pending {TASKS}  failed 0")
            run.open(generation)
        text = out.read_to_end()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        run.finish()

    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("experiment  tiny-plain  (running, updated ")
    assert sum(line.startswith("experiment  ") for line in lines) == 1  # the status view, once
    assert lines[-1] == "tiny-plain: complete"
    live = [line for line in lines if line.startswith("generation ")]
    assert all(a != b for a, b in zip(live, live[1:]))  # a line only when something changed
    assert live[0] == f"generation 1/{GENERATIONS}  done 0  pending {TASKS}  failed 0  best -  eta estimating"
    for generation in range(1, GENERATIONS):  # each waiting generation shows the best of the one before
        assert re.fullmatch(rf"generation {generation + 1}/{GENERATIONS}  done 0  pending {TASKS}  failed 0  "
                            rf"best {re.escape(f'{run.best(generation - 1):.6g}')}  eta \d+s",
                            next(line for line in live if line.startswith(f"generation {generation + 1}/")))
    assert live[-1] == (f"generation {GENERATIONS}/{GENERATIONS}  done {TASKS}  pending 0  failed 0  "
                        f"best {run.best(GENERATIONS - 1):.6g}  eta 0s")


def test_ctrl_c_stops_the_watch_with_exit_code_130(lab):
    spec = tiny_spec("tiny-idle", generations=GENERATIONS)
    scheduler.register(spec, lab.store())  # running, and nothing comes: only Ctrl-C ends the watch
    proc, out = watcher(lab.url("main"), spec.name, tty=True)
    try:
        out.wait_for(rf"generation 1/{GENERATIONS} +0 +{TASKS} +0 ")
        proc.send_signal(signal.SIGINT)
        text = out.read_to_end()
        assert proc.wait(60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(out.fd)
    assert "Traceback" not in text


def test_the_watch_of_a_failed_run_ends_with_its_reason_and_exit_code_1(lab, capsys):
    failing = tiny_spec("broken", generations=2, on_error="stop")
    victim = GA(failing).plan(0, None).tasks[2]["genome"]["id"]
    with pytest.raises(RuntimeError):
        lab.run(failing, wrap=lambda executor: Poisoning(executor, victim, content_not_matching_id))

    assert cli.main(["status", "broken", "--watch", "--every", "0.1", "--store", lab.url("main")]) == 1

    lines = capsys.readouterr().out.splitlines()
    assert "generation 1/2  done 6  pending 0  failed 1  best -  eta -" in lines
    assert lines[-1] == f"broken: failed: {lab.store().get_experiment('broken')['reason']}"


def test_watch_every_zero_seconds_exits_2_with_one_line(lab, capsys):
    scheduler.register(tiny_spec("tiny-idle", generations=8), lab.store())

    assert cli.main(["status", "tiny-idle", "--watch", "--every", "0", "--store", lab.url("main")]) == 2

    assert capsys.readouterr().err.splitlines() == ["error: --every = 0.0: must be a number of seconds greater than 0"]


def test_watch_in_a_string_stream_prints_the_status_view_then_the_live_line(lab):
    from evoarena.cli.watch import watch

    lab.run(tiny_spec("tiny-done", generations=1))
    stream = io.StringIO()

    assert watch(lab.store(), "tiny-done", 0.1, stream) == 0

    lines = stream.getvalue().splitlines()
    assert lines[1:2] == ["generations 1/1 complete"]
    best = lab.store().get_generation("tiny-done", 0)["stats"]["best"]
    assert lines[-2:] == [f"generation 1/1  done {TASKS}  pending 0  failed 0  best {best:.6g}  eta 0s",
                          "tiny-done: complete"]
