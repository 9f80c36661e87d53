"""The GAN arena on tiny networks, in this process: what each step stores, and the rules of a round.

One tiny run (2 rounds, 2 players, 2 generators and 2 discriminators each) is shared by most
tests; the others change one switch and compare with it.
"""

from __future__ import annotations

import copy
import math

import pytest

from evoarena import scheduler
from evoarena.worker.inline import InlineExecutor
from evoarena.encoding.genome import Genome
from evoarena.tasks import task_id
from helpers import ArenaRun, StopAfter, tiny_arena


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> ArenaRun:
    run = ArenaRun(tmp_path_factory.mktemp("tiny") / "run", tiny_arena())
    run.run()
    return run


def match_index(run: ArenaRun, round: int) -> int:
    return round * len(run.algo.phases) + run.algo.phases.index("match")


# --- a round's steps -------------------------------------------------------------------------------


def test_a_round_is_train_chunks_then_match_then_cross_train_but_the_last_ends_at_its_match(tiny_run):
    assert tiny_run.algo.phases == ["train", "train", "train", "match", "cross"]
    # the last round ends at its match: nothing is selected after it
    assert [d["phase"] for d in tiny_run.steps()] == ["train", "train", "train", "match", "cross",
                                                      "train", "train", "train", "match"]
    assert [d["round"] for d in tiny_run.steps()] == [0] * 5 + [1] * 4


def test_long_training_is_split_into_chunks_of_at_most_chunk_steps(tiny_run):
    # 50 steps in chunks of 20: 20, 20, then 10, one trace entry per step
    lengths = [{len(r["trace"]) for r in tiny_run.results(i, "train_pair")} for i in range(3)]
    assert lengths == [{20}, {20}, {10}]


def test_every_task_of_every_step_has_exactly_one_result(tiny_run):
    state = None
    for index, doc in enumerate(tiny_run.steps()):
        step = tiny_run.algo.plan(index, state)
        stored = {r["_id"] for r in tiny_run.results(index, step.op)}
        assert stored == {task_id(step.op, t) for t in step.tasks}
        assert all(r["error"] is None for r in tiny_run.results(index, step.op))
        state = doc


def test_training_chains_checkpoints_from_the_previous_chunk(tiny_run):
    first, second = tiny_run.steps()[0], tiny_run.steps()[1]
    for before, after in zip(first["members"], second["members"]):
        genome = Genome.from_json(after["genome"])
        assert genome.base is not None and genome.parents == (Genome.from_json(before["genome"]).id,)


# --- the match and fitness ---------------------------------------------------------------------------


def test_speciation_means_no_discriminator_judges_its_own_players_generators(tiny_run):
    doc = tiny_run.steps()[match_index(tiny_run, 0)]
    players = {m["id"]: m["player"] for m in doc["members"]}
    m = doc["matrix"]
    for i, g in enumerate(m["gens"]):
        for j, d in enumerate(m["discs"]):
            assert m["judged"][i][j] == (players[g] != players[d])


def test_generator_fitness_is_the_mean_share_of_judging_discriminators_fooled(tiny_run):
    doc = tiny_run.steps()[match_index(tiny_run, 0)]
    m, fitness = doc["matrix"], {x["id"]: x["fitness"] for x in doc["members"]}
    for i, g in enumerate(m["gens"]):
        fooled = [m["values"][i][j] for j in range(len(m["discs"])) if m["judged"][i][j]]
        assert fitness[g] == pytest.approx(sum(fooled) / len(fooled), abs=1e-12)


def test_discriminator_fitness_weighs_real_accepted_against_foreign_fakes_caught(tiny_run):
    doc = tiny_run.steps()[match_index(tiny_run, 0)]
    m, fitness = doc["matrix"], {x["id"]: x["fitness"] for x in doc["members"]}
    for j, d in enumerate(m["discs"]):
        fooled = [m["values"][i][j] for i in range(len(m["gens"])) if m["judged"][i][j]]
        expected = 0.5 * m["real_accept_each"][j] + 0.5 * (1 - sum(fooled) / len(fooled))
        assert fitness[d] == pytest.approx(expected, abs=1e-12)


def test_every_generator_has_its_quality_measured_each_round(tiny_run):
    for round in range(2):
        doc = tiny_run.steps()[match_index(tiny_run, round)]
        for member in (x for x in doc["members"] if x["side"] == "gen"):
            q = member["quality"]
            assert q["modes"] == 8 and 0 <= q["modes_covered@20"] <= q["modes_covered"] <= 8
            assert 0 <= q["high_quality"] <= 1


