"""evoarena from Python (api.py): evoarena.run and evoarena.open, and what a Run gives back."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import tiny_arena, tiny_ga

import evoarena
from evoarena.problems import memorize
from evoarena.spec import parse_spec
from evoarena.store import open_store


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A store, artifacts and noise table of this test, as the environment names them."""
    monkeypatch.setenv("EVOARENA_STORE", f"sqlite:///{tmp_path / 'runs.db'}")
    monkeypatch.setenv("EVOARENA_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("EVOARENA_NOISE_DIR", str(tmp_path / "noise"))
    return tmp_path


def test_run_from_a_dict_stores_every_step_and_returns_them_as_plain_records(place):
    out = io.StringIO()
    run = evoarena.run(tiny_ga("api-ga", generations=3), executor="inline", out=out, progress="line")

    with open_store(f"sqlite:///{place / 'runs.db'}") as store:
        stored = store.list_generations("api-ga")
        assert store.get_experiment("api-ga")["status"] == "complete"
    steps = run.steps()
    assert [s["step"] for s in steps] == [0, 1, 2]
    assert [s["best"] for s in steps] == [doc["stats"]["best"] for doc in stored]
    assert [s["mean"] for s in steps] == [doc["stats"]["mean"] for doc in stored]
    assert run.status() == "complete"
    assert run.final["best"]["fitness"] == stored[-1]["best"]["fitness"]
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("api-ga: 3 generations of 7 on this process; store sqlite:///")
    assert lines[-1].split()[:2] == ["gen", "3/3"]


def test_the_command_line_and_the_api_store_the_same_bits(place, tmp_path):
    from evoarena.cli.main import main

    spec = tiny_ga("api-same", generations=2)
    evoarena.run(spec, executor="inline", out=None)
    other = f"sqlite:///{tmp_path / 'cli.db'}"
    spec_file = tmp_path / "same.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    assert main(["run", str(spec_file), "--inline", "--store", other]) == 0

    def fitnesses(url: str) -> list[tuple[str, float]]:
        with open_store(url) as store:
            return sorted((d["genome_id"], d["fitness"]) for d in store.find_results("api-same"))

    assert fitnesses(f"sqlite:///{place / 'runs.db'}") == fitnesses(other)


def test_a_complete_run_run_again_writes_nothing_and_opens_as_it_was(place):
    first = evoarena.run(tiny_ga("api-again", generations=2), executor="inline", out=None)
    out = io.StringIO()
    again = evoarena.run(tiny_ga("api-again", generations=2), executor="inline", out=out)

    assert out.getvalue() == ("api-again: already complete (2 generations of 7); "
                              "`evoarena status api-again` shows it\n")
    assert again.final is None
    assert again.steps() == first.steps() == evoarena.open("api-again").steps()


def test_the_best_network_is_a_torch_module_that_scores_the_stored_fitness(place):
    run = evoarena.run(tiny_ga("api-net", generations=2), executor="inline", out=None)
    best = run.best()
    net = run.network()
    assert isinstance(net, torch.nn.Module)

    # the fitness the worker stored (-cross-entropy over the training images), from the module alone
    problem = parse_spec(tiny_ga("api-net")).problem.model_dump(mode="json")
    data = memorize.make_data(problem)
    with torch.no_grad():
        loss = F.cross_entropy(net(data.train_x), data.train_y).item()
    assert best["fitness"] == pytest.approx(-loss, rel=1e-5, abs=1e-6)
    assert best["role"] == "network"


def test_a_bad_spec_raises_one_line_and_stores_nothing(place):
    bad = tiny_ga("api-bad")
    bad["ga"]["generations"] = 0
    with pytest.raises(evoarena.RunError) as refused:
        evoarena.run(bad, executor="inline", out=None)

    assert refused.value.code == 2
    assert "ga.generations" in str(refused.value) and "\n" not in str(refused.value)
    with open_store(f"sqlite:///{place / 'runs.db'}") as store:
        assert store.list_experiments() == []


def test_an_unknown_experiment_and_an_unknown_executor_are_refused(place):
    with pytest.raises(evoarena.RunError, match="no experiment 'nowhere' in the store"):
        evoarena.open("nowhere")
    with pytest.raises(evoarena.RunError, match="executor = 'cloud'"):
        evoarena.run(tiny_ga("api-cloud"), executor="cloud", out=None)


def test_an_arena_run_gives_its_mixture_and_its_best_generator(place):
    run = evoarena.run(tiny_arena(), executor="inline", out=None)

    mixture = run.generator()
    assert isinstance(mixture, evoarena.MixtureGenerator)
    assert mixture.sample(50, seed=1).shape == (50, 2)
    assert torch.equal(mixture.sample(50, seed=1), mixture.sample(50, seed=1))
    assert sum(mixture.weights) == pytest.approx(1.0)
    best = run.generator(mixture=False)
    z = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    assert best(z).shape == (7, 2)
    assert run.best()["role"] == "generator"


def test_importing_evoarena_loads_neither_torch_nor_the_api():
    code = "import sys, evoarena; print('torch' in sys.modules, 'evoarena.api' in sys.modules, callable(evoarena.run))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "False", "True"]


def test_the_readmes_python_example_runs_and_plots_the_best_fitness(tmp_path):
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    example = readme.split("## From Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "tiny.yaml").write_text((root / "experiments" / "tiny.yaml").read_text())
    env = {**os.environ, "EVOARENA_NOISE_DIR": str(tmp_path / "noise"),
           "EVOARENA_ARTIFACTS": str(tmp_path / "artifacts")}
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    status, genome_id, parameters = done.stdout.splitlines()[-1].split()
    assert status == "complete" and len(genome_id) > 8 and int(parameters) > 0
    assert (tmp_path / "tiny-best.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_steps_as_a_dataframe_hold_the_same_records(place):
    run = evoarena.run(tiny_ga("api-pandas", generations=2), executor="inline", out=None)
    frame = run.to_pandas()
    assert frame.to_dict("records") == run.steps()
    assert list(frame["step"]) == [0, 1]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_auto_draws_tqdms_bar_on_a_terminal_and_lines_into_a_file(place):
    out = Terminal()
    evoarena.run(tiny_ga("api-bar", generations=3), executor="inline", out=out, progress="auto")
    bar = out.getvalue().split("\r")[-1]  # tqdm rewrites its line; the last drawing is the finished bar
    assert "3/3" in bar and "100%" in bar

    out = io.StringIO()
    evoarena.run(tiny_ga("api-lines", generations=3), executor="inline", out=out, progress="auto")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and [line.split()[:2] for line in lines[1:]] == [["gen", f"{i}/3"] for i in (1, 2, 3)]
