"""A run stored before the spec gained fields resumes; a real change is still refused (scheduler.register).

The stored document of such a run lacks the fields added since: the GA's selection, children,
elite candidates and episodes, frame budget and evaluation groups, the mutation's momentum,
self-adaptation and per-layer options, the memorize fitness kind, and the pso and tune sections.
"""

from __future__ import annotations

import copy

import pytest

from evoarena import scheduler
from evoarena.worker.inline import InlineExecutor
from evoarena.spec.experiment import ExperimentSpec, spec_to_dict
from evoarena.store import open_store
from evoarena.worker.worker import WorkerConfig
from helpers import tiny_spec

ADDED = {"": ("pso", "tune"), "problem": ("fitness",),
         "ga": ("selection", "children", "elite_candidates", "elite_episodes", "frame_budget", "eval_group"),
         "ga.mutation": ("momentum", "self_adapt", "per_layer", "layer_choice")}
"""The fields the spec gained after the first GA runs were stored, by the section that holds them."""


def tiny(generations: int = 2, mutation: dict | None = None, **ga) -> ExperimentSpec:
    """tiny.yaml with `generations` and other `ga` fields, its `ga.mutation` always written out."""
    return tiny_spec(generations=generations, **ga, mutation=mutation or {})


def as_stored_before_the_new_fields(spec: ExperimentSpec) -> dict:
    """`spec` as a run stored before ADDED's fields existed recorded it: its document without them."""
    document = spec_to_dict(spec)
    for section, fields in ADDED.items():
        holder = document
        for key in filter(None, section.split(".")):
            holder = holder[key]
        for field in fields:
            assert field in holder, f"{section or 'top level'}.{field} is not in today's spec"  # else the test proves nothing
            del holder[field]
    return document


def store_old_run(store, spec: ExperimentSpec) -> None:
    store.put_experiment(spec.name, {"spec": as_stored_before_the_new_fields(spec), "status": "stopped",
                                     "created": 1.0, "updated": 1.0, "provenance": {}})


@pytest.fixture
def store(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'results.db'}")
    yield store
    store.close()


def test_a_spec_stored_before_the_new_fields_is_the_same_experiment_as_today_s_with_their_defaults(store):
    store_old_run(store, tiny())

    scheduler.register(tiny(generations=3), store)  # no ExperimentMismatch

    stored = store.get_experiment("tiny")["spec"]
    assert stored["ga"]["eval_group"] == 1 and stored["ga"]["mutation"]["momentum"] == 0.0
    assert stored["ga"]["generations"] == 3


def test_a_changed_sigma_is_refused_against_a_spec_stored_before_the_new_fields(store):
    store_old_run(store, tiny())

    with pytest.raises(scheduler.ExperimentMismatch, match="'tiny' already exists .* different spec"):
        scheduler.register(tiny(mutation={"sigma": 0.05}), store)

    assert "eval_group" not in store.get_experiment("tiny")["spec"]["ga"]  # the stored document is left as it was


@pytest.mark.parametrize("change", [{"eval_group": 4}, {"mutation": {"momentum": 0.5}}, {"mutation": {"self_adapt": 0.1}}])
def test_a_new_field_set_away_from_its_default_is_a_different_experiment_from_a_run_stored_without_it(store, change):
    store_old_run(store, tiny())

    with pytest.raises(scheduler.ExperimentMismatch, match="different spec"):
        scheduler.register(tiny(**copy.deepcopy(change)), store)


def test_a_stored_spec_this_version_cannot_read_is_refused_with_the_reason(store):
    document = spec_to_dict(tiny())
    document["ga"]["retired_option"] = 1
    store.put_experiment("tiny", {"spec": document, "status": "stopped", "created": 1.0, "updated": 1.0, "provenance": {}})

    with pytest.raises(scheduler.ExperimentMismatch, match="cannot read .*retired_option"):
        scheduler.register(tiny(), store)


def test_a_run_stored_before_the_new_fields_continues_to_more_generations(tmp_path, store):
    config = WorkerConfig(f"sqlite:///{tmp_path / 'results.db'}", str(tmp_path / "artifacts"), str(tmp_path / "noise"), threads=1)
    executor = InlineExecutor(config)
    try:
        scheduler.run(tiny(generations=2), store, executor)
        stored = store.get_experiment("tiny")
        store.put_experiment("tiny", {**stored, "spec": as_stored_before_the_new_fields(tiny(generations=2))})

        last = scheduler.run(tiny(generations=3), store, executor)
    finally:
        executor.close()

    assert scheduler.complete_generations(store, "tiny") == 3
    assert last is not None