def test_byzantine_discriminators_report_the_opposite_verdict(tmp_path, tiny_run):
    liar_run = ArenaRun(tmp_path / "liars", {**tiny_arena(byzantine=1.0), "name": "arena-tiny"})
    liar_run.run()
    honest = tiny_run.steps()[match_index(tiny_run, 0)]["matrix"]
    lying = liar_run.steps()[match_index(liar_run, 0)]["matrix"]
    assert lying["liars"] == [0, 1, 2, 3] and honest["liars"] == []
    assert lying["gens"] == honest["gens"] and lying["discs"] == honest["discs"]  # training is untouched
    for row_h, row_l in zip(honest["values"], lying["values"]):
        assert [1 - x for x in row_h] == pytest.approx(row_l, abs=1e-12)
    assert [1 - x for x in honest["real_accept_each"]] == pytest.approx(lying["real_accept_each"], abs=1e-12)


# --- selection and reproduction ----------------------------------------------------------------------


def test_the_fittest_half_survives_and_the_rest_are_their_offspring(tiny_run):
    end_of_round = tiny_run.steps()[len(tiny_run.algo.phases) - 1]
    scored = tiny_run.steps()[match_index(tiny_run, 0)]["members"]
    for side in ("gen", "disc"):
        ranked = sorted((m for m in scored if m["side"] == side), key=lambda m: (-m["fitness"], m["id"]))
        survivors = {m["id"] for m in ranked[:2]}  # survivors 0.5 of 4
        nxt = [m for m in end_of_round["members"] if m["side"] == side]
        assert len(nxt) == 4
        assert survivors <= {m["id"] for m in nxt}
        for child in (m for m in nxt if m["id"] not in survivors):
            assert child["born"] == 1 and set(child["parents"]) <= {m["id"] for m in ranked}
            assert child["parents"][0] in survivors


def test_architecture_mutants_are_built_by_the_worker_from_the_parent_checkpoint(tiny_run):
    # arch_rate 1.0: every child carries a morph edit, and the next round trains it
    children = [m for m in tiny_run.steps()[len(tiny_run.algo.phases) - 1]["members"] if m["born"] == 1]
    assert children
    for child in children:
        genome = Genome.from_json(child["genome"])
        assert genome.deltas[-1].kind == "morph"
        trained = next(r for r in tiny_run.results(len(tiny_run.algo.phases), "train_pair") if child["id"] in r["key"])
        assert trained["error"] is None


# --- the seed project's collections ------------------------------------------------------------------


def test_every_member_of_every_round_is_in_pure_gen_or_pure_disc_with_its_encounter_trace(tiny_run):
    store, name = tiny_run.store, tiny_run.spec.name
    for round in range(2):
        doc = tiny_run.steps()[match_index(tiny_run, round)]
        for member in doc["members"]:
            collection = "pure_gen" if member["side"] == "gen" else "pure_disc"
            stored = store.get_doc(collection, f"{name}:{round:06d}:{member['id']}")
            assert stored["fitness_map"] == {"seed001": member["fitness"]}
            assert stored["hyper_parameters"] == member["meta"] and stored["lineage"] == member["lineage"]
            trace = store.get_doc("pure_match_trace", stored["encounter_trace"])
            assert trace["member"] == member["id"] and len(trace["encounters"]) == 2  # the other player's two
    assert store.count_docs("pure_gen", name) == 8 and store.count_docs("pure_disc", name) == 8


def test_rerunning_a_finished_arena_changes_nothing(tiny_run):
    before = [r["seconds"] for r in tiny_run.store.find_results(tiny_run.spec.name)]
    tiny_run.run()
    assert [r["seconds"] for r in tiny_run.store.find_results(tiny_run.spec.name)] == before


# --- bad input ---------------------------------------------------------------------------------------


def test_an_npz_whose_checksum_differs_stops_the_run_naming_the_file(tmp_path):
    import numpy as np

    path = tmp_path / "images.npz"
    np.savez(path, x=np.zeros((20, 8, 8), dtype=np.uint8))
    data = tiny_arena()
    data["problem"]["data"] = {"kind": "npz", "uri": str(path), "sha256": "0" * 64, "heldout": 5}
    with pytest.raises(ValueError, match="sha256"):
        ArenaRun(tmp_path / "bad", data).run()


