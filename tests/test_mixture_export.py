"""A mixture of generators: its sampling rule, its export as one safetensors file, and the
standalone scripts/sample_mixture.py that samples that file with only torch and safetensors.

Hand-built members whose outputs sit at known constant points show which member each sample
came from; members built to hold every layer kind nets.py knows show that the standalone script
rebuilds each kind as nets.build does; a tiny arena run shows the commands on a real mixture.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from safetensors import safe_open
from scipy.stats import chisquare

from evoarena.cli import main as cli, export
from evoarena.encoding import nets
from evoarena.encoding.genome import Genome
from evoarena.cli.samples import draw_mixture, image_grid, mixture_samples
from evoarena.spec.experiment import parse_spec
from evoarena.store import open_store
from evoarena.worker.worker import Worker
from helpers import ArenaRun, tiny_arena

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sample_mixture.py"


def constant_generator(point: tuple[float, float], latent: int = 4) -> tuple[dict, torch.Tensor]:
    """A generator whose every sample is `point`: one linear layer, weight 0, bias `point`."""
    arch = {"input": [latent], "layers": [{"type": "linear", "out": 2}]}
    return arch, torch.cat([torch.zeros(2 * latent), torch.tensor(point, dtype=torch.float32)])


def random_generator(arch: dict, seed: int) -> tuple[dict, torch.Tensor]:
    """`arch` with seeded weights, plus noise so that the bnorm layers are not the identity."""
    flat = torch.empty(nets.layout(arch).size)
    nets.init_layers(arch, seed, flat)
    flat += 0.1 * torch.randn(flat.shape, generator=torch.Generator().manual_seed(seed))
    return arch, flat


# Three generators of 2-d samples that between them hold every layer kind of nets.py.
IMAGE_PATH = {"input": [4], "layers": [
    {"type": "linear", "out": 48}, {"type": "relu"}, {"type": "reshape", "shape": [3, 4, 4]},
    {"type": "deconv", "out": 4, "kernel": 4, "stride": 2, "padding": 1}, {"type": "bnorm"}, {"type": "tanh"},
    {"type": "conv", "out": 2, "kernel": 3, "padding": 1}, {"type": "sigmoid"}, {"type": "resize", "size": [3, 3]},
    {"type": "flatten"}, {"type": "linear", "out": 2}]}
FLAT_PATH = {"input": [4], "layers": [
    {"type": "linear", "out": 16}, {"type": "bnorm"}, {"type": "lrelu"}, {"type": "linear", "out": 2}]}


def every_kind_members() -> list[tuple[dict, torch.Tensor]]:
    return [random_generator(IMAGE_PATH, 1), random_generator(FLAT_PATH, 2), constant_generator((3.0, -1.0))]


def load_script():
    spec = importlib.util.spec_from_file_location("sample_mixture", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script_without_evoarena(mixture: Path, n: int, seed: int, out: Path, cwd: Path) -> subprocess.CompletedProcess:
    """The script as a user runs it: a fresh interpreter (-I: no PYTHON* variables, no user site, no
    script directory on the path) in which importing evoarena or numpy raises ImportError."""
    guard = ("import runpy, sys\n"
             "sys.modules['evoarena'] = None\n"
             "sys.modules['numpy'] = None\n"
             "try:\n    import evoarena\nexcept ImportError:\n    pass\nelse:\n    sys.exit('evoarena is importable')\n"
             "sys.argv = sys.argv[1:]\n"
             "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    return subprocess.run([sys.executable, "-I", "-c", guard, str(SCRIPT), str(mixture), str(n), str(seed), str(out)],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


# --- the sampling rule ----------------------------------------------------------------------------------


POINTS = [(0.0, 0.0), (10.0, 0.0), (0.0, 10.0), (10.0, 10.0)]


def member_of_each_sample(samples: torch.Tensor) -> list[int]:
    hits = (samples[:, None, :] == torch.tensor(POINTS)[None]).all(dim=2)
    assert hits.sum(dim=1).tolist() == [1] * len(samples)  # every sample is exactly one member's point
    return torch.bincount(hits.int().argmax(dim=1), minlength=len(POINTS)).tolist()


def test_a_mixtures_samples_come_from_each_member_in_proportion_to_its_weight():
    members = [constant_generator(p) for p in POINTS]
    n = 20_000

    samples, counts = mixture_samples(members, [0.1, 0.2, 0.3, 0.4], n, seed=7)

    observed = member_of_each_sample(samples)
    assert observed == counts and sum(observed) == n
    assert chisquare(observed, [2_000, 4_000, 6_000, 8_000]).pvalue > 0.001
    # the same counts against the weights reversed: the test can tell a wrong weighting
    assert chisquare(observed, [8_000, 6_000, 4_000, 2_000]).pvalue < 1e-6


def test_a_member_of_weight_zero_draws_no_sample():
    members = [constant_generator(p) for p in POINTS]

    samples, counts = mixture_samples(members, [0.5, 0.0, 0.5, 0.0], 5_000, seed=1)

    assert counts[1] == counts[3] == 0
    assert member_of_each_sample(samples)[1::2] == [0, 0]


def test_the_same_seed_gives_the_same_samples_and_another_seed_others():
    members = every_kind_members()

    first, _ = mixture_samples(members, [0.5, 0.3, 0.2], 300, seed=3)
    again, _ = mixture_samples(members, [0.5, 0.3, 0.2], 300, seed=3)
    other, _ = mixture_samples(members, [0.5, 0.3, 0.2], 300, seed=4)

    assert torch.equal(first, again)
    assert not torch.equal(first, other)


# --- the file and the standalone script -----------------------------------------------------------------


def test_the_hand_built_members_hold_every_layer_kind_nets_knows():
    assert {layer["type"] for arch, _ in every_kind_members() for layer in arch["layers"]} == nets.LAYER_TYPES


def test_a_written_mixture_loads_back_as_modules_that_compute_what_the_members_do(tmp_path):
    members = every_kind_members()
    path = tmp_path / "mixture.safetensors"

    export.write_mixture(path, members, [0.5, 0.3, 0.2], {"experiment": "hand-built"})

    modules, weights, meta = export.load_mixture(path)
    assert weights == [0.5, 0.3, 0.2]
    assert (meta["format"], meta["experiment"], json.loads(meta["latent"])) == ("evoarena-mixture-1", "hand-built", [4])
    assert json.loads(meta["archs"]) == [arch for arch, _ in members]
    with safe_open(str(path), "pt") as f:
        assert {k.split(".", 1)[0] for k in f.keys()} == {"m0", "m1", "m2"}
    z = torch.randn(64, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for module, (arch, flat) in zip(modules, members):
            assert torch.equal(module(z), nets.forward(arch, flat, z))


def test_the_script_samples_an_exported_mixture_without_evoarena_exactly_as_evoarena_does(tmp_path):
    members = every_kind_members()
    weights = [0.5, 0.3, 0.2]
    path, out = tmp_path / "mixture.safetensors", tmp_path / "samples.npy"
    export.write_mixture(path, members, weights, {"experiment": "hand-built"})
    n = 10_000  # the first member draws more than one chunk of 4,096 latents: its bnorm sees the chunks

    done = run_script_without_evoarena(path, n, 11, out, tmp_path)

    assert done.returncode == 0, done.stderr
    expected, counts = mixture_samples(members, weights, n, seed=11)
    assert counts[0] > 4_096
    assert done.stdout.strip() == f"{n} samples of shape (2,) (per member: {counts}) -> {out}"
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (n, 2)
    # the same latents through the same layers; the last bits may differ where the two processes
    # use other CPU kernels or thread counts (evoarena pins its arithmetic, the script does not)
    assert np.allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, expected.numpy()[::-1], rtol=1e-5, atol=1e-6)  # the order is checked too


def test_the_script_imported_as_a_module_gives_the_samples_and_counts_evoarena_gives(tmp_path):
    members = every_kind_members()
    path = tmp_path / "mixture.safetensors"
    export.write_mixture(path, members, [0.2, 0.2, 0.6], {})

    samples, counts = load_script().sample_mixture(str(path), 500, 2)

    expected, expected_counts = mixture_samples(members, [0.2, 0.2, 0.6], 500, seed=2)
    assert counts == expected_counts
    assert torch.equal(samples, expected)


def test_the_script_refuses_an_unknown_layer_kind_naming_it():
    with pytest.raises(ValueError, match=r"layer type 'dropout' is unknown to this script; it knows \['bnorm', "):
        load_script().build({"input": [4], "layers": [{"type": "linear", "out": 4}, {"type": "dropout"}]})


def test_a_mixture_of_image_generators_is_drawn_as_a_grid_of_its_samples():
    spec = parse_spec({**tiny_arena(rounds=1), "name": "digits-hand", "problem": {
        "kind": "gan", "latent": 4, "data": {"kind": "digits"}}})
    image = {"input": [4], "layers": [{"type": "linear", "out": 64}, {"type": "reshape", "shape": [1, 8, 8]},
                                      {"type": "tanh"}]}
    members = [random_generator(image, 1), random_generator(image, 2)]

    png, n, quality = draw_mixture(spec, members, [0.3, 0.7], "by hand", n=16, seed=4)

    assert (n, quality) == (16, "")
    drawn = imread(io.BytesIO(png))[..., 0]
    assert drawn.shape == (4 * 34 + 2, 4 * 34 + 2)  # 16 tiles, 4 to a row, 8x8 pixels drawn 4x4, 2 grey between
    expected = image_grid(mixture_samples(members, [0.3, 0.7], 16, seed=4)[0])
    assert np.abs(drawn - expected).max() <= 1 / 255 + 1e-6  # a PNG keeps 8 bits a channel


# --- a real arena run -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arena(tmp_path_factory) -> ArenaRun:
    run = ArenaRun(tmp_path_factory.mktemp("arena") / "run", tiny_arena(rounds=1))
    run.run()
    return run


def use(monkeypatch, config) -> None:
    """The environment of the run's machine: where its checkpoints and noise table are."""
    monkeypatch.setenv("EVOARENA_ARTIFACTS", config.artifacts_url)
    monkeypatch.setenv("EVOARENA_NOISE_DIR", config.noise_dir)


