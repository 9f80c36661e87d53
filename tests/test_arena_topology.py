"""The arena's topologies (torus, round robin), its output as a mixture, ranking generators by their
MMD to the training data, and the gradient steps each member's lineage received: on real runs."""

from __future__ import annotations

import copy
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from evoarena import scheduler
from evoarena.evolve import torus
from evoarena.worker.inline import InlineExecutor
from evoarena.problems import embedding
from evoarena.spec.experiment import SpecError, parse_spec
from evoarena.store import open_store
from evoarena.worker.worker import WorkerConfig

CELLS = {
    "name": "arena-cells",
    "problem": {"kind": "gan", "latent": 4, "metric_samples": 200,
                "data": {"kind": "grid", "side": 3, "train": 2000, "heldout": 500}},
    "arena": {"rounds": 3, "players": 4, "generators": 1, "discriminators": 1, "topology": "torus",
              "generator": {"hidden": [16]}, "discriminator": {"hidden": [16]},
              "train_steps": 30, "chunk_steps": 30, "cross_train_steps": 0, "batch_size": 32,
              "match_samples": 64, "fitness": {"generators": "mmd"},
              "variation": {"arch_rate": 0.0, "crossover_rate": 0.0, "meta_rate": 0.0, "migration": 0.0}},
    "noise": {"size": 65536},
}


def cells(**arena) -> dict:
    data = copy.deepcopy(CELLS)
    data["arena"].update(arena)
    return data


def run(root: Path, data: dict):
    spec = parse_spec(data)
    url = f"sqlite:///{root / 'results.db'}"
    store = open_store(url)
    config = WorkerConfig(url, str(root / "artifacts"), str(root.parent / "noise"), threads=1)
    scheduler.run(spec, store, InlineExecutor(config))
    return spec, store


def steps_of(store, spec, op: str) -> list[list[dict]]:
    return [store.find_results(spec.name, g["generation"], op) for g in store.list_generations(spec.name)
            if store.find_results(spec.name, g["generation"], op)]


def player_of(state: dict) -> dict[str, int]:
    return {m["id"]: m["player"] for m in state["members"]}


@pytest.fixture(scope="module")
def torus_run(tmp_path_factory):
    return run(tmp_path_factory.mktemp("torus") / "run", cells())


def test_torus_pairs_each_generator_with_its_round_partner_cell(torus_run):
    spec, store = torus_run
    states = store.list_generations(spec.name)
    for round in range(spec.arena.rounds):
        index = round * 2  # a round is train, match (no cross-training)
        before = states[index - 1] if index else None
        owner = player_of(before) if before else {}
        results = store.find_results(spec.name, index, "train_pair")
        pairs = sorted((owner.get(r["gen"]["id"]), owner.get(r["disc"]["id"])) for r in results)
        if before:  # round 0's members are the founders, which no earlier state lists
            # 2x2 torus: cells 0 1 / 2 3; offsets self, north, east, south, west
            expected = sorted((c, torus.partner(c, round, 2, 2)) for c in range(4))
            assert pairs == expected
        assert len(results) == 4


def test_a_torus_discriminator_judges_only_its_neighbourhood(tmp_path):
    spec, store = run(tmp_path / "run", cells(players=9, rounds=1))
    match = store.get_generation(spec.name, 1)
    owner = player_of(match)
    m = match["matrix"]
    for i, g in enumerate(m["gens"]):
        for j, d in enumerate(m["discs"]):
            assert m["judged"][i][j] == (owner[d] in torus.neighbourhood(owner[g], 3, 3))


def matched(store, spec, round: int) -> dict[int, dict]:
    """Round `round`'s generators as pure_gen recorded them at its match, by cell."""
    return {d["player"]: d for d in store.find_docs("pure_gen", spec.name, round=round)}


def test_ranking_by_mmd_gives_each_generator_minus_its_mmd_to_the_training_data(torus_run):
    spec, store = torus_run
    results = store.find_results(spec.name, 1, "match")
    real = results[0]["real_embedding"]
    mmd = {g: embedding.mmd2(mu, real) for r in results for g, mu in zip(r["gens"], r["embeddings"])}
    docs = matched(store, spec, 0)
    assert len(docs) == 4
    for d in docs.values():
        assert d["fitness_map"]["seed001"] == pytest.approx(-mmd[d["member"]], rel=1e-12)


def test_a_torus_cell_takes_an_offspring_of_its_fittest_neighbour_with_its_trained_weights(torus_run):
    spec, store = torus_run
    gens = matched(store, spec, 0)  # round 0's match; selection follows it
    moves = torus.replacements({c: d["fitness_map"]["seed001"] for c, d in gens.items()}, 2, 2)
    assert moves, "with four different generators some cell has a fitter neighbour"
    new = matched(store, spec, 1)
    trained = {r["gen"]["id"]: r for r in store.find_results(spec.name, 2, "train_pair")}
    for cell, source in moves.items():
        child, parent = new[cell], gens[source]
        assert child["parents"] == [parent["member"]] and child["born"] == 1
        # the child started round 1 from its parent's trained checkpoint: nothing of its training lost
        assert trained[child["member"]]["gen"]["genome"]["parents"] == [parent["genome_id"]]
        assert child["steps"] == parent["steps"] + spec.arena.train_steps
    for cell in set(gens) - set(moves):
        assert new[cell]["member"] == gens[cell]["member"]