def test_host_pathogen_fitness_is_floored_and_elo_ratings_move(tmp_path):
    run = ArenaRun(tmp_path / "hp", tiny_arena(rounds=1, fitness={"kind": "host_pathogen"}))
    run.run()
    members = run.steps()[match_index(run, 0)]["members"]
    assert all(m["fitness"] >= (0.05 if m["side"] == "gen" else 0.01) for m in members)
    elo = ArenaRun(tmp_path / "elo", tiny_arena(rounds=1, fitness={"kind": "elo"}))
    elo.run()
    ratings = [m["fitness"] for m in elo.steps()[match_index(elo, 0)]["members"]]
    assert not all(math.isclose(r, 1500.0) for r in ratings)
    assert sum(ratings) == pytest.approx(1500.0 * len(ratings))  # Elo moves points, it does not create them


# --- the asynchronous fight ----------------------------------------------------------------------------


def async_spec(**arena) -> dict:
    return tiny_arena(mode="async", rounds=2, train_steps=20, chunk_steps=10, cross_train_steps=0, **arena)


def test_the_async_fight_gives_every_pair_its_share_of_fights_and_one_result_each(tmp_path):
    run = ArenaRun(tmp_path / "fight", async_spec())
    final = run.run()
    results = run.store.find_results(run.spec.name, op="train_pair")
    # 4 pairs (2 players x 2) x rounds 2 x 20 steps / 10 per fight = 16 fights, each one stored result
    assert final["budget"] == 16 and final["done"] == 16 and final["inflight"] == []
    assert len(results) == 16 and all(r["error"] is None for r in results)
    assert all(len(r["trace"]) == 10 and len(r["match"]["gens"]) == 3 for r in results)  # itself + 2 foreign
    # every fight is recorded: the pair's generator and discriminator, with their encounters
    assert run.store.count_docs("pure_gen", run.spec.name) == 16 == run.store.count_docs("pure_disc", run.spec.name)


def test_a_pair_inherits_from_the_best_opponent_of_its_fight_only_when_beaten(tmp_path):
    run = ArenaRun(tmp_path / "fight", async_spec())
    run.run()
    events = run.steps()[1:]
    inherited = 0
    for event in events:
        last = event["last"]
        trace = run.store.get_doc("pure_match_trace", f"{run.spec.name}:{last['fight']:06d}:matrix")
        me = trace["gens"].index(last["gen"])
        judged = [j for j in range(len(trace["discs"])) if trace["judged"][me][j]]
        mine = sum(trace["matrix"][me][j] for j in judged) / len(judged)
        assert last["gen_fitness"] == pytest.approx(mine, abs=1e-12)
        rivals = {}
        for i, g in enumerate(trace["gens"]):
            js = [j for j in range(len(trace["discs"])) if trace["judged"][i][j]]
            rivals[g] = sum(trace["matrix"][i][j] for j in js) / len(js)
        beaten = max(rivals.values()) > mine
        assert ("gen" in last["inherits"]) == beaten
        if beaten:
            inherited += 1
            assert rivals[last["inherits"]["gen"][0]] == max(rivals.values())
    assert inherited > 0  # the rule was exercised, not only its negative


def test_the_async_fight_resumes_after_an_interruption_and_trains_nothing_twice(tmp_path):
    run = ArenaRun(tmp_path / "fight", async_spec())
    with pytest.raises(KeyboardInterrupt):
        scheduler.run(run.spec, run.store, StopAfter(InlineExecutor(run.config), 6))
    before = {r["_id"]: (r["seconds"], r["worker"]) for r in run.store.find_results(run.spec.name)}
    assert 6 <= len(before) < 16
    final = run.run()
    after = {r["_id"]: (r["seconds"], r["worker"]) for r in run.store.find_results(run.spec.name)}
    assert final["done"] == 16 and len(after) == 16
    assert {k: after[k] for k in before} == before  # not one of them was trained again


# --- the command line ----------------------------------------------------------------------------------


