"""The scheduler: generations in, documents out, and a run that survives being stopped anywhere.

Every test runs tiny.yaml's problem on an InlineExecutor (one worker in this process) against a
SQLite file in tmp_path; "the same run" is compared document by document, floats bit for bit.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from evoarena import scheduler
from evoarena.worker.inline import InlineExecutor
from evoarena.fleet.executor import LocalExecutor
from evoarena.encoding.genome import Genome
from evoarena.spec.experiment import ExperimentSpec, parse_spec
from evoarena.worker import worker
from evoarena.store import ResultStore, StoreUnavailable
from evoarena.tasks import result_id
from evoarena.tasks import error_summary
from helpers import Lab, Poisoning, StopAfter, content_not_matching_id, evolution, tiny_spec

GENERATIONS = 8


def tiny(name: str = "tiny", generations: int = GENERATIONS, **ga) -> ExperimentSpec:
    """tiny.yaml with another name, generation count and `ga` fields (`mutation` merges too)."""
    return tiny_spec(name, generations=generations, **ga)


# --- a corrupted genome (the executors that misbehave on purpose are in helpers.py) ------------


def unknown_delta_kind(genome: dict) -> None:
    genome["deltas"][-1]["k"] = "gaussain"


# --- a lab of stores --------------------------------------------------------------------------


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    yield lab
    lab.close()


def individuals_in(spec: ExperimentSpec) -> int:
    """How many evaluations a complete run of `spec` stores."""
    return spec.ga.generation_zero_size + (spec.ga.generations - 1) * spec.ga.population


def fitness_by_individual(store: ResultStore, name: str) -> dict[tuple[int, str], float]:
    return {(d["generation"], d["genome_id"]): d["fitness"] for d in store.find_results(name)}


# --- a run ------------------------------------------------------------------------------------


def test_best_fitness_improves_over_eight_generations_with_the_default_sigma(lab):
    spec = tiny()
    assert spec.ga.mutation.sigma == 0.02  # the default, not a value picked to make this pass

    lab.run(spec)

    best = [g["stats"]["best"] for g in lab.store().list_generations("tiny")]
    assert len(best) == GENERATIONS
    assert best[-1] > best[0]


def test_each_generation_has_one_result_per_individual_and_one_generation_doc(lab):
    spec = tiny()

    lab.run(spec)

    store = lab.store()
    assert [g["generation"] for g in store.list_generations("tiny")] == list(range(GENERATIONS))
    for generation in range(GENERATIONS):
        results = store.find_results("tiny", generation, "evaluate")
        size = spec.ga.generation_zero_size if generation == 0 else spec.ga.population
        assert len(results) == size
        assert len({r["genome_id"] for r in results}) == size
        for r in results:
            assert r["_id"] == result_id("tiny", generation, "evaluate", [r["genome_id"]])
            assert r["error"] is None and isinstance(r["fitness"], float)
    assert store.count_results("tiny") == individuals_in(spec)
    assert store.get_experiment("tiny")["status"] == "complete"


def test_elites_are_the_previous_generations_best_parents_evaluated_again(lab):
    spec = tiny()

    lab.run(spec)

    store = lab.store()
    for generation in range(1, GENERATIONS):
        previous = store.get_generation("tiny", generation - 1)
        elites = {r["genome_id"] for r in store.find_results("tiny", generation) if r["role"] == "elite"}
        assert elites == {p["id"] for p in previous["parents"][: spec.ga.elites]}


def test_the_stored_best_is_the_fittest_result_of_its_generation(lab):
    lab.run(tiny())

    store = lab.store()
    for doc in store.list_generations("tiny"):
        results = store.find_results("tiny", doc["generation"])
        fittest = max(results, key=lambda r: r["fitness"])
        assert doc["best"]["fitness"] == fittest["fitness"] == doc["stats"]["best"]
        assert doc["best"]["genome_id"] == fittest["genome_id"]
        assert doc["parents"][0]["id"] == fittest["genome_id"]


def test_run_returns_the_last_generation_with_its_fittest_individual(lab):
    final = lab.run(tiny())

    last = lab.store().find_results("tiny", GENERATIONS - 1, "evaluate")
    fittest = max(last, key=lambda r: r["fitness"])
    assert (final["generation"], final["complete"]) == (GENERATIONS - 1, True)
    assert (final["best"]["genome_id"], final["best"]["fitness"]) == (fittest["genome_id"], fittest["fitness"])
    assert lab.store().get_experiment("tiny")["status"] == "complete"


def test_running_a_finished_experiment_again_evaluates_nothing(lab):
    spec = tiny()
    lab.run(spec)
    store = lab.store()
    results, generations = store.count_results("tiny"), store.list_generations("tiny")

    recorder = lab.run_recorded(spec)

    assert recorder.sent == {}
    assert store.count_results("tiny") == results
    assert store.list_generations("tiny") == generations


# --- the spec a store already holds -----------------------------------------------------------


def test_a_spec_with_the_same_name_and_another_sigma_is_refused(lab):
    lab.run(tiny(generations=3))
    store = lab.store()
    results, stored = store.count_results("tiny"), store.get_experiment("tiny")["spec"]

    with pytest.raises(scheduler.ExperimentMismatch, match="'tiny' already exists .* different spec"):
        lab.run(tiny(generations=3, mutation={"sigma": 0.05}))

    assert store.count_results("tiny") == results
    assert store.get_experiment("tiny")["spec"] == stored


def test_more_generations_extend_a_finished_run_as_if_it_had_been_that_long(lab):
    lab.run(tiny(generations=3))

    lab.run(tiny(generations=5))
    lab.run(tiny(generations=5), store="reference")

    assert lab.store().last_generation("tiny") == 4
    assert lab.store().get_experiment("tiny")["spec"]["ga"]["generations"] == 5
    assert evolution(lab.store(), "tiny") == evolution(lab.store("reference"), "tiny")


# --- interruptions ----------------------------------------------------------------------------

# Generation 0 and 1 have 7 individuals each: stop inside generation 0, after all of generation 0
# is stored but before its generation doc is written, and inside generation 1.
STOP_AFTER = {"inside generation 0": 3, "before generation 0's doc": 7, "inside generation 1": 12}


@pytest.mark.parametrize("n", STOP_AFTER.values(), ids=STOP_AFTER.keys())
def test_an_interrupted_run_continues_to_exactly_the_uninterrupted_result(lab, n):
    spec = tiny()
    with pytest.raises(KeyboardInterrupt):
        lab.run(spec, wrap=lambda executor: StopAfter(executor, n))
    assert lab.store().count_results("tiny") == n

    lab.run(spec)
    lab.run(spec, store="reference")

    store, reference = lab.store(), lab.store("reference")
    assert evolution(store, "tiny") == evolution(reference, "tiny")
    assert fitness_by_individual(store, "tiny") == fitness_by_individual(reference, "tiny")
    ids = [r["_id"] for r in store.find_results("tiny")]
    assert len(ids) == len(set(ids)) == reference.count_results("tiny")


def test_a_resumed_generation_sends_only_the_individuals_without_a_result(lab):
    spec = tiny()
    with pytest.raises(KeyboardInterrupt):
        lab.run(spec, wrap=lambda executor: StopAfter(executor, 7 + 5))
    stored = {r["genome_id"] for r in lab.store().find_results("tiny", 1)}
    assert len(stored) == 5

    recorder = lab.run_recorded(spec)

    assert 0 not in recorder.sent
    assert len(recorder.sent[1]) == spec.ga.population - 5
    assert stored.isdisjoint(recorder.sent[1])


# --- poison tasks -----------------------------------------------------------------------------


def best_child_of_generation_one(lab: Lab, spec: ExperimentSpec) -> tuple[str, int]:
    """In a clean run of `spec`: the id of generation 1's best individual, and how many tasks ran
    up to and including its own."""
    recorder = lab.run_recorded(spec, store="clean")
    best = lab.store("clean").get_generation(spec.name, 1)["best"]["genome_id"]
    return best, len(recorder.sent[0]) + recorder.sent[1].index(best) + 1


def test_a_genome_the_master_made_unreadable_is_recorded_as_an_error_never_selected_and_the_run_completes(lab):
    spec = tiny()
    victim, _ = best_child_of_generation_one(lab, spec)

    lab.run(spec, wrap=lambda executor: Poisoning(executor, victim, unknown_delta_kind, planned_in=lab.store()))

    store = lab.store()
    doc = store.get_result(result_id("tiny", 1, "evaluate", [victim]))
    assert doc["fitness"] is None
    assert doc["error"].startswith("ValueError: delta kind 'gaussain' is unknown")
    assert not doc.get("transient")  # the genome's own error
    generation_one = store.get_generation("tiny", 1)
    assert generation_one["stats"]["errors"] == 1
    assert victim not in {p["id"] for p in generation_one["parents"]}
    assert victim not in {r["genome_id"] for r in store.find_results("tiny", 2)}
    assert store.last_generation("tiny") == GENERATIONS - 1
    assert store.get_experiment("tiny")["status"] == "complete"


@pytest.mark.parametrize("corrupt", [unknown_delta_kind, content_not_matching_id],
                         ids=["unknown delta kind", "content not matching id"])
def test_a_task_corrupted_on_its_way_is_refused_unrecorded_sent_again_and_the_run_ends_as_a_clean_one(
        lab, corrupt, monkeypatch):
    monkeypatch.setattr(scheduler, "STEP_RETRY_WAIT_S", 0.01)
    spec = tiny()
    victim, _ = best_child_of_generation_one(lab, spec)
    refusals = []

    class Watching(Poisoning):  # what the worker answered for the corrupted task
        def map(self, op, tasks):
            for summary in super().map(op, tasks):
                if summary["_id"] == result_id("tiny", 1, "evaluate", [victim]):
                    refusals.append(summary["error"])
                yield summary

    lab.run(spec, wrap=lambda executor: Watching(executor, victim, corrupt, times=1))

    assert len(refusals) == 2 and refusals[0].startswith("TaskRefused: ") and "not one the master planned" in refusals[0]
    assert refusals[1] is None  # sent again, as the master planned it
    assert fitness_by_individual(lab.store(), "tiny") == fitness_by_individual(lab.store("clean"), "tiny")
    assert not any(d["error"] for d in lab.store().find_results("tiny"))


def test_a_recorded_failure_is_not_sent_again_on_resume(lab):
    spec = tiny()
    victim, upto_victim = best_child_of_generation_one(lab, spec)
    with pytest.raises(KeyboardInterrupt):
        lab.run(spec, wrap=lambda executor: StopAfter(
            Poisoning(executor, victim, unknown_delta_kind, planned_in=lab.store()), upto_victim))
    assert lab.store().get_generation("tiny", 1) is None

    recorder = lab.run_recorded(spec)

    assert victim not in recorder.sent[1]
    assert lab.store().get_result(result_id("tiny", 1, "evaluate", [victim]))["error"] is not None
    assert lab.store().get_generation("tiny", 1)["stats"]["errors"] == 1


def test_the_experiment_records_its_provenance_and_each_result_its_device(lab):
    import numpy
    import torch

    import evoarena
    from evoarena.encoding.noise import table_path

    lab.run(tiny(generations=1))

    recorded = lab.store().get_experiment("tiny")["provenance"]
    assert (recorded["evoarena"], recorded["torch"], recorded["numpy"]) == (
        evoarena.__version__, torch.__version__, numpy.__version__)
    # the spec's default arithmetic, fast: none of the pin's variables set (arithmetic.py)
    assert recorded["arithmetic"]["mode"] == "fast"
    assert recorded["arithmetic"]["variables"] == {"MKL_CBWR": None, "ATEN_CPU_CAPABILITY": None,
                                                   "ONEDNN_MAX_CPU_ISA": None}
    spec = tiny()
    # the fingerprint in the name of the noise table file the run built and verified
    (built,) = (lab.root / "noise").glob("noise-*.f32")
    assert built == table_path(lab.root / "noise", spec.noise.seed, spec.noise.size)
    assert built.stem.endswith("-" + recorded["noise_fingerprint"])
    assert {(d["device"], d["device_kind"]) for d in lab.store().find_results("tiny")} == {("cpu", "cpu")}


# --- infrastructure failures ---------------------------------------------------------------------


class FlakyStore:
    """The worker's store, failing its first `failures` result writes as a MongoDB blip would."""

    def __init__(self, inner: ResultStore, failures: int):
        self.inner, self.failures = inner, failures

    def record_result(self, doc: dict) -> dict | None:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("MongoDB store did not answer to write 1 results after 5 tries")
        return self.inner.record_result(doc)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture
