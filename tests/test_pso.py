"""Particle swarm optimisation over a network's weights (evolve/pso.py): the span encoding, the
algorithm on a known function, and whole runs through `evoarena run`, a kill -9 and the fleet."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from evoarena import scheduler
from evoarena.evolve.pso import PSO, run_seeds
from evoarena.worker.inline import InlineExecutor
from evoarena.encoding.genome import Delta, Genome, crossover, span, span_offsets
from evoarena.encoding.materialize import Materializer, ParentCache
from evoarena.encoding.nets import layout
from evoarena.encoding.noise import generate, open_noise
from evoarena.spec.experiment import SpecError, load_spec, parse_spec
from evoarena.store import open_store
from evoarena.worker.worker import WorkerConfig
from helpers import Place, tiny_pso

ROOT = Path(__file__).resolve().parent.parent
NOISE_SIZE = 1 << 16


# --- the encoding ---------------------------------------------------------------------------------


def a_particle(directions: int = 5) -> tuple[Genome, Genome, list[float]]:
    spec = parse_spec(tiny_pso(directions=directions))
    algo = PSO(spec)
    c = [float(x) for x in np.random.default_rng(1).uniform(-1, 1, directions)]
    c[0] = 0.1 + 0.2  # a float whose shortest repr has 17 digits
    return algo.founder, span(algo.founder, algo.direction_seed, 0.05, c), c


def test_a_particle_is_its_founder_plus_one_span_delta_carrying_k_coefficients_and_one_seed():
    base, particle, c = a_particle()

    assert particle.deltas[:-1] == () and particle.parents == (base.id,)
    assert particle.to_json()["deltas"] == [{"k": "span", "d": PSO(parse_spec(tiny_pso())).direction_seed,
                                             "s": 0.05, "c": c}]


def test_a_particle_round_trips_json_exactly_with_the_same_id():
    _, particle, c = a_particle()
    back = Genome.from_json(json.loads(json.dumps(particle.to_json())))

    assert back == particle and back.id == particle.id
    assert list(back.deltas[-1].coefficients) == c  # the same floats, bit for bit
    assert back.deltas[-1].coefficients[0] == 0.30000000000000004


def test_a_particle_id_is_a_content_hash_of_its_coefficients():
    base, particle, c = a_particle()
    moved = span(base, particle.deltas[-1].seed, 0.05, [c[0] + 2**-52] + c[1:])

    assert moved.id != particle.id
    assert span(base, particle.deltas[-1].seed, 0.05, list(c)).id == particle.id


def test_a_tampered_coefficient_fails_the_id_check():
    _, particle, _ = a_particle()
    data = particle.to_json()
    data["deltas"][0]["c"][1] += 1e-9
    with pytest.raises(ValueError, match="does not match its content"):
        Genome.from_json(data)


def test_a_span_delta_materializes_to_founder_plus_scale_times_the_directions_as_numpy_computes_them(tmp_path):
    base, particle, c = a_particle(directions=7)
    noise = open_noise(0, NOISE_SIZE, tmp_path)
    n = layout(base.arch).size
    materializer = Materializer(noise, ParentCache(1 << 26))
    founder_weights = materializer.build(base).flat.clone()

    table = generate(0, NOISE_SIZE)  # the table as noise.py defines it, not the memory-mapped file
    offsets = np.random.default_rng([12, particle.deltas[-1].seed]).integers(0, NOISE_SIZE - n + 1, size=7)
    total = np.zeros(n)
    for o, ck in zip(offsets, c):
        total = total + ck * table[o : o + n].astype(np.float64)
    expected = (founder_weights.numpy().astype(np.float64) + 0.05 * total).astype(np.float32)

    built = materializer.build(particle).flat.numpy()
    assert built.view(np.int32).tolist() == expected.view(np.int32).tolist()
    assert materializer.stats.from_parent == 1  # one delta from the cached founder
    fresh = Materializer(noise, ParentCache(1 << 26)).build(particle).flat  # the full chain: the same bits
    assert torch.equal(fresh.view(torch.int32), torch.from_numpy(expected).view(torch.int32))


def test_span_offsets_are_fixed_by_the_seed_and_fit_the_table():
    offsets = span_offsets(41, 64, 1000, NOISE_SIZE)

    assert offsets == span_offsets(41, 64, 1000, NOISE_SIZE)
    assert offsets != span_offsets(42, 64, 1000, NOISE_SIZE)
    assert len(offsets) == 64 and min(offsets) >= 0 and max(offsets) <= NOISE_SIZE - 1000
    with pytest.raises(ValueError, match="smaller than the 70000 parameters"):
        span_offsets(41, 4, 70_000, NOISE_SIZE)


def test_a_span_delta_refuses_layers_and_crossover_refuses_to_split_it():
    base, particle, _ = a_particle()
    with pytest.raises(ValueError, match="covers the whole network"):
        Delta("span", sigma=0.1, seed=3, coefficients=(1.0,), layers=(0, 1))
    with pytest.raises(ValueError, match="crossover cannot split it"):
        crossover(particle, base, 1)


def test_a_span_delta_with_non_numbers_for_coefficients_is_refused():
    with pytest.raises(ValueError, match="'c' must be a list of finite numbers"):
        Delta.from_json({"k": "span", "d": 3, "s": 0.1, "c": [1.0, "2"]})


def test_the_founder_and_the_direction_seed_come_from_the_experiment_seed():
    assert run_seeds(0) == run_seeds(0) and run_seeds(0) != run_seeds(1)
    a, b = PSO(parse_spec({**tiny_pso(), "seed": 5})), PSO(parse_spec({**tiny_pso(), "seed": 6}))
    assert (a.founder.init_seed, a.direction_seed) == run_seeds(5) != (b.founder.init_seed, b.direction_seed)


# --- the algorithm, on a function whose minimum is known ----------------------------------------------

OPTIMUM = np.array([0.3 * (-1) ** k for k in range(64)])


def shifted_sphere(step) -> list[dict]:
    """Result documents as a worker would store them, scoring each particle's coefficients with
    minus the squared distance to OPTIMUM (its first K coordinates; no network is built)."""
    docs = []
    for task in step.tasks:
        c = np.array(task["genome"]["deltas"][-1]["c"])
        docs.append({"genome_id": task["genome"]["id"], "fitness": -float(np.sum((c - OPTIMUM[: len(c)]) ** 2)),
                     "metrics": {}, "error": None})
    return docs


def drive(algo: PSO, steps: int) -> list[dict]:
    """Every state of `steps` steps of `algo`, each through a JSON round trip as the store does."""
    states, state = [], None
    for index in range(steps):
        step = algo.plan(index, state)
        state = json.loads(json.dumps(algo.advance(index, state, step, shifted_sphere(step))))
        states.append(state)
    return states


def test_pso_finds_the_minimum_of_a_10d_sphere_to_1e_minus_6_in_6000_evaluations():
    algo = PSO(parse_spec(tiny_pso(steps=300, particles=20, directions=10, bound=1.0, vmax=1.0)))
    final = drive(algo, 300)[-1]

    assert final["best"]["fitness"] >= -1e-6
    position = np.array(final["swarm"]["best_position"])[np.argmax(final["swarm"]["best_fitness"])]
    assert np.abs(position - OPTIMUM[:10]).max() < 1e-3


def test_the_swarms_best_never_falls_and_every_step_stores_the_whole_swarm():
    states = drive(PSO(parse_spec(tiny_pso(steps=20, particles=6, directions=4))), 20)
    bests = [s["stats"]["best"] for s in states]

    assert bests == sorted(bests) and bests[-1] > bests[0]
    for s in states:
        assert np.array(s["swarm"]["position"]).shape == (6, 4) == np.array(s["swarm"]["velocity"]).shape
        assert np.array(s["swarm"]["best_position"]).shape == (6, 4) == np.array(s["evaluated"]["position"]).shape
        assert len(s["evaluated"]["fitness"]) == len(s["evaluated"]["genome_ids"]) == 6
    assert states[4]["evaluated"]["position"] == states[3]["swarm"]["position"]  # step t evaluates step t-1's move


def test_planning_and_advancing_a_step_again_gives_the_same_tasks_and_state():
    algo = PSO(parse_spec(tiny_pso(steps=5)))
    states = drive(algo, 3)
    again = PSO(parse_spec(tiny_pso(steps=5)))  # a restarted master

    assert again.plan(3, states[2]).tasks == algo.plan(3, states[2]).tasks
    step = again.plan(2, states[1])
    assert json.loads(json.dumps(again.advance(2, states[1], step, shifted_sphere(step)))) == states[2]


def test_a_failed_particle_is_skipped_and_on_error_stop_stops_the_run():
    algo = PSO(parse_spec(tiny_pso(particles=4, directions=3)))
    step = algo.plan(0, None)
    results = shifted_sphere(step)
    results[1] = {"genome_id": results[1]["genome_id"], "fitness": None, "metrics": {}, "error": "boom"}

    state = algo.advance(0, None, step, results)
    assert state["evaluated"]["fitness"][1] is None and state["swarm"]["best_fitness"][1] is None
    assert state["stats"]["errors"] == 1
    stopping = PSO(parse_spec(tiny_pso(particles=4, directions=3, on_error="stop")))
    with pytest.raises(RuntimeError, match="particle .* failed \\(boom\\); stopping because pso.on_error = stop"):
        stopping.advance(0, None, step, results)


def test_a_step_where_every_particle_failed_is_an_error():
    algo = PSO(parse_spec(tiny_pso(particles=3, directions=3)))
    step = algo.plan(0, None)
    failed = [{"genome_id": t["genome"]["id"], "fitness": None, "metrics": {}, "error": "nan weights"} for t in step.tasks]
    with pytest.raises(RuntimeError, match="every evaluation failed so far; first error: nan weights"):
        algo.advance(0, None, step, failed)


# --- the spec -----------------------------------------------------------------------------------------

BAD = {
    "inertia below 0": ({"inertia": -0.1}, "pso.inertia = -0.1: must be greater than or equal to 0"),
    "unknown topology": ({"topology": "star"}, "pso.topology = 'star': must be one of 'global' or 'ring'"),
    "no directions": ({"directions": 0}, "pso.directions = 0: must be greater than or equal to 1"),
    "a swarm too big to store": ({"particles": 1000, "directions": 1000},
                                 "pso.particles = 1000: particles x directions = 1000 x 1000 = 1000000; at most 65536"),
    "a scale of 0": ({"scale": 0}, "pso.scale = 0: must be greater than 0"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_pso_value_is_one_line_naming_the_field_the_value_and_what_is_accepted(case, tmp_path):
    values, expected = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_pso(**values)))
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_pso_on_a_gan_problem_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nproblem: {kind: gan, data: {kind: ring}}\npso: {steps: 2}\n")
    with pytest.raises(SpecError, match="problem.kind = 'gan': pso runs the memorize or atari problem"):
        load_spec(path)


def test_the_experiment_file_loads_as_a_pso_run():
    spec = load_spec(ROOT / "experiments" / "pso-memorize-64.yaml")
    assert (spec.algorithm, spec.pso.directions, spec.pso.particles) == ("pso", 64, 32)


# --- whole runs: `evoarena run`, kill -9, the fleet -------------------------------------------------

LONG = 60  # steps: several seconds on a local pool, so a run can be caught in the middle


def write_spec(place: Place, name: str, steps: int, workers: int = 1, **pso) -> Path:
    data = tiny_pso(name, steps, **pso)
    data["executor"]["workers"] = workers
    path = place.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def swarm_history(place: Place, name: str) -> list[dict]:
    """Every stored step without what depends on the clock or on how warm the caches were."""
    with place.store() as store:
        return [{k: d[k] for k in ("generation", "swarm", "evaluated", "best")} for d in store.list_generations(name)]


@pytest.mark.slow
def test_a_pso_run_through_evoarena_run_improves_fitness_and_status_and_report_show_it(tmp_path):
    place = Place(tmp_path)
    done = place.run("run", write_spec(place, "pso-run", 12))

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("pso-run: 12 steps of 8 particles (16 directions) on 1 local workers")
    assert [line.split()[1] for line in lines[1:13]] == [f"{i}/12" for i in range(1, 13)]
    with place.store() as store:
        states = store.list_generations("pso-run")
        first, last = states[0]["stats"], states[-1]["stats"]
        assert last["best"] > first["step_best"]  # the swarm found better weights than any of its start
        assert last["best"] == max(f for s in states for f in s["evaluated"]["fitness"])
        assert store.count_results("pso-run") == 12 * 8
    status = place.run("status", "pso-run")
    assert status.returncode == 0, status.stderr
    assert "steps       12/12 complete (8 particles each)" in status.stdout.splitlines()
    assert f"best {last['best']:.6g}" in status.stdout
    report = place.run("report", "pso-run")
    assert report.returncode == 0, report.stderr
    assert (place.root / "runs" / "reports" / "pso-run.html").stat().st_size > 0


@pytest.mark.slow
def test_a_pso_run_killed_with_sigkill_resumes_to_the_same_swarm_as_an_uninterrupted_run(tmp_path):
    place = Place(tmp_path)
    reference = place.run("run", write_spec(place, "pso-reference", LONG, particles=12), timeout=300)
    assert reference.returncode == 0, reference.stderr

    proc = place.start("run", write_spec(place, "pso-killed", LONG, particles=12))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the run ended before it could be stopped:\n{proc.communicate()}"
            if place.db.exists():
                with place.store() as store:
                    last = store.last_generation("pso-killed")
                if last is not None and last >= 2:
                    break
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    with place.store() as store:
        complete = store.last_generation("pso-killed") + 1
    assert 3 <= complete < LONG, "the kill came too late to interrupt anything"

    again = place.run("run", place.root / "pso-killed.yaml", timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"resumed at generation {complete + 1}" in again.stdout.splitlines()
    assert swarm_history(place, "pso-killed") == swarm_history(place, "pso-reference")
    with place.store() as store:
        ids = [r["_id"] for r in store.find_results("pso-killed")]
        assert len(ids) == len(set(ids)) == 12 * LONG  # nothing evaluated twice


@pytest.mark.slow
def test_a_pso_run_on_the_celery_fleet_stores_the_same_swarm_as_an_inline_run(fleet, tmp_path):
    spec = parse_spec({**tiny_pso("pso-fleet", 5), "noise": {"size": 1 << 20}})
    for name in ("alpha", "beta"):
        fleet.start(name)
    fleet.wait_ready()

    scheduler.run(spec, fleet.store, fleet.executor())

    reference = open_store(f"sqlite:///{tmp_path}/reference.db")
    config = WorkerConfig(store_url=f"sqlite:///{tmp_path}/reference.db", artifacts_url=str(tmp_path / "ref-artifacts"),
                          noise_dir=str(tmp_path / "noise"), threads=1)
    scheduler.run(spec, reference, InlineExecutor(config))
    kept = ("generation", "swarm", "evaluated", "best")
    assert ([{k: d[k] for k in kept} for d in fleet.store.list_generations("pso-fleet")]
            == [{k: d[k] for k in kept} for d in reference.list_generations("pso-fleet")])
    assert {d["node"] for d in fleet.store.find_results("pso-fleet")} == set(fleet.workers)


def inline_run(tmp_path: Path, store_name: str, spec) -> list[dict]:
    url = f"sqlite:///{tmp_path}/{store_name}.db"
    config = WorkerConfig(store_url=url, artifacts_url=str(tmp_path / "artifacts"), noise_dir=str(tmp_path / "noise"),
                          threads=1)
    with open_store(url) as store:
        scheduler.run(spec, store, InlineExecutor(config))
        return [{k: d[k] for k in ("generation", "swarm", "evaluated", "best")} for d in store.list_generations(spec.name)]


def test_a_pso_run_extended_by_more_steps_continues_as_one_longer_run(tmp_path):
    longer = inline_run(tmp_path, "reference", parse_spec(tiny_pso("pso-extended", 5)))
    inline_run(tmp_path, "extended", parse_spec(tiny_pso("pso-extended", 3)))

    assert inline_run(tmp_path, "extended", parse_spec(tiny_pso("pso-extended", 5))) == longer
    with pytest.raises(scheduler.ExperimentMismatch, match="pso.steps = 2 but experiment 'pso-extended' already has 5"):
        inline_run(tmp_path, "extended", parse_spec(tiny_pso("pso-extended", 2)))
