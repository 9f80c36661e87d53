"""Atari as in Such et al. 2017: the preprocessing, frames counted as the paper counts them,
episodes that repeat given their seed, the paper's selection and elite re-evaluation, and the
frame budget that ends a run. A tiny network (one conv, 16 hidden units) keeps them fast; the
paper's network is the same code with the spec's default `network`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from evoarena.encoding import nets
from evoarena import scheduler
from evoarena.report.build import build_page
from evoarena.cli.status import status_lines
from evoarena.evolve import ga
from evoarena.worker.inline import InlineExecutor
from evoarena.encoding.genome import founder
from evoarena.problems import atari
from evoarena.spec.experiment import GASpec, SpecError, parse_spec
from evoarena.store import open_store
from evoarena.worker.worker import WorkerConfig
from helpers import ATARI_NET, atari_problem, atari_spec


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """These networks are tiny: more intra-op threads only wait on each other (and on the emulator)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def weights(arch: dict, init_seed: int) -> torch.Tensor:
    flat = torch.empty(nets.layout(arch).size)
    nets.init_layers(arch, init_seed, flat)
    return flat


# --- the preprocessing and the frames ----------------------------------------------------------


def test_an_observation_is_four_stacked_grey_84x84_frames_of_bytes():
    env = atari.make_env(atari_problem())
    first, _ = env.reset(seed=0)
    after, *_ = env.step(0)
    env.close()

    assert first.shape == (4, 84, 84) and first.dtype == np.uint8
    assert after.shape == (4, 84, 84) and after.dtype == np.uint8


def test_frames_counted_are_four_per_step_with_no_noops():
    env = atari.make_env(atari_problem(noop_max=0))
    _, info = env.reset(seed=3)
    for _ in range(25):
        _, _, terminated, truncated, info = env.step(0)
    env.close()

    assert not (terminated or truncated)
    assert info["episode_frame_number"] == 100


def test_frames_counted_are_four_per_step_plus_the_noops_of_the_reset():
    env = atari.make_env(atari_problem(noop_max=30))
    _, reset_info = env.reset(seed=3)
    noops = reset_info["episode_frame_number"]
    for _ in range(25):
        _, _, _, _, info = env.step(0)
    env.close()

    assert 1 <= noops <= 30
    assert info["episode_frame_number"] == 4 * 25 + noops


def test_an_episode_stops_at_its_cap_in_emulator_frames():
    arch = atari.architecture(atari_problem(), ATARI_NET)

    [[episode]] = atari.play(arch, [weights(arch, 0)], [[1]], atari.make_data(atari_problem(max_episode_frames=400)))

    assert episode.frames == 400
    assert episode.steps == 99  # 5 no-ops + 98 full steps of 4 frames, then 3 frames of the 99th


# --- determinism -------------------------------------------------------------------------------


def test_an_episode_played_twice_with_its_seed_gives_the_same_return_and_frames():
    arch = atari.architecture(atari_problem(), ATARI_NET)
    net = weights(arch, 3)

    first = atari.play(arch, [net], [[7]], atari.make_data(atari_problem()))
    again = atari.play(arch, [net], [[7]], atari.make_data(atari_problem()))

    assert first[0][0].ret == 120.0  # a network that scores, so the equality says something
    assert again == first


@pytest.mark.parametrize("apart", [False, True], ids=["lockstep", "one network after another"])
def test_episodes_played_together_give_what_each_gives_alone(apart, monkeypatch):
    # whichever way this machine plays a group (batched.plays_apart), each network gets its own episodes
    arch = atari.architecture(atari_problem(), ATARI_NET)
    nets_ = [weights(arch, 1), weights(arch, 3)]
    data = atari.make_data(atari_problem())
    monkeypatch.setattr(atari.batched, "plays_apart", lambda arch, stacked, xs: apart)
    groups = []
    runner = atari.batched.runner
    monkeypatch.setattr(atari.batched, "runner", lambda arch, stacked, **kw: groups.append(len(stacked)) or runner(arch, stacked, **kw))

    together = atari.play(arch, nets_, [[7, 8], [7]], data)
    sizes, groups[:] = list(groups), []
    alone = [atari.play(arch, [nets_[0]], [[7]], data)[0] + atari.play(arch, [nets_[0]], [[8]], data)[0],
             atari.play(arch, [nets_[1]], [[7]], data)[0]]

    assert [[(e.ret, e.frames) for e in es] for es in together] == [[(e.ret, e.frames) for e in es] for es in alone]
    assert set(sizes) == ({1} if apart else {1, 2})  # lockstep: both networks' pass, then the one still playing


def test_episode_seeds_depend_on_generation_and_genome_and_extend_with_the_count():
    p = atari_problem()

    assert atari.episode_seeds(p, 4, "abc", 3) == atari.episode_seeds(p, 4, "abc", 3)
    assert atari.episode_seeds(p, 4, "abc", 5)[:3] == atari.episode_seeds(p, 4, "abc", 3)
    assert atari.episode_seeds(p, 5, "abc", 3) != atari.episode_seeds(p, 4, "abc", 3)
    assert atari.episode_seeds(p, 4, "abd", 3) != atari.episode_seeds(p, 4, "abc", 3)