def no_backoff(monkeypatch):
    monkeypatch.setattr(worker, "BACKOFF_S", 0.0)


def test_a_store_blip_on_a_result_write_is_retried_and_records_no_error(lab, no_backoff):
    lab.store()  # the master makes the store; a worker only opens it
    executor = InlineExecutor(lab.config("main"))
    executor.worker.__dict__["store"] = flaky = FlakyStore(executor.worker.store, failures=worker.TRANSIENT_RETRIES)

    scheduler.run(tiny(generations=2), lab.store(), executor)

    assert flaky.failures == 0
    docs = lab.store().find_results("tiny")
    assert len(docs) == individuals_in(tiny(generations=2)) and all(d["error"] is None for d in docs)
    assert fitness_by_individual(lab.store(), "tiny") == fitness_by_individual(*clean_run(lab, tiny(generations=2)))


def clean_run(lab: Lab, spec: ExperimentSpec) -> tuple[ResultStore, str]:
    lab.run(spec, store="clean")
    return lab.store("clean"), spec.name


def failing_infrastructure_for(monkeypatch, victim: str) -> None:
    """Every evaluation of genome `victim` meets a connection error (its checkpoint store is down)."""
    evaluate = worker.Worker._evaluate

    def _evaluate(self, task, genome):
        if genome.id == victim:
            raise ConnectionResetError(104, "Connection reset by peer")
        return evaluate(self, task, genome)

    monkeypatch.setattr(worker.Worker, "_evaluate", _evaluate)


