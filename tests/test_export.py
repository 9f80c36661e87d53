"""`evoarena export`: a run's network as a safetensors file, loaded back with the lines of docs/USAGE.md.

The network loaded from the file must compute what the worker's own network computes: the worker's
is built here by a fresh worker.Worker through its Materializer (the run's noise table and
checkpoints), and both run on the same inputs; on the CPU the outputs are bit for bit equal.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from evoarena.cli import main as cli
from evoarena.encoding import nets
from evoarena.encoding.genome import Genome
from evoarena.problems import PROBLEMS
from evoarena.worker.worker import Worker
from helpers import ArenaRun, Lab, tiny_arena, tiny_spec


def load_as_the_usage_doc_says(path: Path) -> tuple[torch.nn.Module, dict]:
    """The loading snippet of docs/USAGE.md ("Looking at a run"), line for line."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    net = nets.build(json.loads(meta["arch"]))
    net.load_state_dict(load_file(str(path)))
    return net, meta


def workers_network(config, noise: dict, genome_json: dict) -> tuple[dict, torch.Tensor]:
    """(architecture, flat weights) as a worker of the run builds them."""
    genome = Genome.from_json(genome_json)
    return genome.arch, Worker(config).materializer(noise).build(genome).flat


def use(monkeypatch, config) -> None:
    """The environment of the run's machine: where its checkpoints and noise table are."""
    monkeypatch.setenv("EVOARENA_ARTIFACTS", config.artifacts_url)
    monkeypatch.setenv("EVOARENA_NOISE_DIR", config.noise_dir)


# --- a GA run ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ga(tmp_path_factory):
    """tiny.yaml for 5 generations with a checkpoint every 2: late genomes start from a checkpoint."""
    lab = Lab(tmp_path_factory.mktemp("ga"))
    spec = tiny_spec("tiny-export", generations=5, checkpoint_every=2)
    lab.run(spec)
    yield lab, spec
    lab.close()