def test_every_match_state_holds_a_mixture_whose_weights_the_es_chose(torus_run):
    spec, store = torus_run
    match = store.get_generation(spec.name, 1)
    mix = match["mixture"]
    docs = {d["member"]: d for d in matched(store, spec, 0).values()}
    assert mix["members"] == match["matrix"]["gens"] and sorted(mix["members"]) == sorted(docs)
    assert mix["genomes"] == [docs[m]["genome"] for m in mix["members"]]  # the weights the match measured
    assert sum(mix["weights"]) == pytest.approx(1.0) and min(mix["weights"]) >= 0
    results = store.find_results(spec.name, 1, "match")
    mus = {g: mu for r in results for g, mu in zip(r["gens"], r["embeddings"])}
    real = results[0]["real_embedding"]
    score = embedding.mixture_mmd2(mix["weights"], [mus[g] for g in mix["members"]], real)
    assert mix["mmd2"] == pytest.approx(score, rel=1e-9)
    assert mix["mmd2"] <= mix["uniform_mmd2"] == pytest.approx(
        embedding.mixture_mmd2([0.25] * 4, [mus[g] for g in mix["members"]], real), rel=1e-9)


def test_lineage_steps_count_every_gradient_step_a_member_received(torus_run):
    spec, store = torus_run
    last = store.get_generation(spec.name, store.last_generation(spec.name))
    for m in last["members"]:
        # no cross-training and nothing lost at reproduction: every member has had all rounds' steps
        assert m["steps"] == spec.arena.rounds * spec.arena.train_steps


def test_round_robin_meets_every_discriminator_once_every_players_rounds(tmp_path):
    spec, store = run(tmp_path / "run", cells(topology="round_robin", players=3, rounds=3, survivors=1.0))
    met = set()
    founders = None
    for round in range(3):
        results = store.find_results(spec.name, round * 2, "train_pair")
        state = store.get_generation(spec.name, round * 2)
        owner = player_of(state)
        met |= {(owner[r["gen"]["id"]], owner[r["disc"]["id"]]) for r in results}
        founders = founders or owner
    assert met == {(g, d) for g in range(3) for d in range(3)}
    last = store.get_generation(spec.name, store.last_generation(spec.name))
    assert {m["id"] for m in last["members"]} == set(founders)  # survivors 1: nothing replaced


@pytest.mark.parametrize("field, value, message", [
    ("generators", 2, "owns one generator and one discriminator"),
    ("mode", "async", "runs in rounds: sync"),
    ("torus", [3, 3], "rows \\* cols = players \\(4\\)"),
])
def test_a_torus_spec_that_cannot_be_laid_out_names_the_field(field, value, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(cells(**{field: value}))


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_final_mixture(tmp_path):
    spec_file = tmp_path / "cells.yaml"
    data = cells(rounds=4, train_steps=200, chunk_steps=100)
    data["executor"] = {"kind": "local", "workers": 1}
    spec_file.write_text(yaml.safe_dump(data))

    def final_mixture(folder: Path, kill_after: float | None) -> dict:
        env = {**os.environ, "EVOARENA_STORE": f"sqlite:///{folder / 'r.db'}", "EVOARENA_ARTIFACTS": str(folder / "a"),
               "EVOARENA_NOISE_DIR": str(tmp_path / "noise")}
        command = [sys.executable, "-m", "evoarena", "run", str(spec_file)]
        if kill_after is not None:
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True)
            store = open_store(env["EVOARENA_STORE"])
            deadline = time.monotonic() + 300
            while (store.last_generation(spec.name) or -1) < 3 and time.monotonic() < deadline:
                time.sleep(0.2)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            store.close()
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
        store = open_store(env["EVOARENA_STORE"])
        last = store.get_generation(spec.name, store.last_generation(spec.name))
        store.close()
        return last["mixture"]

    spec = parse_spec(data)
    whole = final_mixture(tmp_path / "whole", None)
    resumed = final_mixture(tmp_path / "killed", 0)
    def comparable(mixture: dict) -> dict:  # the checkpoints' URIs name each run's own folder
        return {**mixture, "genomes": [g["id"] for g in mixture["genomes"]]}

    assert comparable(resumed) == comparable(whole) and not math.isnan(whole["mmd2"])


def test_selection_within_players_keeps_each_players_best_by_mmd_and_its_untrained_copy(tmp_path):
    data = cells(topology="players", players=2, generators=2, discriminators=1, selection="player", survivors=0.5,
                 rounds=2)
    spec, store = run(tmp_path / "run", data)
    before = store.find_docs("pure_gen", spec.name, round=0)
    after = store.find_docs("pure_gen", spec.name, round=1)
    for player in (0, 1):
        own = [d for d in before if d["player"] == player]
        best = max(own, key=lambda d: d["fitness_map"]["seed001"])  # minus the MMD: the higher the closer
        nxt = sorted((d for d in after if d["player"] == player), key=lambda d: d["born"])
        assert nxt[0]["member"] == best["member"]  # the survivor, trained again in round 1
        assert nxt[1]["parents"] == [best["member"]] and nxt[1]["born"] == 1  # its copy, held back untrained
        assert nxt[1]["genome_id"] == best["genome_id"] and nxt[1]["steps"] == best["steps"]
        assert nxt[0]["steps"] == best["steps"] + spec.arena.train_steps


def test_ranking_by_precision_and_recall_gives_each_generator_their_mean_against_the_training_data(tmp_path):
    spec, store = run(tmp_path / "run", cells(rounds=1, fitness={"generators": "precision_recall"}))
    results = store.find_results(spec.name, 1, "match")
    fidelity = {g: pr for r in results for g, pr in zip(r["gens"], r["fidelity"])}
    docs = store.find_docs("pure_gen", spec.name, round=0)
    assert len(docs) == 4
    for d in docs:
        pr = fidelity[d["member"]]
        assert 0 <= pr["precision"] <= 1 and 0 <= pr["recall"] <= 1
        assert d["fitness_map"]["seed001"] == pytest.approx((pr["precision"] + pr["recall"]) / 2, rel=1e-12)