def test_infrastructure_that_keeps_failing_stops_the_run_with_the_step_incomplete_and_nothing_against_the_genome(
        lab, no_backoff, monkeypatch):
    monkeypatch.setattr(scheduler, "STEP_RETRY_WAIT_S", 0.0)
    spec = tiny()
    victim, _ = best_child_of_generation_one(lab, spec)
    failing_infrastructure_for(monkeypatch, victim)
    sent = []

    class Counting:  # how many times the victim's task is sent
        def __init__(self, inner):
            self.inner = inner

        def map(self, op, tasks):
            sent.extend(t["genome"]["id"] for t in tasks if t["generation"] == 1 and t["genome"]["id"] == victim)
            return self.inner.map(op, tasks)

        def close(self):
            self.inner.close()

    with pytest.raises(scheduler.InfrastructureFailure, match="1 tasks failed 4 times because of the infrastructure"):
        lab.run(spec, wrap=Counting)

    doc = lab.store().get_result(result_id("tiny", 1, "evaluate", [victim]))
    assert doc["fitness"] is None and doc["transient"] is True
    assert doc["error"].startswith("Transient: ConnectionResetError: [Errno 104] Connection reset by peer (tried 4 times)")
    assert len(sent) == scheduler.STEP_RETRIES + 1
    assert lab.store().get_generation("tiny", 1) is None  # the step is not complete
    assert lab.store().get_experiment("tiny")["status"] == "failed"