def test_export_writes_the_best_genome_of_the_last_generation_and_it_computes_what_the_workers_network_does(
        ga, tmp_path, monkeypatch, capsys):
    lab, spec = ga
    use(monkeypatch, lab.config("main"))
    out = tmp_path / "best.safetensors"

    assert cli.main(["export", spec.name, "--out", str(out), "--store", lab.url("main")]) == 0

    store = lab.store()
    best = store.get_generation(spec.name, 4)["best"]
    net, meta = load_as_the_usage_doc_says(out)
    assert (meta["genome_id"], meta["role"], meta["source"]) == (best["genome_id"], "network", "generation 5")
    assert float(meta["fitness"]) == best["fitness"]
    (doc,) = [r for r in store.find_results(spec.name, 4) if r["genome_id"] == best["genome_id"]]
    assert Genome.from_json(doc["genome"]).base is not None  # built from a checkpoint, as its worker did
    arch, flat = workers_network(lab.config("main"), spec.noise.model_dump(mode="json"), doc["genome"])
    x = torch.randn(16, *spec.problem.image, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(net(x), nets.forward(arch, flat, x))
    assert capsys.readouterr().out.startswith(f"{spec.name}: genome {best['genome_id']} of generation 5, fitness ")


def test_the_exported_network_scores_the_fitness_the_run_recorded(ga, tmp_path, monkeypatch):
    lab, spec = ga
    use(monkeypatch, lab.config("main"))
    out = tmp_path / "best.safetensors"
    assert cli.main(["export", spec.name, "--out", str(out), "--store", lab.url("main")]) == 0

    net, meta = load_as_the_usage_doc_says(out)
    arch = json.loads(meta["arch"])
    problem = spec.problem.model_dump(mode="json")
    data = PROBLEMS[problem["kind"]].make_data(problem, "cpu")
    scored = PROBLEMS[problem["kind"]].evaluate(arch, nets.from_module(arch, net), data)
    assert scored["fitness"] == lab.store().get_generation(spec.name, 4)["best"]["fitness"]


def test_export_of_a_named_genome_writes_that_genome(ga, tmp_path, monkeypatch):
    lab, spec = ga
    use(monkeypatch, lab.config("main"))
    founder = min(lab.store().find_results(spec.name, 0), key=lambda r: r["fitness"])  # the worst founder
    out = tmp_path / "founder.safetensors"

    assert cli.main(["export", spec.name, "--genome", founder["genome_id"], "--out", str(out),
                     "--store", lab.url("main")]) == 0

    net, meta = load_as_the_usage_doc_says(out)
    assert (meta["genome_id"], meta["source"]) == (founder["genome_id"], "generation 1")
    arch, flat = workers_network(lab.config("main"), spec.noise.model_dump(mode="json"), founder["genome"])
    x = torch.randn(4, *spec.problem.image, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(net(x), nets.forward(arch, flat, x))


def test_an_unknown_genome_exits_2_with_one_line_and_writes_nothing(ga, tmp_path, monkeypatch, capsys):
    lab, spec = ga
    use(monkeypatch, lab.config("main"))
    out = tmp_path / "x.safetensors"

    assert cli.main(["export", spec.name, "--genome", "0" * 32, "--out", str(out), "--store", lab.url("main")]) == 2

    best = lab.store().get_generation(spec.name, 4)["best"]["genome_id"]
    assert capsys.readouterr().err.splitlines() == [
        f"error: no genome '{'0' * 32}' evaluated in experiment 'tiny-export'; the best of the last generation is {best}"]
    assert not out.exists()


def test_an_unknown_experiment_exits_2_naming_the_known_ones(ga, tmp_path, capsys):
    lab, _ = ga

    assert cli.main(["export", "nope", "--out", str(tmp_path / "x.safetensors"), "--store", lab.url("main")]) == 2

    assert capsys.readouterr().err.splitlines() == ["error: no experiment 'nope' in the store; known: tiny-export"]


# --- an arena run --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arena(tmp_path_factory) -> ArenaRun:
    run = ArenaRun(tmp_path_factory.mktemp("arena") / "run", tiny_arena(rounds=1))
    run.run()
    return run


def last_match(run: ArenaRun) -> dict:
    return next(d for d in reversed(run.steps()) if d["phase"] == "match")


def test_export_of_an_arena_writes_the_best_generator_of_the_last_match_and_it_generates_what_the_workers_does(
        arena, tmp_path, monkeypatch):
    use(monkeypatch, arena.config)
    out = tmp_path / "generator.safetensors"

    assert cli.main(["export", arena.spec.name, "--out", str(out), "--store", arena.config.store_url]) == 0

    match = last_match(arena)
    best = next(m for m in match["members"] if m["id"] == match["stats"]["best_member"])
    net, meta = load_as_the_usage_doc_says(out)
    assert (meta["member"], meta["genome_id"], meta["role"]) == (best["id"], best["genome"]["id"], "generator")
    assert float(meta["fitness"]) == match["stats"]["best"]
    assert Genome.from_json(best["genome"]).base is not None  # trained weights: a checkpoint
    arch, flat = workers_network(arena.config, arena.spec.noise.model_dump(mode="json"), best["genome"])
    z = torch.randn(64, *arch["input"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(net(z), nets.forward(arch, flat, z))


def test_export_of_a_discriminator_by_member_id_writes_its_newest_weights(arena, tmp_path, monkeypatch):
    use(monkeypatch, arena.config)
    disc = next(m for m in arena.steps()[-1]["members"] if m["side"] == "disc")
    out = tmp_path / "disc.safetensors"

    assert cli.main(["export", arena.spec.name, "--genome", disc["id"], "--out", str(out),
                     "--store", arena.config.store_url]) == 0

    net, meta = load_as_the_usage_doc_says(out)
    assert (meta["member"], meta["genome_id"], meta["role"]) == (disc["id"], disc["genome"]["id"], "discriminator")
    arch, flat = workers_network(arena.config, arena.spec.noise.model_dump(mode="json"), disc["genome"])
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(net(x), nets.forward(arch, flat, x))


def test_checkpoints_out_of_reach_exit_2_naming_the_artifact_store(arena, tmp_path, monkeypatch, capsys):
    use(monkeypatch, arena.config)
    monkeypatch.setenv("EVOARENA_ARTIFACTS", str(tmp_path / "elsewhere"))

    assert cli.main(["export", arena.spec.name, "--out", str(tmp_path / "g.safetensors"),
                     "--store", arena.config.store_url]) == 2

    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: artifact URI ")
    assert line.endswith(f"checkpoints are read from {tmp_path / 'elsewhere'} (EVOARENA_ARTIFACTS): "
                         "point it at the run's artifact store")
