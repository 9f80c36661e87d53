"""The CPU arithmetic a run computes in (arithmetic.py): `fast` unless the spec or
EVOARENA_ARITHMETIC asks for `reproducible`; recorded with the run; applied in each process before
torch computes; obeyed by every worker; a resume into `reproducible` of steps computed otherwise is
refused in one line, a resume into `fast` is noted.

What `reproducible` gives across machines is in tests/test_arena_determinism.py and
bench/reproducibility.py; this file is about the setting itself.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from evoarena.encoding import arithmetic
from evoarena import scheduler
from evoarena.encoding.arithmetic import PIN
from evoarena.settings import WorkerSettings
from evoarena.spec.experiment import ExperimentSpec, SpecError, parse_spec, spec_to_dict
from evoarena.store import open_store
from evoarena.worker.worker import Worker, WorkerConfig, run_on
from helpers import tiny_yaml

ROOT = Path(__file__).resolve().parent.parent
HAS_AVX2 = "avx2" in (Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else "")
needs_avx2 = pytest.mark.skipif(not HAS_AVX2, reason="reproducible arithmetic needs an x86-64 CPU with AVX2")


def tiny(generations: int = 2, **top) -> ExperimentSpec:
    return parse_spec(tiny_yaml(ga={"generations": generations}, **top))


def fresh(code: str, **env: str) -> subprocess.CompletedProcess:
    """`code` run in a fresh interpreter, none of PIN's variables (nor EVOARENA_ARITHMETIC) set unless in `env`."""
    base = {k: v for k, v in os.environ.items() if k not in (*PIN, "EVOARENA_ARITHMETIC")}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, timeout=180)


@pytest.fixture
def store(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'results.db'}")
    yield store
    store.close()


@pytest.fixture
def computing_fast():
    """This (test) process computes in fast, as every in-process run of the suite does."""
    arithmetic.apply("fast")


def store_run(store, spec: ExperimentSpec, steps: int, **spec_fields) -> None:
    """A run of `spec` as another master stored it, with `steps` complete steps; `spec_fields`
    replace its stored spec's fields (None: the field removed, as before it existed)."""
    document = {**spec_to_dict(spec), **spec_fields}
    document = {k: v for k, v in document.items() if v is not None}
    store.put_experiment(spec.name, {"spec": document, "status": "stopped", "created": 1.0, "updated": 1.0,
                                     "provenance": {}})
    for index in range(steps):
        store.put_generation(spec.name, index, {"complete": True, "updated": 1.0})


# --- the setting -----------------------------------------------------------------------------


def test_a_spec_computes_in_fast_unless_it_asks_for_reproducible():
    assert tiny().arithmetic == "fast"
    assert tiny(arithmetic="reproducible").arithmetic == "reproducible"
    assert spec_to_dict(tiny())["arithmetic"] == "fast"  # so a run records it


def test_an_unknown_arithmetic_is_one_spec_error_naming_the_field():
    with pytest.raises(SpecError) as refused:
        parse_spec(tiny_yaml(arithmetic="exact"), "x.yaml")

    assert str(refused.value) == "x.yaml: arithmetic = 'exact': must be one of 'fast' or 'reproducible'"


def test_evoarena_arithmetic_is_read_from_the_environment_and_a_wrong_value_is_named():
    assert WorkerSettings.from_env({"EVOARENA_ARITHMETIC": "reproducible"}).arithmetic == "reproducible"
    assert WorkerSettings.from_env({}).arithmetic == ""  # the spec's, for a run; fast, for a worker
    with pytest.raises(ValueError, match=r"^EVOARENA_ARITHMETIC='exact' is not one of fast, reproducible$"):
        WorkerSettings.from_env({"EVOARENA_ARITHMETIC": "exact"})


def test_reproducible_sets_the_pin_and_fast_removes_it():
    environ = {"MKL_CBWR": "AVX2,STRICT", "PATH": "/bin"}

    assert arithmetic.environment("reproducible", environ) == {"PATH": "/bin", **PIN}
    assert arithmetic.environment("fast", environ) == {"PATH": "/bin"}  # each library's own choice


# --- one process, one arithmetic, set before torch computes --------------------------------------


@needs_avx2
def test_a_reproducible_process_runs_the_pin_on_one_thread_without_onednn():
    done = fresh("import json; from evoarena.encoding import arithmetic; arithmetic.apply('reproducible'); "
                 "print(json.dumps(arithmetic.in_effect()))")

    assert done.returncode == 0, done.stderr[-2000:]
    effect = json.loads(done.stdout)
    assert effect["mode"] == "reproducible" and effect["variables"] == PIN
    assert effect["aten"] == "AVX2" and effect["mkl_branch"] in (arithmetic.MKL_COMPATIBLE, None)
    assert (effect["onednn"], effect["nnpack"], effect["threads"]) == (False, False, 1)