def test_a_resumed_step_runs_again_the_tasks_whose_infrastructure_failed(lab, no_backoff, monkeypatch):
    spec = tiny()
    victim, upto_victim = best_child_of_generation_one(lab, spec)
    with monkeypatch.context() as patch:
        failing_infrastructure_for(patch, victim)
        with pytest.raises(KeyboardInterrupt):
            lab.run(spec, wrap=lambda executor: StopAfter(executor, upto_victim))
    assert lab.store().get_result(result_id("tiny", 1, "evaluate", [victim]))["transient"] is True

    recorder = lab.run_recorded(spec)  # the infrastructure is back

    assert victim in recorder.sent[1]
    assert lab.store().get_result(result_id("tiny", 1, "evaluate", [victim]))["error"] is None
    assert fitness_by_individual(lab.store(), "tiny") == fitness_by_individual(lab.store("clean"), "tiny")


def test_a_lost_task_is_never_recorded_over_a_result_a_late_worker_stored(lab):
    store = lab.store()
    real = {"_id": "tiny:000001:evaluate:g1", "experiment": "tiny", "generation": 1, "op": "evaluate",
            "genome_id": "g1", "fitness": 0.5, "error": None}
    store.put_result(real)
    lost = error_summary(real["_id"], {"genome": {"id": "g1"}}, "no result 1860 s after a worker started it",
                                transient=True)

    scheduler._record_lost("tiny", store, 1, "evaluate", [lost])

    assert store.get_result(real["_id"]) == real


