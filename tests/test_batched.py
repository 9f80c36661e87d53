"""Population-batched evaluation: a group of siblings in one message and one pass gives what one
task per child gives (batched.py, fleet/groups.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import Fleet, broker_up
from evoarena import batched, nets, scheduler
from evoarena.evolve import Step
from evoarena.evolve.ga import GA
from evoarena.fleet.executor import InlineExecutor, LocalExecutor
from evoarena.fleet.groups import children_tasks, pack, unpack
from evoarena.fleet.routing import AffinityRouter, built, wanted
from evoarena.genome import Genome, founder, mutate, sample_delta
from evoarena.materialize import Materializer, ParentCache
from evoarena.noise import open_noise
from evoarena.problems import memorize
from evoarena.spec import ExperimentSpec, parse_spec
from evoarena.store import open_store
from evoarena.store.results import error_summary, task_id
from evoarena.worker import Worker, WorkerConfig, run_on

ROOT = Path(__file__).resolve().parent.parent
TINY = yaml.safe_load((ROOT / "experiments" / "tiny.yaml").read_text())
SEED_003_CONVS = [{"channels": 32, "kernel": 8, "stride": 4}, {"channels": 64, "kernel": 4, "stride": 2},
                  {"channels": 64, "kernel": 3, "stride": 1}]


def tiny(generations: int = 3, **ga) -> ExperimentSpec:
    """tiny.yaml with `generations` and other `ga` fields."""
    data = copy.deepcopy(TINY)
    data["ga"] = {**data["ga"], "generations": generations, **ga}
    return parse_spec(data)


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
            assert batched.layer_calls(lambda: batched.forward_many(arch, stacked, x)) == 4
            assert batched.layer_calls(lambda: [nets.forward(arch, flat, x) for flat in stacked]) == 4 * group


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


@pytest.mark.parametrize("frames", [2, batched.OWN_GROUPED_BATCH + 3])
def test_each_network_of_a_pass_on_its_own_batch_gives_its_own_outputs_on_that_batch(frames):
    # forward_each: Atari's networks, each on its own episodes' frames: one grouped pass for a few
    # frames a network, each network's own pass for more
    arch = {"input": [3, 8, 8], "layers": [{"type": "conv", "out": 4, "kernel": 3}, {"type": "relu"},
                                            {"type": "conv", "out": 5, "kernel": 3, "stride": 2}, {"type": "tanh"},
                                            {"type": "flatten"}, {"type": "linear", "out": 6}, {"type": "lrelu"},
                                            {"type": "linear", "out": 3}]}
    stacked = torch.randn(5, nets.layout(arch).size, generator=torch.Generator().manual_seed(1)) * 0.3
    xs = torch.randn(5, frames, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    before = xs.clone()
    with torch.no_grad():
        out = batched.forward_each(arch, stacked, xs)
        alone = torch.stack([nets.forward(arch, flat, x) for flat, x in zip(stacked, xs)])
        on_first = torch.stack([nets.forward(arch, flat, xs[0]) for flat in stacked])
        calls = batched.layer_calls(lambda: batched.forward_each(arch, stacked, xs))
    assert out.shape == (5, frames, 3)
    assert torch.allclose(out, alone, rtol=0, atol=1e-5)
    assert not torch.allclose(out[1:], on_first[1:], rtol=0, atol=1e-2)  # not every network on the first batch
    # 2 convs and 2 linears: once for the 5 networks, or once per network above OWN_GROUPED_BATCH frames
    assert calls == (4 if frames <= batched.OWN_GROUPED_BATCH else 4 * 5)
    assert torch.equal(xs, before)


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
    from test_atari import atari_spec

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