# --- the paper's GA ----------------------------------------------------------------------------


ARCH = nets.convnet([4, 84, 84], ATARI_NET["convs"], ATARI_NET["hidden"], 18)


def uniform(**fields) -> GASpec:
    return GASpec(**{"generations": 5, "parents": 3, "selection": "uniform", "children": 40, "elites": 1, **fields})


def test_uniform_selection_draws_every_parent_from_the_top_t_only():
    population = [ga.Scored(founder(ARCH, seed), float(seed)) for seed in range(10)]
    spec = uniform()
    parents, _ = ga.select(population, spec)

    children = ga.reproduce(parents, [], spec, ga.generation_rng(0, 1), 65_536)

    top = {founder(ARCH, seed).id for seed in (9, 8, 7)}
    assert len(children) == 40
    assert {c.genome.parents[0] for c in children} == top  # all three drawn, nobody else


def test_uniform_selection_is_the_same_for_the_same_generation_seed_and_differs_for_another():
    parents = [founder(ARCH, 100 + i) for i in range(3)]

    def draw(generation: int) -> list[int]:
        return ga.parent_of_each_child(3, uniform(), ga.generation_rng(0, generation))

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    assert [c.genome.id for c in ga.reproduce(parents, [], uniform(), ga.generation_rng(0, 1), 65_536)] == \
           [c.genome.id for c in ga.reproduce(parents, [], uniform(), ga.generation_rng(0, 1), 65_536)]


def test_per_parent_selection_keeps_each_parent_c_children_in_order():
    spec = GASpec(generations=2, parents=2, children_per_parent=3, elites=0)

    assert ga.parent_of_each_child(2, spec, ga.generation_rng(0, 1)) == [0, 0, 0, 1, 1, 1]


def results_for(step, fitness: dict[str, float]) -> list[dict]:
    """Hand-made result documents for a step's tasks."""
    return [{"genome_id": g.id, "fitness": fitness[g.id], "metrics": {"frames": 100}, "error": None}
            for g in step.about]


def test_the_elite_is_the_candidate_with_the_best_mean_over_its_extra_episodes():
    algo = ga.GA(parse_spec(atari_spec()))
    gen0 = algo.plan(0, None)
    # founders' single-episode scores: a and b are the two candidates, a ahead
    a, b, *rest = [g.id for g in gen0.about]
    state0 = algo.advance(0, None, gen0, results_for(gen0, {a: 900.0, b: 500.0, **{r: 10.0 for r in rest}}))
    assert [c["id"] for c in state0["candidates"]] == [a, b]

    gen1 = algo.plan(1, state0)
    roles = {t["genome"]["id"]: (t["role"], t.get("episodes")) for t in gen1.tasks}
    assert roles[a] == roles[b] == ("candidate", 2)
    children = [g.id for g in gen1.about if g.id not in (a, b)]
    # re-evaluated over 2 episodes, a's mean (lucky before) falls below b's
    state1 = algo.advance(1, state0, gen1, results_for(gen1, {a: 150.0, b: 400.0, **{c: 20.0 for c in children}}))

    assert state1["best"]["genome_id"] == b
    assert state1["stats"]["elite"] == 400.0
    parent_ids = [p["id"] for p in state1["parents"]]
    assert parent_ids[0] == b and a not in parent_ids  # the losing candidate leaves
    assert state1["stats"]["errors"] == 0 and state1["stats"]["evaluated"] == len(gen1.tasks)
    assert state1["stats"]["frames"] == 100 * len(gen1.tasks)
    assert state1["stats"]["frames_total"] == 100 * (len(gen0.tasks) + len(gen1.tasks))


def test_elite_candidates_are_refused_for_a_problem_without_episodes():
    data = atari_spec()
    data["problem"] = {"kind": "memorize", "image": [3, 16, 16], "classes": 4}

    with pytest.raises(SpecError, match=r"ga\.elite_candidates = 2: is for a problem with episodes"):
        parse_spec(data)


def test_uniform_selection_without_a_children_count_is_refused():
    data = atari_spec()
    del data["ga"]["children"]

    with pytest.raises(SpecError, match=r"ga\.children = None: selection = uniform needs"):
        parse_spec(data)


# --- whole runs: the frame budget, and a resume ---------------------------------------------------


@pytest.fixture
def lab(tmp_path: Path) -> Iterator:
    stores = {}

    def run(spec, store: str = "main", interrupt_after: int | None = None):
        url = f"sqlite:///{tmp_path / store / 'results.db'}"
        stores.setdefault(store, open_store(url))
        executor = InlineExecutor(WorkerConfig(url, str(tmp_path / store / "art"), str(tmp_path / "noise"), threads=1))
        if interrupt_after is not None:
            executor = Interrupting(executor, interrupt_after)
        return scheduler.run(spec, stores[store], executor), stores[store]

    yield run
    for store in stores.values():
        store.close()