# --- checkpoints ------------------------------------------------------------------------------


def test_generation_docs_list_the_checkpoints_saved_every_n_generations(lab):
    lab.run(tiny(checkpoint_every=2))

    store, listed, previous_parents = lab.store(), set(), set()
    for doc in store.list_generations("tiny"):
        ids = {c["id"] for c in doc["checkpoints"]}
        # every parent of the previous generation is saved, not only the elites
        assert ids - listed == (previous_parents if doc["generation"] in (2, 4, 6) else set())
        for checkpoint in doc["checkpoints"]:
            assert Path(checkpoint["uri"].removeprefix("file://")).is_file()
        listed, previous_parents = ids, {p["id"] for p in doc["parents"]}
    assert listed


def test_checkpointing_changes_no_fitness_bit(lab):
    lab.run(tiny(checkpoint_every=2))
    lab.run(tiny(), store="plain")

    checkpointed, plain = fitness_by_individual(lab.store(), "tiny"), fitness_by_individual(lab.store("plain"), "tiny")
    assert len(checkpointed) == individuals_in(tiny())
    assert checkpointed == plain


def test_checkpointing_with_crossover_changes_no_fitness_bit(lab):
    # Crossover of rebased parents is written with a `load` delta, so child ids may differ from the
    # plain run's; the networks, and therefore every fitness, must not.
    lab.run(tiny(generations=10, crossover_rate=0.5, checkpoint_every=2))
    lab.run(tiny(generations=10, crossover_rate=0.5), store="plain")

    for generation in range(10):
        checkpointed = sorted(r["fitness"] for r in lab.store().find_results("tiny", generation))
        plain = sorted(r["fitness"] for r in lab.store("plain").find_results("tiny", generation))
        assert checkpointed == plain


def test_parents_after_a_checkpoint_are_the_same_genomes_rebased_on_it(lab):
    lab.run(tiny(checkpoint_every=2))
    lab.run(tiny(), store="plain")

    for doc, plain_doc in zip(lab.store().list_generations("tiny"), lab.store("plain").list_generations("tiny"), strict=True):
        for parent, plain in zip(doc["parents"], plain_doc["parents"], strict=True):
            full = Genome.from_json(plain)
            assert parent["id"] == full.id
            if parent["base"] is None:
                assert parent["deltas"] == plain["deltas"]
                continue
            cut = full.prefix_ids.index(parent["base"]["id"])
            assert cut > 0
            assert parent["deltas"] == plain["deltas"][cut:]
            assert any(c["id"] == parent["base"]["id"] for c in doc["checkpoints"])
    assert all(p["base"] is not None for p in lab.store().get_generation("tiny", GENERATIONS - 1)["parents"])


def test_no_parent_carries_more_than_n_deltas_past_its_checkpoint(lab):
    every = 2
    lab.run(tiny(generations=10, elites=1, checkpoint_every=every))

    for doc in lab.store().list_generations("tiny")[every:]:
        for parent in doc["parents"]:
            assert parent["base"] is not None
            assert len(parent["deltas"]) <= every