@needs_avx2
def test_a_process_in_which_torch_computed_already_is_refused_reproducible():
    done = fresh("import torch; torch.ones(4).tanh(); from evoarena.encoding import arithmetic; arithmetic.apply('reproducible')")

    assert done.returncode != 0
    assert done.stderr.splitlines()[-1].startswith("evoarena.encoding.arithmetic.ArithmeticMismatch: reproducible arithmetic: "
                                                   "ATen runs its ")
    assert "torch computed in this process before the arithmetic was set" in done.stderr


def test_a_process_keeps_the_arithmetic_it_applied():
    done = fresh("from evoarena.encoding import arithmetic; arithmetic.apply('fast'); arithmetic.apply('fast'); "
                 "arithmetic.apply('reproducible')")

    assert done.stderr.splitlines()[-1] == ("evoarena.encoding.arithmetic.ArithmeticMismatch: this process computes in fast "
                                            "arithmetic already; reproducible needs a fresh process")


@needs_avx2
def test_a_reproducible_process_computes_on_one_thread_whatever_it_is_given_since():
    done = fresh("import torch; from evoarena.encoding import arithmetic; arithmetic.apply('reproducible'); "
                 "torch.set_num_threads(3); arithmetic.require('reproducible'); print(torch.get_num_threads())")

    assert done.stdout.split() == ["1"], done.stderr[-2000:]


# --- the master records it, and refuses or notes a resume in the other ---------------------------


def test_a_run_records_its_arithmetic_with_its_spec_and_provenance(store, computing_fast):
    scheduler.register(tiny(), store)

    document = store.get_experiment("tiny")
    assert document["spec"]["arithmetic"] == "fast"
    assert document["provenance"]["arithmetic"]["mode"] == "fast"
    assert document["provenance"]["arithmetic"]["variables"] == dict.fromkeys(PIN)
    assert document["provenance"]["arithmetic_history"] == [["fast", 0]]


def test_a_reproducible_run_continued_in_fast_is_noted_and_recorded(store, computing_fast, caplog):
    store_run(store, tiny(), steps=2, arithmetic="reproducible")

    with caplog.at_level(logging.WARNING, logger="evoarena.scheduler"):
        scheduler.register(tiny(generations=3), store)

    (note,) = [r.getMessage() for r in caplog.records if r.name == "evoarena.scheduler"]
    assert note.startswith("experiment 'tiny': its 2 stored steps were computed in reproducible arithmetic; it "
                           "continues in fast, so its bits from step 2 on depend on the CPU that computes them")
    document = store.get_experiment("tiny")
    assert document["spec"]["arithmetic"] == "fast"
    assert document["provenance"]["arithmetic_history"] == [["reproducible", 0], ["fast", 2]]


def test_a_fast_run_continued_in_reproducible_is_refused_in_one_line(store):
    store_run(store, tiny(), steps=2)

    with pytest.raises(scheduler.ExperimentMismatch) as refused:
        scheduler.registered(tiny(generations=3, arithmetic="reproducible"), store)

    assert str(refused.value) == (
        "experiment 'tiny' was computed in fast arithmetic (2 complete steps), so it cannot be reproducible: "
        "continue it in fast (arithmetic: fast, EVOARENA_ARITHMETIC=fast), or give this one another name")
    assert store.get_experiment("tiny")["spec"]["arithmetic"] == "fast"  # nothing written


def test_a_run_that_computed_nothing_yet_may_start_over_in_reproducible(store):
    store_run(store, tiny(), steps=0)

    assert scheduler.registered(tiny(arithmetic="reproducible"), store) is not None  # no ExperimentMismatch


def test_a_run_stored_before_the_field_continues_in_fast_but_not_in_reproducible(store, computing_fast):
    """It computed with the AVX2 pin evoarena's import set then, which is neither mode."""
    store_run(store, tiny(), steps=2, arithmetic=None)
    with pytest.raises(scheduler.ExperimentMismatch, match=r"computed in avx2-pin arithmetic \(2 complete steps\)"):
        scheduler.registered(tiny(generations=3, arithmetic="reproducible"), store)

    scheduler.register(tiny(generations=3), store)

    assert store.get_experiment("tiny")["provenance"]["arithmetic_history"] == [["avx2-pin", 0], ["fast", 2]]


# --- every worker obeys it -----------------------------------------------------------------------


def test_a_worker_in_fast_refuses_a_reproducible_experiments_task_until_the_run_continues_in_fast(
        tmp_path, store, computing_fast):
    spec = tiny()
    scheduler.register(spec, store)
    task = scheduler.algorithm(spec).plan(0, None).tasks[0]
    scheduler.plan(store, "evaluate", [task])
    store.put_experiment("tiny", {**store.get_experiment("tiny"), "spec": spec_to_dict(tiny(arithmetic="reproducible"))})
    worker = Worker(WorkerConfig(f"sqlite:///{tmp_path / 'results.db'}", str(tmp_path / "artifacts"), str(tmp_path / "noise")))

    refused = run_on(worker, "evaluate", task)

    assert refused["transient"] and refused["error"].startswith("TaskRefused: task ")  # sent again, never the genome's
    assert "this process computes in fast arithmetic and the experiment in reproducible" in refused["error"]
    assert store.find_results("tiny") == []

    scheduler.register(spec, store)  # its master continues it in fast: the worker reads the spec again
    assert run_on(worker, "evaluate", task)["error"] is None