def last_match(run: ArenaRun) -> dict:
    return next(d for d in reversed(run.steps()) if d["phase"] == "match")


def workers_member(run: ArenaRun, member: dict) -> tuple[dict, torch.Tensor]:
    genome = Genome.from_json(member["genome"])
    return genome.arch, Worker(run.config).materializer(run.spec.noise.model_dump(mode="json")).build(genome).flat


def kept_members(run: ArenaRun) -> tuple[list[dict], list[float]]:
    """The last match's mixture members of weight > 0 and their weights over the kept ones, by hand."""
    match = last_match(run)
    by_id = {m["id"]: m for m in match["members"]}
    kept = [(by_id[i], w) for i, w in zip(match["mixture"]["members"], match["mixture"]["weights"]) if w > 0]
    total = sum(w for _, w in kept)
    return [m for m, _ in kept], [w / total for _, w in kept]


def copy_with_last_match(run: ArenaRun, tmp_path: Path, change) -> str:
    """The URL of a copy of the run's store whose last match document is `change(document)`."""
    db = tmp_path / "copy.db"
    src, dst = sqlite3.connect(run.config.store_url.removeprefix("sqlite:///")), sqlite3.connect(db)
    src.backup(dst)
    src.close()
    dst.close()
    store = open_store(f"sqlite:///{db}")
    match = last_match(run)
    store.put_generation(run.spec.name, match["generation"], change(match))
    store.close()
    return f"sqlite:///{db}"