# --- across processes -------------------------------------------------------------------------


@pytest.mark.slow
def test_two_worker_processes_give_the_same_run_as_one_inline_worker(lab):
    spec = tiny(generations=5)
    lab.run(spec, store="inline")

    executor = LocalExecutor(lab.config("local"), workers=2)
    try:
        scheduler.run(spec, lab.store("local"), executor)
    finally:
        executor.close()

    local, inline = evolution(lab.store("local"), "tiny"), evolution(lab.store("inline"), "tiny")
    assert [d["stats"]["best"] for d in local] == [d["stats"]["best"] for d in inline]
    assert [d["stats"]["mean"] for d in local] == [d["stats"]["mean"] for d in inline]
    assert local == inline
    workers = {r["worker"] for r in lab.store("local").find_results("tiny")}
    assert workers and all(not w.endswith(f"-{os.getpid()}") for w in workers)  # evaluated elsewhere


def test_two_experiments_differing_only_in_their_noise_table_keep_their_own_checkpoints(lab):
    # The same genomes (architecture and seeds) under another noise table are other networks:
    # their checkpoints must not overwrite each other's.
    specs = [tiny(f"noise-{seed}", generations=3, checkpoint_every=1) for seed in (1, 2)]
    specs = [parse_spec({**spec.model_dump(mode="json"), "noise": {"seed": seed, "size": 65536}})
             for spec, seed in zip(specs, (1, 2))]
    for spec in specs:
        lab.run(spec)
    uris = [{c["uri"] for d in lab.store().list_generations(s.name) for c in d["checkpoints"]} for s in specs]
    assert uris[0] and uris[1] and uris[0].isdisjoint(uris[1])
    assert all("/noise-1--" in u for u in uris[0]) and all("/noise-2--" in u for u in uris[1])


# --- tasks that do not belong to their experiment -----------------------------------------------


@pytest.fixture
def finished(lab) -> tuple[Lab, dict, dict]:
    """A finished tiny run; the task that evaluated generation 1's best, and its stored result."""
    spec = tiny()
    recorder = lab.run_recorded(spec)
    store = lab.store()
    best = store.get_generation(spec.name, 1)["best"]["genome_id"]
    task = next(t for t in scheduler.algorithm(spec).plan(1, store.get_generation(spec.name, 0)).tasks
                if t["genome"]["id"] == best)
    assert best in recorder.sent[1]
    return lab, task, store.get_result(result_id(spec.name, 1, "evaluate", [best]))


def refused(lab: Lab, task: dict) -> dict:
    from evoarena.worker.worker import Worker, run_on

    return run_on(Worker(lab.config("main")), "evaluate", task)


@pytest.mark.parametrize("forge", [
    lambda t: t["genome"].update(init_seed=t["genome"]["init_seed"] + 1),  # another genome claiming the best's id
    lambda t: t["problem"].update(data_seed=t["problem"]["data_seed"] + 1),  # the best, on other data
    lambda t: t["noise"].update(seed=t["noise"]["seed"] + 1),  # the best, on another noise table
], ids=["forged genome", "other data_seed", "other noise table"])
def test_a_task_that_does_not_belong_to_its_experiment_is_refused_and_overwrites_nothing(finished, forge):
    lab, task, stored = finished
    task = copy.deepcopy(task)
    forge(task)

    summary = refused(lab, task)

    assert summary["error"].startswith("TaskRefused: ") and summary["_id"] == stored["_id"]
    assert lab.store().get_result(stored["_id"]) == stored  # the real result, untouched


def test_a_task_of_an_unknown_experiment_is_refused(finished):
    lab, task, _ = finished
    summary = refused(lab, {**task, "experiment": "no-such-experiment"})
    assert summary["error"] == "TaskRefused: experiment 'no-such-experiment' is not in the store"
    assert lab.store().count_results("no-such-experiment") == 0


def test_a_task_of_a_negative_generation_is_refused(finished):
    lab, task, _ = finished
    with pytest.raises(ValueError, match="'generation' an integer >= 0"):
        refused(lab, {**task, "generation": -1})