class Interrupting:
    """Stops the scheduler like Ctrl-C once `n` tasks have finished."""

    def __init__(self, inner, n: int):
        self.inner, self.n, self.finished = inner, n, 0

    def map(self, op, tasks):
        for summary in self.inner.map(op, tasks):
            yield summary
            self.finished += 1
            if self.finished == self.n:
                raise KeyboardInterrupt

    def close(self):
        self.inner.close()


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory) -> Iterator:
    """One run with a budget of 1,500 frames and room for 50 generations, shared by the tests below."""
    root = tmp_path_factory.mktemp("budget")
    url = f"sqlite:///{root / 'results.db'}"
    spec = parse_spec(atari_spec(frame_budget=1500, generations=50))
    store = open_store(url)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    scheduler.run(spec, store, InlineExecutor(WorkerConfig(url, str(root / "art"), str(root / "noise"), threads=1)))
    torch.set_num_threads(before)
    yield spec, store
    store.close()


def test_the_run_stops_at_the_first_generation_past_its_frame_budget(budget_run):
    spec, store = budget_run

    gens = [store.get_generation(spec.name, g) for g in range(store.last_generation(spec.name) + 1)]
    totals = [g["stats"]["frames_total"] for g in gens]
    assert len(gens) < 50
    assert totals[-1] >= 1500 > totals[-2]
    for index, doc in enumerate(gens):  # each generation's count is what its episodes played
        assert doc["stats"]["frames"] == sum(r["metrics"]["frames"] for r in store.find_results(spec.name, index))
    assert scheduler.finished(spec, store)
    assert store.get_experiment(spec.name)["status"] == "complete"


def test_status_shows_the_frames_played_against_the_budget(budget_run):
    spec, store = budget_run
    total = store.get_generation(spec.name, store.last_generation(spec.name))["stats"]["frames_total"]

    lines = status_lines(store, store.get_experiment(spec.name), spec)

    assert f"frames played {total:,} of a budget of 1,500" in "\n".join(lines)


def test_the_report_draws_fitness_and_no_training_loss(budget_run):
    spec, store = budget_run

    page = build_page(store, spec.name)

    assert "<h2>Fitness</h2>" in page
    assert "Training loss and accuracy" not in page


def test_an_interrupted_atari_run_continues_to_exactly_the_uninterrupted_result(lab):
    spec = parse_spec(atari_spec(generations=3))
    whole, whole_store = lab(spec, "whole")

    with pytest.raises(KeyboardInterrupt):
        lab(spec, "cut", interrupt_after=8)  # in generation 1: its candidates' re-evaluation or children
    resumed, cut_store = lab(spec, "cut")

    def fitness(store):
        return sorted((d["generation"], d["genome_id"], d["fitness"], d["metrics"]["frames"]) for d in store.find_results(spec.name))

    assert fitness(cut_store) == fitness(whole_store)
    assert resumed["best"] == whole["best"] and resumed["stats"]["frames_total"] == whole["stats"]["frames_total"]
    assert resumed["candidates"] == whole["candidates"]


def test_siblings_scored_in_groups_store_what_they_store_one_by_one(lab, monkeypatch):
    # eval_group: siblings travel as one task and their episodes share one vmapped forward pass per step
    alone, alone_store = lab(parse_spec(atari_spec(generations=3)), "alone")
    group_sizes, evaluate_tasks = [], atari.evaluate_tasks

    def counting(arch, flats, data, tasks):
        group_sizes.append(len(flats))
        return evaluate_tasks(arch, flats, data, tasks)

    monkeypatch.setattr(atari, "evaluate_tasks", counting)
    grouped, grouped_store = lab(parse_spec(atari_spec(generations=3, eval_group=4)), "grouped")

    assert max(group_sizes) > 1  # some siblings were played together

    def stored(store):
        return sorted((d["generation"], d["genome_id"], d["fitness"], d["metrics"]["frames"], tuple(d["metrics"]["returns"]))
                      for d in store.find_results("atari-tiny"))

    assert stored(grouped_store) == stored(alone_store)
    assert grouped["best"] == alone["best"]


def test_an_unknown_game_is_refused_naming_the_field_and_the_games_accepted():
    data = atari_spec()
    data["problem"]["game"] = "Frostbit"

    with pytest.raises(SpecError, match=r"problem\.game = 'Frostbit': not a game of ale-py; accepted: .*Frostbite"):
        parse_spec(data)


def test_evoarena_run_ends_an_atari_run_with_its_mean_return_and_frames(tmp_path):
    spec = tmp_path / "atari.yaml"
    spec.write_text(yaml.safe_dump(atari_spec(generations=2)))
    env = {**os.environ, "EVOARENA_NOISE_DIR": str(tmp_path / "noise"), "EVOARENA_ARTIFACTS": str(tmp_path / "art")}

    done = subprocess.run([sys.executable, "-m", "evoarena", "run", str(spec), "--inline",
                           "--store", f"sqlite:///{tmp_path / 'r.db'}"], env=env, capture_output=True, text=True)

    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"atari-tiny: done; best fitness [0-9.]+ \(mean return over 2 episodes, after [0-9,]+ frames\), "
                        r"genome [0-9a-f]+", last), last
