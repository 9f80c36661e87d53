"""Population-batched evaluation: a group of siblings in one message and one pass gives what one
task per child gives (batched.py, tasks.py)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evoarena.encoding import batched, nets
from evoarena import scheduler
from evoarena.evolve import Step
from evoarena.evolve.ga import GA
from evoarena.worker.inline import InlineExecutor
from evoarena.fleet.executor import LocalExecutor
from evoarena.tasks import children_tasks, pack, unpack
from evoarena.fleet.routing import AffinityRouter
from evoarena.tasks import built, wanted
from evoarena.encoding.genome import Genome, founder, mutate, sample_delta
from evoarena.encoding.materialize import Materializer, ParentCache
from evoarena.encoding.noise import open_noise
from evoarena.problems import memorize
from evoarena.spec.experiment import ExperimentSpec, parse_spec
from evoarena.store import open_store
from evoarena.tasks import task_id
from evoarena.tasks import error_summary
from evoarena.worker.worker import Worker, WorkerConfig, run_on
from helpers import Fleet, atari_spec, broker_up, tiny_spec, tiny_yaml

ROOT = Path(__file__).resolve().parent.parent
TINY = tiny_yaml()
SEED_003_CONVS = [{"channels": 32, "kernel": 8, "stride": 4}, {"channels": 64, "kernel": 4, "stride": 2},
                  {"channels": 64, "kernel": 3, "stride": 1}]


def tiny(generations: int = 3, **ga) -> ExperimentSpec:
    """tiny.yaml with `generations` and other `ga` fields."""
    return tiny_spec(generations=generations, **ga)


def siblings(arch: dict, n: int, noise_dir: Path) -> list[torch.Tensor]:
    """`n` children of one founder, each one Gaussian delta from it, built as a worker builds them."""
    noise = open_noise(3, 1 << 20, noise_dir)
    materializer = Materializer(noise, ParentCache(1 << 30))
    parent = founder(arch, 11)
    rng = np.random.default_rng(0)
    deltas = [sample_delta(rng, "gaussian", 0.05, 0.0, nets.layout(arch), noise.size) for _ in range(n)]
    return [materializer.build(mutate(parent, d)).flat for d in deltas]


# --- the batched pass ---------------------------------------------------------------------------


@pytest.mark.parametrize("network", ["tiny", "seed-003"])
def test_a_group_of_eight_scores_as_eight_single_evaluations_within_the_tolerance(network, tmp_path):
    if network == "tiny":
        problem = {**TINY["problem"], "data_seed": 0}
        arch = nets.convnet(problem["image"], TINY["network"]["convs"], TINY["network"]["hidden"], problem["classes"])
    else:  # experiments/memorize.yaml's network on 3x64x64 images, fewer of them
        problem = {"image": [3, 64, 64], "classes": 10, "batch_size": 32, "train_batches": 2, "val_batches": 1,
                   "data_seed": 0}
        arch = nets.convnet(problem["image"], SEED_003_CONVS, [512], 10)
    data = memorize.make_data(problem)
    flats = siblings(arch, 8, tmp_path)

    together = memorize.evaluate_many(arch, torch.stack(flats), data)
    alone = [memorize.evaluate(arch, flat, data) for flat in flats]

    assert len(together) == 8
    for one, many in zip(alone, together):
        assert set(one) == set(many)
        assert abs(one["fitness"] - many["fitness"]) <= batched.FITNESS_ATOL
        assert abs(one["train_loss"] - many["train_loss"]) <= batched.FITNESS_ATOL
        assert abs(one["val_loss"] - many["val_loss"]) <= batched.FITNESS_ATOL
        assert one["train_accuracy"] == many["train_accuracy"] and one["val_accuracy"] == many["val_accuracy"]
    # the children differ, so a pass that scored one child eight times would not pass the checks above
    assert len({round(r["fitness"], 4) for r in alone}) > 1


def test_a_batched_group_calls_each_layer_once_whatever_its_size(tmp_path):
    arch = nets.convnet([3, 16, 16], [{"channels": 4, "kernel": 4, "stride": 2}, {"channels": 6, "kernel": 3, "stride": 1}],
                        [16], 4)  # 2 convs + 2 linears
    x = torch.randn(5, 3, 16, 16)
    for group in (2, 8):
        stacked = torch.stack(siblings(arch, group, tmp_path))
        with torch.no_grad():
            assert batched.layer_calls(lambda: batched.runner(arch, stacked, path="grouped")(x)) == 4
            assert batched.layer_calls(lambda: [nets.forward(arch, flat, x) for flat in stacked]) == 4 * group


def test_counting_layer_calls_prints_nothing(capfd):
    # torch's profiler writes "USDT: ... profiler_start/stop" to file descriptor 2: a bench's table only
    print("before", flush=True)
    assert batched.layer_calls(lambda: torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))) == 1
    print("after", flush=True)
    out, err = capfd.readouterr()
    assert out == "before\nafter\n" and "USDT" not in err


def test_the_outputs_of_a_batched_pass_are_each_networks_own():
    arch = {"input": [3, 8, 8], "layers": [{"type": "conv", "out": 4, "kernel": 3}, {"type": "lrelu"},
                                            {"type": "conv", "out": 5, "kernel": 3, "stride": 2}, {"type": "tanh"},
                                            {"type": "flatten"}, {"type": "linear", "out": 6}, {"type": "sigmoid"},
                                            {"type": "linear", "out": 3}]}
    stacked = torch.randn(5, nets.layout(arch).size, generator=torch.Generator().manual_seed(1)) * 0.3
    x = torch.randn(7, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    before = x.clone()
    with torch.no_grad():
        out = batched.forward_many(arch, stacked, x)
        alone = torch.stack([nets.forward(arch, flat, x) for flat in stacked])
    assert batched.batchable(arch)
    assert out.shape == (5, 7, 3)
    assert torch.allclose(out, alone, rtol=0, atol=1e-5)
    assert torch.equal(x, before)  # in-place activations never write into the shared input


OWN_ARCH = {"input": [3, 8, 8], "layers": [{"type": "conv", "out": 4, "kernel": 3}, {"type": "relu"},
                                          {"type": "conv", "out": 5, "kernel": 3, "stride": 2}, {"type": "tanh"},
                                          {"type": "flatten"}, {"type": "linear", "out": 6}, {"type": "lrelu"},
                                          {"type": "linear", "out": 3}]}  # 2 convs, 2 linears


@pytest.mark.parametrize("path", batched.PATHS)
@pytest.mark.parametrize("frames", [1, 7])
def test_each_network_of_a_pass_on_its_own_batch_gives_its_own_outputs_on_that_batch(frames, path):
    # forward_each: Atari's networks, each on its own episodes' frames, whichever path a CPU chose
    stacked = torch.randn(5, nets.layout(OWN_ARCH).size, generator=torch.Generator().manual_seed(1)) * 0.3
    xs = torch.randn(5, frames, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    before = xs.clone()
    with torch.no_grad():
        run = batched.runner(OWN_ARCH, stacked, own=True, path=path)
        out = run(xs)
        alone = torch.stack([nets.forward(OWN_ARCH, flat, x) for flat, x in zip(stacked, xs)])
        on_first = torch.stack([nets.forward(OWN_ARCH, flat, xs[0]) for flat in stacked])
        calls = batched.layer_calls(lambda: run(xs))
    assert out.shape == (5, frames, 3)
    assert torch.allclose(out, alone, rtol=0, atol=1e-5)
    assert not torch.allclose(out[1:], on_first[1:], rtol=0, atol=1e-2)  # not every network on the first batch
    assert calls == (4 if path == "grouped" else 4 * 5)  # once for the 5 networks, or once per network
    assert torch.equal(xs, before)


@pytest.mark.parametrize("path", batched.PATHS)
def test_every_path_gives_each_network_its_outputs_on_the_shared_batch(path):
    stacked = torch.randn(5, nets.layout(OWN_ARCH).size, generator=torch.Generator().manual_seed(1)) * 0.3
    x = torch.randn(7, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        run = batched.runner(OWN_ARCH, stacked, path=path)
        out = run(x)
        calls = batched.layer_calls(lambda: run(x))
        alone = torch.stack([nets.forward(OWN_ARCH, flat, x) for flat in stacked])
    assert torch.allclose(out, alone, rtol=0, atol=1e-5)
    assert calls == (4 if path == "grouped" else 4 * 5)


# --- the path a machine chooses --------------------------------------------------------------------


@pytest.fixture
def calibration(tmp_path, monkeypatch):
    """An empty calibration file and no choice made yet in this process."""
    monkeypatch.setenv("EVOARENA_CALIBRATION", str(tmp_path / "paths.json"))
    monkeypatch.setattr(batched, "_chosen", {})
    return tmp_path / "paths.json"


def test_calibration_takes_the_path_that_costs_least_and_returns_its_output():
    clock = [0.0]

    def path(cost: float, out: float):
        def run(x):
            clock[0] += cost
            return torch.full((1,), out)
        return run

    name, seconds, out = batched.fastest({"grouped": path(3.0, 1), "each": path(1.0, 2), "one": path(2.0, 3)},
                                         torch.zeros(1), clock=lambda: clock[0])
    assert name == "each" and out.item() == 2
    assert seconds == {"grouped": 3.0, "each": 1.0, "one": 2.0}
    name, _, _ = batched.fastest({"grouped": path(1.0, 1), "one": path(1.0, 3)}, torch.zeros(1), clock=lambda: clock[0])
    assert name == "grouped"  # a tie goes to the batched pass


def test_a_machine_chooses_once_then_reads_its_choice_from_disk(calibration, monkeypatch):
    stacked = torch.randn(4, nets.layout(OWN_ARCH).size, generator=torch.Generator().manual_seed(1)) * 0.3
    x = torch.randn(2, 3, 8, 8)
    timed = []
    monkeypatch.setattr(batched, "fastest", lambda paths, x: timed.append(sorted(paths)) or ("one", {}, paths["one"](x)))
    with torch.no_grad():
        first = batched.runner(OWN_ARCH, stacked)(x)
        batched.runner(OWN_ARCH, stacked)(x)
        batched.runner(OWN_ARCH, stacked[:3])(x)  # 3 networks: the size of 4 rounded up, the same choice
        assert timed == [["each", "grouped", "one"]]
        monkeypatch.setattr(batched, "_chosen", {})  # another process on this machine
        again = batched.runner(OWN_ARCH, stacked)(x)
        assert len(timed) == 1 and torch.equal(again, first)
        batched.runner(OWN_ARCH, stacked[:1])(x)  # one network: another size; its own pass is the group's
        assert timed[1:] == [["grouped", "one"]]
        monkeypatch.setattr(batched, "_chosen", {})
        monkeypatch.setattr(batched, "cpu_model", lambda: "another CPU")
        batched.runner(OWN_ARCH, stacked)(x)
        assert len(timed) == 3  # another CPU chooses for itself
    stored = json.loads(calibration.read_text())
    assert {entry["path"] for entry in stored.values()} == {"one"} and len(stored) == 3
    assert any(torch.__version__ in key and batched.cpu_model() in key for key in stored)
    assert batched.paths_taken(OWN_ARCH, 4) == ["one"]


def test_a_runner_called_once_a_step_looks_its_choice_up_once_per_batch_size(calibration, monkeypatch):
    # a game calls one runner at every step; the key (a hash of the architecture) cost 8% of a DQN step
    stacked = torch.randn(4, nets.layout(OWN_ARCH).size, generator=torch.Generator().manual_seed(1)) * 0.3
    keys = []
    real_key = batched._key
    monkeypatch.setattr(batched, "_key", lambda *a, **k: keys.append(a[2]) or real_key(*a, **k))
    monkeypatch.setattr(batched, "fastest", lambda paths, x: ("grouped", {}, paths["grouped"](x)))
    run = batched.runner(OWN_ARCH, stacked)
    with torch.no_grad():
        outs = [run(torch.randn(2, 3, 8, 8)) for _ in range(5)] + [run(torch.randn(7, 3, 8, 8)) for _ in range(3)]
    assert keys == [2, 7]
    assert [tuple(o.shape[:2]) for o in outs] == [(4, 2)] * 5 + [(4, 7)] * 3


def test_a_choice_another_process_stored_first_is_the_one_taken(calibration, monkeypatch):
    # two workers of one machine calibrating at once take the same path: the first on file
    stacked = torch.randn(4, nets.layout(OWN_ARCH).size, generator=torch.Generator().manual_seed(1)) * 0.3
    x = torch.randn(2, 3, 8, 8)

    def other_process_first(paths, x):
        (key,) = [batched._key(OWN_ARCH, 4, 2, False)]
        calibration.write_text(json.dumps({key: {"path": "each", "seconds": {}}}))
        return "one", {}, paths["one"](x)

    monkeypatch.setattr(batched, "fastest", other_process_first)
    with torch.no_grad():
        out = batched.runner(OWN_ARCH, stacked)(x)
        each = batched.runner(OWN_ARCH, stacked, path="each")(x)
    assert torch.equal(out, each)
    assert batched.paths_taken(OWN_ARCH, 4) == ["each"]
    assert json.loads(calibration.read_text())[batched._key(OWN_ARCH, 4, 2, False)]["path"] == "each"


def test_the_chosen_path_computes_what_one_network_at_a_time_computes(calibration):
    stacked = torch.randn(6, nets.layout(OWN_ARCH).size, generator=torch.Generator().manual_seed(1)) * 0.3
    xs = torch.randn(6, 2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = batched.forward_each(OWN_ARCH, stacked, xs)
        alone = torch.stack([nets.forward(OWN_ARCH, flat, x) for flat, x in zip(stacked, xs)])
    assert torch.allclose(out, alone, rtol=0, atol=1e-5)
    assert len(batched.paths_taken(OWN_ARCH, 6)) == 1


def test_without_onednn_the_group_takes_its_one_pass_and_chooses_nothing(calibration, monkeypatch):
    # reproducible arithmetic turns oneDNN off: one path on every CPU, so the same bits on every CPU
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    monkeypatch.setattr(batched, "fastest", lambda *a: pytest.fail("calibrated without oneDNN"))
    stacked = torch.randn(3, nets.layout(OWN_ARCH).size, generator=torch.Generator().manual_seed(1)) * 0.3
    xs = torch.randn(3, 2, 3, 8, 8)
    with torch.no_grad():
        out = batched.forward_each(OWN_ARCH, stacked, xs)
        calls = batched.layer_calls(lambda: batched.forward_each(OWN_ARCH, stacked, xs))
    assert torch.allclose(out, torch.stack([nets.forward(OWN_ARCH, f, x) for f, x in zip(stacked, xs)]), rtol=0, atol=1e-5)
    assert calls == 4 and not calibration.exists()


def test_a_machine_times_a_game_in_lockstep_against_one_network_after_another_once(calibration, monkeypatch):
    stacked = torch.randn(4, nets.layout(OWN_ARCH).size, generator=torch.Generator().manual_seed(1)) * 0.3
    xs = torch.randn(4, 2, 3, 8, 8)
    timed = []
    real = batched.fastest

    def fastest(paths, x, **budget):
        timed.append(sorted(paths))
        if sorted(paths) != sorted(batched.PLAYS):
            return real(paths, x, **budget)  # the lockstep pass's own path, chosen as always
        for name in paths:  # each way runs, computing each network's output on its own batch
            assert torch.allclose(paths[name](x), torch.stack([nets.forward(OWN_ARCH, f, b) for f, b in zip(stacked, x)]),
                                  rtol=0, atol=1e-5)
        return "lockstep", {"lockstep": 1.0, "apart": 1.0 + batched.LOCKSTEP_MARGIN}, None  # within the margin

    monkeypatch.setattr(batched, "fastest", fastest)
    with torch.no_grad():
        assert batched.plays_apart(OWN_ARCH, stacked, xs) is True
        assert batched.plays_apart(OWN_ARCH, stacked, xs) is True
        monkeypatch.setattr(batched, "_chosen", {})  # another process of this machine: read from disk
        assert batched.plays_apart(OWN_ARCH, stacked[:3], xs[:3]) is True
    assert timed.count(sorted(batched.PLAYS)) == 1
    assert "apart" in batched.paths_taken(OWN_ARCH, 4)
    assert [e["path"] for k, e in json.loads(calibration.read_text()).items() if '"play"' in k] == ["apart"]


def test_one_network_or_a_group_without_onednn_is_never_played_apart(calibration, monkeypatch):
    monkeypatch.setattr(batched, "fastest", lambda *a: pytest.fail("timed a play that has no choice"))
    stacked = torch.randn(3, nets.layout(OWN_ARCH).size, generator=torch.Generator().manual_seed(1)) * 0.3
    xs = torch.randn(3, 2, 3, 8, 8)
    assert batched.plays_apart(OWN_ARCH, stacked[:1], xs[:1]) is False
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    assert batched.plays_apart(OWN_ARCH, stacked, xs) is False
    assert not calibration.exists()


def test_own_batches_of_a_network_without_a_leading_convolution_go_one_network_at_a_time():
    arch = {"input": [6], "layers": [{"type": "linear", "out": 4}, {"type": "relu"}, {"type": "linear", "out": 2}]}
    stacked = torch.randn(3, nets.layout(arch).size, generator=torch.Generator().manual_seed(1))
    xs = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = batched.forward_each(arch, stacked, xs)
    assert torch.equal(out, torch.stack([nets.forward(arch, flat, x) for flat, x in zip(stacked, xs)]))


def test_an_architecture_with_a_layer_the_batched_pass_lacks_runs_one_network_after_another():
    arch = {"input": [3, 8, 8], "layers": [{"type": "conv", "out": 4, "kernel": 3}, {"type": "bnorm"},
                                            {"type": "flatten"}, {"type": "linear", "out": 3}]}
    stacked = torch.randn(3, nets.layout(arch).size, generator=torch.Generator().manual_seed(1))
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        out = batched.forward_many(arch, stacked, x)
        calls = batched.layer_calls(lambda: batched.forward_many(arch, stacked, x))
    assert not batched.batchable(arch)
    assert torch.equal(out, torch.stack([nets.forward(arch, flat, x) for flat in stacked]))
    assert calls == 2 * 3  # conv and linear, once per network


def test_a_pass_takes_as_many_networks_as_half_the_cache_holds():
    arch = nets.convnet([3, 16, 16], [{"channels": 4, "kernel": 4, "stride": 2}], [16], 4)
    one = nets.layout(arch).size * 4
    assert batched.group_cap(arch, 20 * one) == 10
    assert batched.group_cap(arch, 21 * one) == 10
    assert batched.group_cap(arch, one) == 1  # never less than one network
    assert batched.images_per_pass(64, 512) == batched.GROUP_SAMPLES // 64
    assert batched.images_per_pass(2, 512) == 512


@pytest.mark.skipif("avx2" not in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else True,
                    reason="reproducible arithmetic needs an x86-64 CPU with AVX2")
def test_a_reproducible_process_runs_groups_in_one_pass_without_onednn(tmp_path):
    # its oneDNN is off: a pass in oneDNN's blocked layout would not run at all
    code = f"""
