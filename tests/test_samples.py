"""`evoarena sample`: an arena generator's samples as a PNG, a grid of digits or a scatter over a ring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from evoarena.cli import main as cli
from evoarena.encoding.genome import Genome
from evoarena.cli.samples import image_grid
from evoarena.worker.worker import Worker
from helpers import ArenaRun, Lab, tiny_arena, tiny_spec


def use(monkeypatch, config) -> None:
    monkeypatch.setenv("EVOARENA_ARTIFACTS", config.artifacts_url)
    monkeypatch.setenv("EVOARENA_NOISE_DIR", config.noise_dir)


def best_generator(run: ArenaRun) -> dict:
    match = next(d for d in reversed(run.steps()) if d["phase"] == "match")
    return next(m for m in match["members"] if m["id"] == match["stats"]["best_member"])


@pytest.fixture(scope="module")
def ring(tmp_path_factory) -> ArenaRun:
    run = ArenaRun(tmp_path_factory.mktemp("ring") / "run", tiny_arena(rounds=1))
    run.run()
    return run


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> ArenaRun:
    data = tiny_arena(rounds=1, train_steps=20, chunk_steps=20)
    data["name"] = "digits-tiny"
    data["problem"]["data"] = {"kind": "digits"}
    run = ArenaRun(tmp_path_factory.mktemp("digits") / "run", data)
    run.run()
    return run


def test_a_ring_arena_gives_a_600_pixel_scatter_that_is_not_blank(ring, tmp_path, monkeypatch, capsys):
    use(monkeypatch, ring.config)
    out = tmp_path / "ring.png"

    assert cli.main(["sample", ring.spec.name, "--out", str(out), "--store", ring.config.store_url]) == 0

    image = imread(str(out))
    assert image.shape == (600, 600, 4)
    assert image[..., :3].var() > 0.01
    printed = capsys.readouterr().out
    assert printed.startswith(f"{ring.spec.name}: 200 samples of generator {best_generator(ring)['id']} (round 1 match): modes ")
    assert printed.rstrip().endswith(f"-> {out}")


def test_a_digits_arena_gives_a_grid_of_the_generators_own_samples(digits, tmp_path, monkeypatch):
    use(monkeypatch, digits.config)
    out = tmp_path / "digits.png"

    assert cli.main(["sample", digits.spec.name, "--out", str(out), "--seed", "5",
                     "--store", digits.config.store_url]) == 0

    image = imread(str(out))
    # 64 samples, 8 to a row, each 8x8 pixel drawn 4x4, 2 grey pixels between and around: 8 * 34 + 2
    assert image.shape[:2] == (274, 274)
    gray = image[..., 0]
    assert gray.var() > 0.001
    # the pixels are the worker-built generator's 64 samples from latents of seed 5 (to 8 bits)
    from evoarena.problems import gan

    genome = Genome.from_json(best_generator(digits)["genome"])
    flat = Worker(digits.config).materializer(digits.spec.noise.model_dump(mode="json")).build(genome).flat
    expected = image_grid(gan.generate(genome.arch, flat, 64, torch.Generator().manual_seed(5)))
    assert np.abs(gray - expected).max() <= 1 / 255 + 1e-6  # a PNG keeps 8 bits a channel


def test_sample_of_a_ga_experiment_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    lab = Lab(tmp_path)
    lab.run(tiny_spec("tiny-ga", generations=1))
    use(monkeypatch, lab.config("main"))

    assert cli.main(["sample", "tiny-ga", "--out", str(tmp_path / "x.png"), "--store", lab.url("main")]) == 2

    assert capsys.readouterr().err.splitlines() == [
        "error: experiment 'tiny-ga' is a ga run of the memorize problem; `sample` draws from the generators of an arena run"]
    assert not (tmp_path / "x.png").exists()
    lab.close()


def test_sample_of_a_discriminator_exits_2_with_one_line(ring, tmp_path, monkeypatch, capsys):
    use(monkeypatch, ring.config)
    disc = next(m for m in ring.steps()[-1]["members"] if m["side"] == "disc")

    assert cli.main(["sample", ring.spec.name, "--genome", disc["id"], "--out", str(tmp_path / "x.png"),
                     "--store", ring.config.store_url]) == 2

    assert capsys.readouterr().err.splitlines() == [
        f"error: {disc['id']!r} is a discriminator of experiment 'arena-tiny'; `sample` draws from a generator"]


def test_sample_of_an_unknown_genome_exits_2_with_one_line(ring, tmp_path, monkeypatch, capsys):
    use(monkeypatch, ring.config)

    assert cli.main(["sample", ring.spec.name, "--genome", "gen-nope", "--out", str(tmp_path / "x.png"),
                     "--store", ring.config.store_url]) == 2

    assert capsys.readouterr().err.splitlines() == [
        "error: no member or genome 'gen-nope' in experiment 'arena-tiny' (looked in its newest population, "
        "pure_gen and pure_disc)"]