def test_evoarena_run_then_status_of_an_arena(tmp_path, monkeypatch, capsys):
    import yaml

    from evoarena.cli import main as cli

    path = tmp_path / "arena.yaml"
    path.write_text(yaml.safe_dump(tiny_arena(rounds=1)))
    monkeypatch.setenv("EVOARENA_STORE", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("EVOARENA_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("EVOARENA_NOISE_DIR", str(tmp_path / "noise"))

    assert cli.main(["run", str(path), "--inline"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("arena-tiny: 1 rounds of 2 players x (2 generators + 2 discriminators) on this process")
    assert [line.split()[2] for line in out[1:-1]] == ["train", "train", "train", "match"]  # one line per step
    assert "modes" in out[4] and "matrix mean" in out[4]
    assert out[-1].startswith("arena-tiny: done; best generator gen-")

    assert cli.main(["status", "arena-tiny"]) == 0
    status = capsys.readouterr().out.splitlines()
    assert "steps       4/4 complete (5 per round)" in status
    # 3 train chunks x 4 pairs + 2 match blocks (4 generators, 3 per block)
    assert "results     14 stored; 4 generators and 4 discriminators recorded" in status
    assert cli.main(["run", str(path), "--inline"]) == 0
    assert "already complete" in capsys.readouterr().out


class Corrupting:
    """Hands the worker an unreadable genome in the first train task, planned as if the master itself
    had made it so: the genome's own error, not the infrastructure's (a task corrupted on its way
    is refused and sent again: tests/test_scheduler.py)."""

    def __init__(self, inner, store):
        self.inner, self.store, self.done = inner, store, False

    def map(self, op, tasks):
        tasks = copy.deepcopy(tasks)
        if op == "train_pair" and not self.done:
            tasks[0]["gen"]["genome"]["init_seed"] = "seven"
            scheduler.plan(self.store, op, tasks[:1])
            self.done = True
        yield from self.inner.map(op, tasks)

    def close(self):
        self.inner.close()


def test_a_poisoned_task_stops_the_run_naming_it_and_keeps_what_was_stored(tmp_path):
    run = ArenaRun(tmp_path / "stop", tiny_arena(rounds=1))
    with pytest.raises(RuntimeError, match="invalid literal for int.*on_error = stop"):
        scheduler.run(run.spec, run.store, Corrupting(InlineExecutor(run.config), run.store))
    results = run.results(0, "train_pair")
    assert len(results) == 4 and sum(r["error"] is not None for r in results) == 1  # the other pairs' work is kept


def test_with_on_error_skip_the_poisoned_pair_sits_out_and_the_round_goes_on(tmp_path):
    run = ArenaRun(tmp_path / "skip", tiny_arena(rounds=2, on_error="skip"))
    scheduler.run(run.spec, run.store, Corrupting(InlineExecutor(run.config), run.store))
    failed = {m["id"] for m in run.steps()[0]["members"] if m.get("failed")}
    assert len(failed) == 2  # the generator and the discriminator of the poisoned pair
    match = run.steps()[match_index(run, 0)]
    assert failed.isdisjoint(match["matrix"]["gens"] + match["matrix"]["discs"])
    assert len(run.steps()) == run.algo.steps  # the run went to its end
    assert failed.isdisjoint(m["id"] for m in run.steps()[-1]["members"])  # and they did not reproduce


def test_a_failed_run_is_recorded_as_failed_with_its_reason_and_status_says_so(tmp_path, capsys, monkeypatch):
    from evoarena.cli import main as cli

    run = ArenaRun(tmp_path / "failed", tiny_arena(rounds=1))
    with pytest.raises(RuntimeError):
        scheduler.run(run.spec, run.store, Corrupting(InlineExecutor(run.config), run.store))
    doc = run.store.get_experiment(run.spec.name)
    assert doc["status"] == "failed" and "invalid literal for int" in doc["reason"]

    monkeypatch.setenv("EVOARENA_STORE", f"sqlite:///{tmp_path / 'failed' / 'results.db'}")
    assert cli.main(["status", run.spec.name]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("experiment  arena-tiny  (failed: RuntimeError: step 0: task arena-tiny:000000:train_pair:")


# --- a worker process that dies -------------------------------------------------------------------------


def test_a_local_worker_process_that_dies_costs_its_task_an_error_and_the_rest_run(tmp_path):
    import os
    import signal
    import threading
    import time

    from evoarena.fleet.executor import LocalExecutor

    run = ArenaRun(tmp_path / "crash", tiny_arena(rounds=1, train_steps=2000, chunk_steps=2000))
    scheduler.register(run.spec, run.store)  # workers run only the tasks of a known experiment
    tasks = run.algo.plan(0, None).tasks  # 4 train_pair tasks of 2000 steps: a second or two each
    scheduler.plan(run.store, "train_pair", tasks + [{**t, "seed": t["seed"] + 1} for t in tasks])  # and planned
    executor = LocalExecutor(run.config, workers=1, affinity=False)
    try:
        (warm,) = executor.map("train_pair", tasks[:1])  # starts the pool's one process
        assert warm["error"] is None
        (pid,) = executor.pools[0]._processes

        def kill_soon():
            time.sleep(0.5)  # task 0 of the next map is running by then
            os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer would

        threading.Thread(target=kill_soon).start()
        results = list(executor.map("train_pair", [{**t, "seed": t["seed"] + 1} for t in tasks]))
    finally:
        executor.close()
    errors = [s for s in results if s["error"]]
    assert len(results) == 4 and len(errors) == 1  # the task it was running, once; the other three ran
    assert "worker process died" in errors[0]["error"] and errors[0]["key"] == tasks[0]["key"]
