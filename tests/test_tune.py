"""The meta-parameter search (evolve/tune.py, trial.py, spec/tune.py): how a point becomes values,
how values become an arena, what a bad space is told, and tiny searches run end to end."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml

from evoarena import scheduler
from evoarena.evolve.tune import Tune, children, to_value, to_values
from evoarena.worker.inline import InlineExecutor
from evoarena.spec.experiment import SpecError, parse_spec
from evoarena.spec.arena import ArenaSpec
from evoarena.spec.tune import DerivedSpecError, ParameterSpec, derive
from evoarena.store import open_store
from evoarena.worker.trial import objective
from evoarena.worker.worker import Worker, WorkerConfig, run_on
from helpers import TUNE_BASE, StopAfter, tiny_tune


def param(**fields) -> ParameterSpec:
    return ParameterSpec(**{"path": "meta.lr", "low": 0.0, "high": 1.0, **fields})


# --- a point's values ------------------------------------------------------------------------------


def test_a_plain_value_is_low_plus_the_coordinate_times_the_range():
    p = param(path="fitness.rac_weight", low=-2.0, high=6.0)
    assert [to_value(p, u) for u in (0.0, 0.25, 0.5, 1.0)] == [-2.0, 0.0, 2.0, 6.0]


def test_a_log_value_is_uniform_in_its_logarithm_and_its_ends_are_exactly_low_and_high():
    p = param(low=1e-4, high=1e-2, log=True)
    assert to_value(p, 0.5) == pytest.approx(1e-3, rel=1e-12)  # the geometric middle
    assert to_value(p, 0.25) == pytest.approx(10 ** -3.5, rel=1e-12)
    assert (to_value(p, 0.0), to_value(p, 1.0)) == (1e-4, 1e-2)


def test_an_integer_value_is_rounded_to_the_nearest_whole_number_halves_up():
    p = param(path="train_steps", low=0, high=10, integer=True)
    assert [to_value(p, u) for u in (0.0, 0.24, 0.25, 0.26, 1.0)] == [0, 2, 3, 3, 10]
    assert all(isinstance(to_value(p, u), int) for u in (0.0, 0.25, 1.0))


def test_the_derived_arena_has_exactly_the_values_at_their_paths_and_the_base_elsewhere():
    base = ArenaSpec(**TUNE_BASE)
    derived = derive(base, {"meta.lr": 0.004, "fitness.rac_weight": 0.75, "train_steps": 17})
    assert (derived.meta.lr, derived.fitness.rac_weight, derived.train_steps) == (0.004, 0.75, 17)
    before, after = base.model_dump(), derived.model_dump()
    for section, key in (("meta", "lr"), ("fitness", "rac_weight")):
        before[section].pop(key), after[section].pop(key)
    before.pop("train_steps"), after.pop("train_steps")
    assert after == before


def test_a_value_the_arena_refuses_is_an_error_naming_its_path_and_value():
    with pytest.raises(DerivedSpecError, match=r"meta\.lr = 5\.0: Input should be less than or equal to 1"):
        derive(ArenaSpec(**TUNE_BASE), {"meta.lr": 5.0})


# --- a bad search space is refused when the file is read --------------------------------------------


@pytest.mark.parametrize(("change", "field", "reason"), [
    ({"path": "meta.lrr"}, "tune.space[0].path", "not a field of the arena section; meta has: optimizer, lr, loss"),
    ({"path": "meta.loss"}, "tune.space[0].path", "is not a number"),
    ({"low": 0.01, "high": 0.001}, "tune.space[0].high", "must be greater than low (0.01)"),
    ({"low": 0.0}, "tune.space[0].low", "must be greater than 0 with log: true"),
    ({"high": 2.0}, "tune.space[0].high", "the arena refuses it: meta.lr = 2.0: Input should be less than or equal to 1"),
])
def test_a_bad_parameter_is_a_spec_error_naming_its_field(change, field, reason):
    data = tiny_tune()
    data["tune"]["space"][0].update(change)
    with pytest.raises(SpecError) as error:
        parse_spec(data)
    assert error.value.field == field and reason in error.value.reason


def test_an_integer_field_searched_without_integer_true_is_refused():
    data = tiny_tune()
    data["tune"]["space"][2].pop("integer")
    with pytest.raises(SpecError) as error:
        parse_spec(data)
    assert error.value.field == "tune.space[2].integer" and "train_steps is an integer field" in error.value.reason


def test_a_path_searched_twice_is_refused():
    data = tiny_tune()
    data["tune"]["space"].append({"path": "meta.lr", "low": 0.001, "high": 0.01})
    with pytest.raises(SpecError, match=r"tune.space\[3\].path = 'meta.lr': is searched twice"):
        parse_spec(data)


def test_tune_on_digits_is_refused_since_its_objectives_count_modes():
    data = tiny_tune()
    data["problem"]["data"] = {"kind": "digits"}
    with pytest.raises(SpecError, match="problem.data.kind = 'digits': .*ring or grid"):
        parse_spec(data)


# what a trial scores: one generator's quality, hand-written (25 modes: 22 with a high-quality sample, 9 with 20)
QUALITY = {"modes_covered": 22, "modes_covered@20": 9, "modes": 25, "high_quality": 0.25, "reverse_kl": 0.5}


def test_modes_hq_counts_modes_at_twenty_high_quality_samples_plus_the_high_quality_share():
    assert objective("modes_hq", QUALITY) == 9.25


@pytest.mark.parametrize("kind, expected", [("modes_covered", 22.0), ("modes_covered@20", 9.0),
                                            ("high_quality", 0.25), ("reverse_kl", -0.5)])
def test_each_other_objective_is_its_quality_measure_higher_is_better(kind, expected):
    assert objective(kind, QUALITY) == expected


def test_a_tune_spec_accepts_the_objective_modes_covered_at_twenty():
    assert parse_spec(tiny_tune(objective="modes_covered@20")).tune.objective == "modes_covered@20"


# --- how the next points are chosen (no trial runs) ----------------------------------------------------


def fake_results(objectives):
    return [{"fitness": f, "error": None if f is not None else "RuntimeError: failed", "metrics": {}}
            for f in objectives]


def test_both_searches_start_from_the_same_points_and_every_trial_names_its_values():
    pso, ga = Tune(parse_spec(tiny_tune(search="pso"))), Tune(parse_spec(tiny_tune(search="ga")))
    a, b = pso.plan(0, None), ga.plan(0, None)
    assert [t["values"] for t in a.tasks] == [t["values"] for t in b.tasks]
    assert [t["key"] for t in a.tasks] == [["trial-0"], ["trial-1"]]
    assert all(set(t["values"]) == {"meta.lr", "fitness.rac_weight", "train_steps"} for t in a.tasks)


def test_the_ga_breeds_from_the_best_trials_so_far_and_carries_them_over():
    ga = Tune(parse_spec(tiny_tune(search="ga", population=3, parents=2)))
    step0 = ga.plan(0, None)
    state = ga.advance(0, None, step0, fake_results([0.5, None, 2.0]))
    assert [(p["step"], p["trial"]) for p in state["parents"]] == [(0, 2), (0, 0)]  # the failed one never breeds
    step1 = ga.plan(1, state)
    state1 = ga.advance(1, state, step1, fake_results([1.0, 0.1, 0.2]))
    assert [(p["step"], p["trial"]) for p in state1["parents"]] == [(0, 2), (1, 0)]  # the elite stays, not rerun
    assert len(state1["trials"]) == 6 and state1["best"]["objective"] == 2.0


def test_ga_children_stay_in_the_box_near_a_parent():
    parents = [[0.0, 1.0], [0.5, 0.5]]
    kids = children(parents, 200, 0.05, np.random.default_rng(0))
    assert kids.shape == (200, 2) and kids.min() >= 0.0 and kids.max() <= 1.0
    distance = np.min(np.abs(kids[:, None, :] - np.asarray(parents)[None]).max(axis=2), axis=1)
    assert distance.max() < 0.05 * 6


def test_a_failed_trial_never_becomes_a_particles_best():
    pso = Tune(parse_spec(tiny_tune(search="pso")))
    step0 = pso.plan(0, None)
    state = pso.advance(0, None, step0, fake_results([None, 1.5]))
    assert state["swarm"]["best_fitness"] == [None, 1.5]
    assert state["stats"]["errors"] == 1 and state["best"]["trial"] == 1


def test_planning_a_step_again_from_its_state_gives_the_same_trials():
    pso = Tune(parse_spec(tiny_tune(search="pso")))
    step0 = pso.plan(0, None)
    state = pso.advance(0, None, step0, fake_results([0.3, 0.7]))
    assert pso.plan(1, state).tasks == pso.plan(1, copy.deepcopy(state)).tasks
    assert pso.plan(1, state).tasks != step0.tasks  # the swarm moved


def test_a_point_the_arena_refuses_stops_the_plan_naming_the_path_and_value():
    spec = parse_spec(tiny_tune())  # a space the file check would refuse, forced past it
    forced = spec.model_copy(update={"tune": spec.tune.model_copy(update={"space": [param(low=2.0, high=4.0)]})})
    with pytest.raises(RuntimeError, match=r"step 0: trial 0: the arena refuses meta\.lr = [0-9.]+: Input should be less"):
        Tune(forced).plan(0, None)


# --- the trial task ------------------------------------------------------------------------------------------


def test_a_trial_with_a_value_the_arena_refuses_stores_an_error_naming_it_and_nothing_else(tmp_path):
    spec = parse_spec(tiny_tune())
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = open_store(url)
    scheduler.register(spec, store)
    task = {**Tune(spec).plan(0, None).tasks[0], "values": {"meta.lr": 5.0}}
    scheduler.plan(store, "trial", [task])  # as if the search itself had asked for the value
    summary = run_on(Worker(WorkerConfig(url, str(tmp_path / "art"), str(tmp_path / "noise"))), "trial", task)
    assert "meta.lr = 5.0" in summary["error"] and summary["fitness"] is None
    (doc,) = store.find_results(spec.name)
    assert doc.get("fitness") is None and "meta.lr = 5.0" in doc["error"] and "values" not in doc
    assert store.last_generation(spec.name) is None


def test_the_fleet_app_has_a_trial_task():
    from evoarena.fleet.app import TIME_LIMITS, app

    assert "evoarena.trial" in app.tasks and "trial" in TIME_LIMITS


# --- tiny searches, end to end ---------------------------------------------------------------------------------


def trials_of(store, name: str) -> list[tuple]:
    """(step, trial, values, objective) of every stored trial, in order."""
    docs = sorted(store.find_results(name), key=lambda d: (d["generation"], d["trial"]))
    return [(d["generation"], d["trial"], d["values"], d["fitness"]) for d in docs]


def cli_run(tmp_path, data: dict, *options: str) -> object:
    from evoarena.cli import main as cli

    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["run", str(path), "--store", f"sqlite:///{tmp_path / 'r.db'}", *options]) == 0
    return open_store(f"sqlite:///{tmp_path / 'r.db'}")


@pytest.fixture(scope="module")
def inline_runs(tmp_path_factory):
    """The tiny search with each search, through `evoarena run --inline`."""
    runs = {}
    with pytest.MonkeyPatch.context() as env:
        for search in ("pso", "ga"):
            tmp = tmp_path_factory.mktemp(search)
            env.setenv("EVOARENA_ARTIFACTS", str(tmp / "art"))
            env.setenv("EVOARENA_NOISE_DIR", str(tmp.parent / "noise"))
            runs[search] = cli_run(tmp, tiny_tune(search=search), "--inline")
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("search", ["pso", "ga"])
def test_a_tiny_search_stores_every_trial_with_its_values_and_objective(inline_runs, search):
    store = inline_runs[search]
    stored = trials_of(store, "tune-tiny")
    assert [(s, t) for s, t, _, _ in stored] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for _, _, values, objective in stored:
        assert 1e-3 <= values["meta.lr"] <= 3e-2 and 20 <= values["train_steps"] <= 80
        assert isinstance(values["train_steps"], int) and 0.0 <= objective <= 5.0  # 4 modes + a share
    assert len({o for *_, o in stored}) > 1  # the trials scored differently: a comparison of them means something
    final = store.get_generation("tune-tiny", 1)
    assert [(t["step"], t["trial"], t["values"], t["objective"]) for t in final["trials"]] == stored
    assert final["best"]["objective"] == max(o for *_, o in stored)


@pytest.mark.slow
@pytest.mark.parametrize("search", ["pso", "ga"])
def test_the_same_seed_on_a_local_pool_stores_the_same_values_and_objectives(inline_runs, tmp_path, search, monkeypatch):
    monkeypatch.setenv("EVOARENA_ARTIFACTS", str(tmp_path / "art"))
    monkeypatch.setenv("EVOARENA_NOISE_DIR", str(tmp_path / "noise"))
    store = cli_run(tmp_path, tiny_tune(search=search))  # executor.kind local, 2 worker processes
    assert trials_of(store, "tune-tiny") == trials_of(inline_runs[search], "tune-tiny")


@pytest.mark.slow
def test_an_interrupted_search_resumes_with_the_same_plan_and_runs_no_trial_twice(inline_runs, tmp_path):
    spec = parse_spec(tiny_tune(search="pso"))
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    config = WorkerConfig(f"sqlite:///{tmp_path / 'r.db'}", str(tmp_path / "art"), str(tmp_path / "noise"), threads=1)
    with pytest.raises(KeyboardInterrupt):
        scheduler.run(spec, store, StopAfter(InlineExecutor(config), 3))  # mid-way through step 1
    before = {d["_id"]: d["seconds"] for d in store.find_results(spec.name)}
    assert len(before) == 3 and store.last_generation(spec.name) == 0
    scheduler.run(spec, store, InlineExecutor(config))
    after = {d["_id"]: d["seconds"] for d in store.find_results(spec.name)}
    assert len(after) == 4 and {k: after[k] for k in before} == before  # not one was run again
    assert trials_of(store, spec.name) == trials_of(inline_runs["pso"], spec.name)


@pytest.mark.slow
def test_a_search_on_the_fleet_stores_what_the_inline_run_stores(inline_runs, fleet):
    spec = parse_spec(tiny_tune(search="ga"))
    fleet.start("alpha")
    fleet.wait_ready()
    scheduler.run(spec, fleet.store, fleet.executor())
    assert trials_of(fleet.store, spec.name) == trials_of(inline_runs["ga"], spec.name)
    assert '"op": "trial"' in fleet.log("alpha")


@pytest.mark.slow
def test_a_finished_search_extended_by_a_step_keeps_its_trials_and_runs_only_the_new_ones(inline_runs, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = open_store(url)
    config = WorkerConfig(url, str(tmp_path / "art"), str(tmp_path / "noise"), threads=1)
    scheduler.run(parse_spec(tiny_tune(search="ga", steps=1)), store, InlineExecutor(config))
    first = {d["_id"]: d["seconds"] for d in store.find_results("tune-tiny")}
    scheduler.run(parse_spec(tiny_tune(search="ga", steps=2)), store, InlineExecutor(config))
    after = {d["_id"]: d["seconds"] for d in store.find_results("tune-tiny")}
    assert len(first) == 2 and len(after) == 4 and {k: after[k] for k in first} == first
    assert trials_of(store, "tune-tiny") == trials_of(inline_runs["ga"], "tune-tiny")