def test_export_mixture_leaves_out_the_members_of_weight_zero(arena, tmp_path, monkeypatch):
    use(monkeypatch, arena.config)
    ids = last_match(arena)["mixture"]["members"]
    assert len(ids) == 4
    url = copy_with_last_match(arena, tmp_path, lambda m: {**m, "mixture": {**m["mixture"], "weights": [0.5, 0.0, 0.25, 0.25]}})
    out = tmp_path / "mixture.safetensors"

    assert cli.main(["export", arena.spec.name, "--mixture", "--out", str(out), "--store", url]) == 0

    modules, weights, meta = export.load_mixture(out)
    assert (json.loads(meta["members"]), weights) == ([ids[0], ids[2], ids[3]], [0.5, 0.25, 0.25])
    assert len(modules) == 3


def test_export_mixture_writes_the_members_of_positive_weight_as_their_workers_build_them(arena, tmp_path, monkeypatch,
                                                                                          capsys):
    use(monkeypatch, arena.config)
    out = tmp_path / "mixture.safetensors"

    assert cli.main(["export", arena.spec.name, "--mixture", "--out", str(out), "--store", arena.config.store_url]) == 0

    members, weights = kept_members(arena)
    modules, file_weights, meta = export.load_mixture(out)
    assert file_weights == weights
    assert json.loads(meta["members"]) == [m["id"] for m in members]
    assert json.loads(meta["genome_ids"]) == [m["genome"]["id"] for m in members]
    assert (meta["experiment"], meta["source"], json.loads(meta["latent"])) == (arena.spec.name, "round 1 match", [4])
    assert float(meta["mmd2"]) == last_match(arena)["mixture"]["mmd2"]
    z = torch.randn(64, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for module, member in zip(modules, members):
            arch, flat = workers_member(arena, member)
            assert torch.equal(module(z), nets.forward(arch, flat, z))
    printed = capsys.readouterr().out
    assert printed.startswith(f"{arena.spec.name}: mixture of {len(members)} generators of round 1 match (")
    assert printed.rstrip().endswith(f"-> {out}")


def test_an_exported_run_mixture_samples_in_a_fresh_interpreter_as_evoarena_samples_the_run(arena, tmp_path,
                                                                                           monkeypatch):
    use(monkeypatch, arena.config)
    path, out = tmp_path / "mixture.safetensors", tmp_path / "samples.npy"
    assert cli.main(["export", arena.spec.name, "--mixture", "--out", str(path), "--store", arena.config.store_url]) == 0

    done = run_script_without_evoarena(path, 2_500, 9, out, tmp_path)

    assert done.returncode == 0, done.stderr
    members, weights = kept_members(arena)
    expected, _ = mixture_samples([workers_member(arena, m) for m in members], weights, 2_500, seed=9)
    assert np.array_equal(np.load(out), expected.numpy())


def test_sample_mixture_draws_a_600_pixel_scatter_of_the_mixture(arena, tmp_path, monkeypatch, capsys):
    use(monkeypatch, arena.config)
    out = tmp_path / "mixture.png"

    assert cli.main(["sample", arena.spec.name, "--mixture", "--out", str(out), "-n", "400", "--seed", "2",
                     "--store", arena.config.store_url]) == 0

    image = imread(str(out))
    assert image.shape == (600, 600, 4)
    assert image[..., :3].var() > 0.01
    members, _ = kept_members(arena)
    printed = capsys.readouterr().out
    assert printed.startswith(f"{arena.spec.name}: 400 samples of the mixture of {len(members)} generators "
                              "of round 1 match: modes ")
    assert printed.rstrip().endswith(f"-> {out}")


@pytest.mark.parametrize("command", [["export", "--out", "x.safetensors"], ["sample", "--out", "x.png"]])
def test_a_run_stored_without_a_mixture_makes_both_commands_exit_2_with_one_line(arena, tmp_path, monkeypatch, capsys,
                                                                                 command):
    # the last match without its mixture, as a run stored before mixtures were kept
    url = copy_with_last_match(arena, tmp_path, lambda m: {k: v for k, v in m.items() if k != "mixture"})
    use(monkeypatch, arena.config)
    verb, option, name = command

    assert cli.main([verb, arena.spec.name, "--mixture", option, str(tmp_path / name), "--store", url]) == 2

    assert capsys.readouterr().err.splitlines() == [
        f"error: experiment '{arena.spec.name}': its round 1 match stored no mixture of generators (a run from before "
        "evoarena kept one); leave out --mixture for its best generator"]
    assert not (tmp_path / name).exists()


def test_mixture_and_genome_together_are_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["export", "arena-tiny", "--mixture", "--genome", "gen-x", "--out", str(tmp_path / "x")])

    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