@needs_avx2
def test_a_gpu_worker_refuses_a_reproducible_experiments_task(tmp_path):
    code = f"""
from evoarena.encoding import arithmetic
arithmetic.apply("reproducible")
import copy, yaml
from evoarena import scheduler
from evoarena.spec import parse_spec
from evoarena.store import open_store
from evoarena.worker.worker import TaskRefused, Worker, WorkerConfig
data = yaml.safe_load(open({str(ROOT / "experiments" / "tiny.yaml")!r}))
spec = parse_spec({{**data, "arithmetic": "reproducible"}})
url = "sqlite:///{tmp_path}/results.db"
scheduler.register(spec, open_store(url))
worker = Worker(WorkerConfig(url, "{tmp_path}/artifacts", "{tmp_path}/noise", device="cuda:0"))
try:
    worker._check_arithmetic("tiny", "tiny:0:evaluate:x")
except TaskRefused as exc:
    print(exc)
"""
    done = fresh(code)

    assert done.stdout.strip() == ("task tiny:0:evaluate:x: experiment 'tiny' computes in reproducible arithmetic, "
                                   "which is defined on CPUs only, and this worker computes on cuda:0"), done.stderr[-2000:]


# --- the command line ---------------------------------------------------------------------------


@needs_avx2
def test_evoarena_arithmetic_overrides_the_spec_and_a_resume_in_the_other_is_noted_or_refused(tmp_path):
    """A reproducible run on a local pool (its process obeys: a refusal would fail the run);
    continued in fast with a note; refused, in one line, when asked for in reproducible again."""
    env = {k: v for k, v in os.environ.items() if k not in (*PIN, "EVOARENA_ARITHMETIC")}
    env |= {"EVOARENA_STORE": f"sqlite:///{tmp_path / 'results.db'}", "EVOARENA_ARTIFACTS": str(tmp_path / "artifacts"),
            "EVOARENA_NOISE_DIR": str(tmp_path / "noise"), "PYTHONUNBUFFERED": "1"}

    def run(generations: int, **more: str) -> subprocess.CompletedProcess:
        data = tiny_yaml(ga={"generations": generations})
        (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data))
        return subprocess.run([sys.executable, "-m", "evoarena", "run", str(tmp_path / "tiny.yaml")],
                              env={**env, **more}, capture_output=True, text=True, timeout=300)

    first = run(2, EVOARENA_ARITHMETIC="reproducible")
    assert first.returncode == 0, first.stderr[-2000:]
    with open_store(env["EVOARENA_STORE"]) as store:
        document = store.get_experiment("tiny")
        assert document["spec"]["arithmetic"] == "reproducible"
        effect = document["provenance"]["arithmetic"]
        assert (effect["mode"], effect["aten"], effect["threads"], effect["onednn"]) == ("reproducible", "AVX2", 1, False)
        assert all(r["error"] is None for r in store.find_results("tiny"))

    second = run(3)  # the spec's fast
    assert second.returncode == 0, second.stderr[-2000:]
    assert "its 2 stored steps were computed in reproducible arithmetic; it continues in fast" in second.stderr

    third = run(4, EVOARENA_ARITHMETIC="reproducible")
    assert third.returncode == 2
    assert third.stderr.splitlines() == [
        "error: experiment 'tiny' was computed in fast arithmetic (3 complete steps), so it cannot be "
        "reproducible: continue it in fast (arithmetic: fast, EVOARENA_ARITHMETIC=fast), or give this one another name"]


@needs_avx2
def test_a_fleet_worker_started_reproducible_runs_a_reproducible_experiment(fleet, tmp_path):
    """`evoarena worker` computes in EVOARENA_ARITHMETIC from its start, and its pool process runs
    the experiment's tasks (a process in the other arithmetic would refuse every one of them)."""
    fleet.env["EVOARENA_ARITHMETIC"] = "reproducible"
    node = fleet.start("reproducible")
    fleet.wait_ready()
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_yaml()))
    env = {k: v for k, v in fleet.env.items() if k not in PIN}

    done = subprocess.run([sys.executable, "-m", "evoarena", "run", "--fleet", str(tmp_path / "tiny.yaml")],
                          env=env, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr[-2000:]
    results = fleet.store.find_results("tiny")
    assert results and {(r["node"], r["error"]) for r in results} == {(node, None)}
    assert fleet.store.get_experiment("tiny")["spec"]["arithmetic"] == "reproducible"