import json, torch
from evoarena.encoding import arithmetic, batched, nets
arithmetic.apply("reproducible")
arch = json.loads({json.dumps(json.dumps(OWN_ARCH))})
stacked = torch.randn(3, nets.layout(arch).size, generator=torch.Generator().manual_seed(1)) * 0.3
xs = torch.randn(3, 2, 3, 8, 8)
with torch.no_grad():
    each = batched.forward_each(arch, stacked, xs)
    many = batched.forward_many(arch, stacked, xs[0])
    alone = torch.stack([nets.forward(arch, f, x) for f, x in zip(stacked, xs)])
    shared = torch.stack([nets.forward(arch, f, xs[0]) for f in stacked])
print(float((each - alone).abs().max()), float((many - shared).abs().max()))
"""
    env = {**os.environ, "EVOARENA_CALIBRATION": str(tmp_path / "paths.json")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert all(float(gap) <= 1e-5 for gap in done.stdout.split())
    assert not (tmp_path / "paths.json").exists()  # nothing chosen: one path on every CPU


# --- packing siblings into one message -------------------------------------------------------------


def plan(generation: int = 1, **ga) -> list[dict]:
    """The tasks of a GA generation after the founders, parents being two founders."""
    spec = tiny(**ga)
    algo = GA(spec)
    founders = algo.plan(0, None).about
    state = {"parents": [g.to_json() for g in founders[:2]], "checkpoints": []}
    return algo.plan(generation, state).tasks


def test_siblings_travel_together_and_unpack_to_the_tasks_the_master_made():
    tasks = plan(children_per_parent=5, eval_group=3)  # 1 elite, then 5 children of each of 2 parents
    packed = pack(copy.deepcopy(tasks), "evaluate")

    sizes = [len(t["children"]) if "children" in t else 1 for t in packed]
    assert sizes == [1, 3, 2, 3, 2]  # the elite alone, each parent's children in groups of at most 3
    unpacked = [c for t in packed for c in (children_tasks(t) if "children" in t else [t])]
    assert unpacked == tasks
    group = packed[1]
    assert group["parent"]["id"] == tasks[1]["genome"]["parents"][0]
    assert "genome" not in group and all(set(c) == {"delta", "role", "checkpoint"} for c in group["children"])


def test_tasks_that_did_not_ask_for_groups_are_sent_as_they_are():
    tasks = plan(children_per_parent=5)
    assert pack(copy.deepcopy(tasks), "evaluate") == tasks


def test_crossover_children_and_founders_are_never_grouped():
    founders = GA(tiny(eval_group=4)).plan(0, None).tasks
    assert pack(copy.deepcopy(founders), "evaluate") == founders
    tasks = plan(children_per_parent=6, eval_group=4, crossover_rate=1.0)
    assert pack(copy.deepcopy(tasks), "evaluate") == tasks


def test_a_group_message_grows_by_a_delta_per_child_not_a_genome():
    tasks = plan(children_per_parent=8, eval_group=8)
    group = next(t for t in pack(copy.deepcopy(tasks), "evaluate") if "children" in t)
    alone = sum(len(json.dumps(t)) for t in tasks[1:9])
    assert len(json.dumps(group)) < alone / 3


def test_an_error_for_a_group_is_recorded_against_each_child_under_its_own_id():
    tasks = plan(children_per_parent=3, eval_group=3)
    group = pack(copy.deepcopy(tasks), "evaluate")[1]
    summaries = unpack(error_summary(task_id("evaluate", group), group, "the worker process died"))
    assert [s["_id"] for s in summaries] == [task_id("evaluate", t) for t in tasks[1:4]]
    assert all(s["error"] == "the worker process died" for s in summaries)


def test_a_group_goes_to_the_worker_holding_its_parent_and_leaves_its_children_there():
    tasks = plan(children_per_parent=3, eval_group=3)
    packed = pack(copy.deepcopy(tasks), "evaluate")
    first, second = packed[1], packed[2]  # the groups of parents 1 and 2
    router = AffinityRouter()
    router.record("w1", second["parent"]["id"])
    assert wanted(second) == [second["parent"]["id"]]
    assert router.pick(packed, "w1") == 2
    assert router.pick(packed, "w2") == 0
    summary = {"group": [{"genome_id": t["genome"]["id"]} for t in children_tasks(first)]}
    assert built(first, summary) == [first["parent"]["id"]] + [t["genome"]["id"] for t in tasks[1:4]]


# --- end to end: the stored documents ------------------------------------------------------------------


def config(root: Path, store: str) -> WorkerConfig:
    return WorkerConfig(f"sqlite:///{root / store}.db", str(root / f"{store}-artifacts"), str(root / "noise"), threads=1)


def stored(root: Path, store: str, name: str) -> dict[str, dict]:
    return {d["_id"]: d for d in open_store(f"sqlite:///{root / store}.db").find_results(name)}


def assert_same_documents(alone: dict[str, dict], grouped: dict[str, dict]) -> None:
    assert grouped.keys() == alone.keys()
    for _id, doc in alone.items():
        other = grouped[_id]
        for field in ("genome_id", "genome", "parents", "role", "build", "error"):
            assert other[field] == doc[field], (_id, field)
        # the same parents saved under the same names (each run has its own artifact directory)
        assert [(c["id"], Path(c["uri"]).name) for c in other["checkpoints"]] == \
            [(c["id"], Path(c["uri"]).name) for c in doc["checkpoints"]]
        assert abs(other["fitness"] - doc["fitness"]) <= batched.FITNESS_ATOL
        assert other["metrics"].keys() == doc["metrics"].keys()


def test_a_run_with_groups_stores_the_documents_of_a_run_without(tmp_path):
    scheduler.run(tiny(children_per_parent=4, checkpoint_every=2), open_store(config(tmp_path, "alone").store_url),
                  InlineExecutor(config(tmp_path, "alone")))
    grouped = InlineExecutor(config(tmp_path, "grouped"))
    sent = []
    run_on_group = grouped.worker.evaluate_group
    grouped.worker.evaluate_group = lambda task: sent.append(len(task["children"])) or run_on_group(task)
    scheduler.run(tiny(children_per_parent=4, checkpoint_every=2, eval_group=4),
                  open_store(config(tmp_path, "grouped").store_url), grouped)

    assert sent == [4, 4, 4, 4]  # generations 1 and 2, two parents each
    assert_same_documents(stored(tmp_path, "alone", "tiny"), stored(tmp_path, "grouped", "tiny"))
    assert any(d["checkpoints"] for d in stored(tmp_path, "grouped", "tiny").values())  # generation 2 saved parents


def test_a_group_whose_children_are_partly_stored_sends_only_the_others_and_keeps_the_stored(tmp_path):
    spec = tiny(children_per_parent=4, eval_group=4)
    store = open_store(config(tmp_path, "main").store_url)
    scheduler.register(spec, store)
    tasks = plan(children_per_parent=4, eval_group=4)  # the elite, then 4 children of each of 2 parents
    scheduler.plan(store, "evaluate", tasks)  # the master planned the step, then stopped
    worker = Worker(config(tmp_path, "main"))
    for task in tasks[1:3]:  # two children of the first parent ran alone before the master stopped
        run_on(worker, "evaluate", task)
    earlier = {task_id("evaluate", t): store.get_result(task_id("evaluate", t)) for t in tasks[1:3]}
    executor = InlineExecutor(config(tmp_path, "main"))
    sent = []
    evaluate_group = executor.worker.evaluate_group
    executor.worker.evaluate_group = lambda task: sent.append(len(task["children"])) or evaluate_group(task)

    results, _ = scheduler.run_step(spec.name, store, executor, 1, Step("evaluate", tasks))

    assert sent == [2, 4]  # the first parent's two missing children, then the second parent's four
    assert [r["_id"] for r in results] == [task_id("evaluate", t) for t in tasks]
    assert all(store.get_result(i) == doc for i, doc in earlier.items())  # not run again, not overwritten


def test_the_local_executor_runs_group_tasks(tmp_path):
    spec = tiny(generations=2, children_per_parent=4, eval_group=4)
    executor = LocalExecutor(config(tmp_path, "local"), workers=1)
    try:
        scheduler.run(spec, open_store(config(tmp_path, "local").store_url), executor)
    finally:
        executor.close()
    scheduler.run(tiny(generations=2, children_per_parent=4), open_store(config(tmp_path, "alone").store_url),
                  InlineExecutor(config(tmp_path, "alone")))
    assert_same_documents(stored(tmp_path, "alone", "tiny"), stored(tmp_path, "local", "tiny"))


@pytest.mark.slow
def test_the_celery_fleet_runs_group_tasks(tmp_path):
    if not broker_up():
        pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672", pytrace=False)
    spec = tiny(generations=3, children_per_parent=4, eval_group=4)
    with Fleet(tmp_path) as fleet:
        fleet.start("alpha")
        fleet.wait_ready()
        scheduler.run(spec, fleet.store, fleet.executor())
        log = fleet.log("alpha")
    scheduler.run(tiny(generations=3, children_per_parent=4), open_store(config(tmp_path, "alone").store_url),
                  InlineExecutor(config(tmp_path, "alone")))
    assert_same_documents(stored(tmp_path, "alone", "tiny"), stored(tmp_path, "fleet", "tiny"))
    finished = [json.loads(line) for line in log.splitlines() if '"event": "task done"' in line and '"op": "evaluate"' in line]
    # founders alone; then per generation the elite alone and each parent's 4 children in one message
    assert sorted(line["children"] for line in finished) == [0] * (9 + 2) + [4] * 4


def test_an_atari_run_with_groups_plays_each_childs_own_episodes_as_a_run_without(tmp_path):
    sent = []
    for store, ga in (("alone", {}), ("grouped", {"eval_group": 3})):
        spec = parse_spec(atari_spec(generations=2, parents=1, children=6, elite_candidates=1, **ga))
        executor = InlineExecutor(config(tmp_path, store))
        evaluate_group = executor.worker.evaluate_group
        executor.worker.evaluate_group = lambda task: sent.append(len(task["children"])) or evaluate_group(task)
        scheduler.run(spec, open_store(config(tmp_path, store).store_url), executor)
    alone, grouped = stored(tmp_path, "alone", "atari-tiny"), stored(tmp_path, "grouped", "atari-tiny")

    assert sent == [3, 3]  # generation 1's six children
    assert_same_documents(alone, grouped)
    for _id, doc in alone.items():
        assert grouped[_id]["metrics"]["episode_seeds"] == doc["metrics"]["episode_seeds"]
        assert grouped[_id]["metrics"]["frames"] == doc["metrics"]["frames"]


def test_a_group_larger_than_the_cache_allows_is_scored_in_passes_of_what_it_allows(tmp_path, monkeypatch):
    tasks = plan(children_per_parent=5, eval_group=5)
    group = pack(copy.deepcopy(tasks), "evaluate")[1]
    arch = Genome.from_json(tasks[1]["genome"]).arch
    one = nets.layout(arch).size * 4
    store = open_store(config(tmp_path, "main").store_url)
    scheduler.register(tiny(children_per_parent=5, eval_group=5), store)
    scheduler.plan(store, "evaluate", tasks)
    small = WorkerConfig(**{**config(tmp_path, "main").__dict__, "cache_bytes": 4 * one})  # 2 networks per pass
    passes = []
    evaluate_many = memorize.evaluate_many
    monkeypatch.setattr(memorize, "evaluate_many", lambda a, stacked, d: passes.append(len(stacked)) or evaluate_many(a, stacked, d))

    summaries = unpack(run_on(Worker(small), "evaluate", group))

    assert passes == [2, 2, 1]
    assert [s["_id"] for s in summaries] == [task_id("evaluate", t) for t in tasks[1:6]]
    assert all(s["error"] is None for s in summaries)
    alone_store = open_store(config(tmp_path, "alone").store_url)  # the master makes the store
    scheduler.register(tiny(children_per_parent=5, eval_group=5), alone_store)
    scheduler.plan(alone_store, "evaluate", tasks)
    alone = Worker(config(tmp_path, "alone"))
    for task, summary in zip(tasks[1:6], summaries):
        assert abs(run_on(alone, "evaluate", task)["fitness"] - summary["fitness"]) <= batched.FITNESS_ATOL


def test_a_group_whose_parent_does_not_match_its_id_is_refused_and_stores_nothing(tmp_path):
    tasks = plan(children_per_parent=3, eval_group=3)
    group = pack(copy.deepcopy(tasks), "evaluate")[1]
    group["parent"]["init_seed"] += 1  # the id stays: a forged or corrupted message
    store = open_store(config(tmp_path, "main").store_url)
    scheduler.register(tiny(children_per_parent=3, eval_group=3), store)
    scheduler.plan(store, "evaluate", tasks)

    summary = run_on(Worker(config(tmp_path, "main")), "evaluate", group)

    assert summary["error"].startswith("TaskRefused") and group["parent"]["id"] in summary["error"]
    assert store.find_results("tiny") == []
