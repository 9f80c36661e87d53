"""`evoarena list`: every experiment of a store, one row each, from the store alone."""

from __future__ import annotations

import re
import time

import pytest

from evoarena import cli
from evoarena.evolve.ga import GA
from test_scheduler import InterruptAfter, Lab, Poisoning, content_not_matching_id, tiny


@pytest.fixture
def three(tmp_path):
    """One store with a complete run, a failed one and one still running (stopped like Ctrl-C)."""
    lab = Lab(tmp_path)
    lab.run(tiny("done", generations=2))
    failing = tiny("broken", generations=2, on_error="stop")
    victim = GA(failing).plan(0, None).tasks[2]["genome"]["id"]
    with pytest.raises(RuntimeError):
        lab.run(failing, wrap=lambda executor: Poisoning(executor, victim, content_not_matching_id))
    with pytest.raises(KeyboardInterrupt):  # generation 0 (7 tasks) and 3 of generation 1
        lab.run(tiny("going", generations=3), wrap=lambda executor: InterruptAfter(executor, 10))
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
