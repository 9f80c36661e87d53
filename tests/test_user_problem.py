"""A problem of your own (spec/user_problem.py, problems/__init__.py): named by import path in the
experiment file, checked by its own model, run locally and on real Celery workers, and imported by a
worker only from the modules it trusts (EVOARENA_PROBLEM_MODULES)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import evoarena
from evoarena import scheduler
from evoarena.spec.experiment import SpecError, parse_spec
from evoarena.spec.user_problem import allowed

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cartpole"


def cartpole(name: str, generations: int = 5, **fields) -> dict:
    return {"name": name, "seed": 0,
            "problem": {"kind": "cartpole_problem:CartPole", "episodes": 2, "max_steps": 300, **fields},
            "network": {"convs": [], "hidden": [8]},
            "ga": {"generations": generations, "parents": 3, "children_per_parent": 4, "elites": 1,
                   "mutation": {"sigma": 0.1}},
            "noise": {"size": 65536}}


@pytest.fixture
def example(monkeypatch, tmp_path):
    """The example's package importable here (as `pip install ./examples/cartpole` makes it), and
    this test's store, artifacts and noise table."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.setenv("EVOARENA_STORE", f"sqlite:///{tmp_path / 'runs.db'}")
    monkeypatch.setenv("EVOARENA_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("EVOARENA_NOISE_DIR", str(tmp_path / "noise"))
    monkeypatch.delenv("EVOARENA_PROBLEM_MODULES", raising=False)
    from cartpole_problem import random_policy_return

    return random_policy_return(episodes=30, max_steps=300)


def test_a_module_prefix_trusts_its_package_and_nothing_that_only_starts_alike():
    assert allowed("mypkg.tasks:CartPole", ["mypkg"])
    assert allowed("mypkg:CartPole", ["mypkg"])
    assert not allowed("mypkgx.tasks:CartPole", ["mypkg"])
    assert not allowed("mypkg.tasks:CartPole", [])
    assert allowed("other.mod:X", ["mypkg", "other.mod"])


def test_the_file_names_the_problem_by_import_path_and_the_spec_keeps_its_fields(example):
    spec = parse_spec(cartpole("user-spec"))
    assert spec.problem.model_dump(mode="json") == {"kind": "user", "path": "cartpole_problem:CartPole",
                                                    "fields": {"episodes": 2, "max_steps": 300}}
    assert parse_spec({**cartpole("user-spec"), "problem": spec.problem.model_dump(mode="json")}) == spec


def test_a_typo_in_the_problems_own_fields_is_one_line_naming_it(example):
    with pytest.raises(SpecError) as refused:
        parse_spec(cartpole("user-typo", episodez=3))
    assert "episodez" in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(SpecError, match="cannot import 'no_such_package.tasks'"):
        parse_spec({**cartpole("user-missing"), "problem": {"kind": "no_such_package.tasks:Thing"}})


def test_the_ga_improves_on_a_random_policy_locally(example):
    run = evoarena.run(cartpole("user-local"), executor="inline", out=None)
    steps = run.steps()
    assert steps[-1]["best"] > 2 * example, (steps[-1]["best"], example)
    assert steps[-1]["best"] >= steps[0]["best"]


@pytest.mark.slow
def test_the_ga_runs_a_user_problem_on_two_real_celery_workers_that_trust_its_module(example, fleet):
    fleet.env["PYTHONPATH"] = f"{EXAMPLE}:{fleet.env.get('PYTHONPATH', '')}"
    fleet.env["EVOARENA_PROBLEM_MODULES"] = "cartpole_problem"
    fleet.start("alpha")
    fleet.start("beta")
    fleet.wait_ready()
    spec = parse_spec(cartpole("user-fleet"))

    final = scheduler.run(spec, fleet.store, fleet.executor())

    assert final["stats"]["best"] > 2 * example
    workers = {doc["node"] for doc in fleet.store.find_results("user-fleet")}
    assert len(workers) == 2


@pytest.mark.slow
def test_a_worker_that_does_not_trust_the_module_refuses_the_task_and_stores_nothing(example, fleet, caplog):
    fleet.env["PYTHONPATH"] = f"{EXAMPLE}:{fleet.env.get('PYTHONPATH', '')}"  # importable, but not trusted
    fleet.start("untrusting")
    fleet.wait_ready()
    spec = parse_spec(cartpole("user-refused"))
    scheduler.register(spec, fleet.store)
    task = scheduler.algorithm(spec).plan(0, None).tasks[0]
    scheduler.plan(fleet.store, "evaluate", [task])

    summary = fleet.app.send_task("evoarena.evaluate", args=(task,)).get(timeout=60)

    assert summary["error"].startswith("TaskRefused: ")
    assert "not in this worker's EVOARENA_PROBLEM_MODULES" in summary["error"]
    assert fleet.store.find_results("user-refused") == []
    logs = "".join(p.read_text() for p in fleet.logs.glob("untrusting-*.log"))
    assert "refused" in logs and "cartpole_problem:CartPole" in logs
