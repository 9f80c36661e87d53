"""People read one number for one thing: `evoarena run`, `export` (its printed line and the
safetensors metadata) and `sample` count generations and rounds from 1, the same way (the store
keeps 0-based indices)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml
from safetensors import safe_open

from evoarena.cli import main as cli
from helpers import tiny_ga

pytestmark = pytest.mark.slow


def tiny_arena(name: str) -> dict:
    return {"name": name,
            "problem": {"kind": "gan", "latent": 4, "metric_samples": 200,
                        "data": {"kind": "ring", "train": 2000, "heldout": 500}},
            "arena": {"rounds": 2, "players": 2, "generators": 2, "discriminators": 2,
                      "generator": {"hidden": [16]}, "discriminator": {"hidden": [16]},
                      "train_steps": 20, "chunk_steps": 20, "cross_train_steps": 10, "batch_size": 32,
                      "match_samples": 128, "match_block": 2},
            "noise": {"size": 65536}}


@pytest.fixture
def place(tmp_path, monkeypatch) -> dict:
    """A store, checkpoints and noise of the test's own, for the `run` process and for this one."""
    env = {"EVOARENA_STORE": f"sqlite:///{tmp_path}/evoarena.db", "EVOARENA_ARTIFACTS": str(tmp_path / "artifacts"),
           "EVOARENA_NOISE_DIR": str(tmp_path / "noise"), "EVOARENA_THREADS": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **env, "PYTHONUNBUFFERED": "1"}


def run(place: dict, tmp_path, spec: dict) -> list[str]:
    """`evoarena run --inline` of `spec`: its output lines (off a terminal: one per step it keeps)."""
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = subprocess.run([sys.executable, "-m", "evoarena", "run", str(path), "--inline"], env=place,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def test_the_last_match_is_the_same_round_in_run_export_its_metadata_and_sample(place, tmp_path, capsys):
    printed = run(place, tmp_path, tiny_arena("names-arena"))
    matches = [re.search(r"round\s+(\d+)/(\d+) match", line) for line in printed]
    last, rounds = next((int(m[1]), int(m[2])) for m in reversed(matches) if m)
    assert last == rounds == 2  # the second of 2 rounds, as a person counts

    out = tmp_path / "best.safetensors"
    assert cli.main(["export", "names-arena", "--out", str(out)]) == 0
    assert f"of round {last} match" in capsys.readouterr().out
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["source"] == f"round {last} match"

    assert cli.main(["export", "names-arena", "--mixture", "--out", str(tmp_path / "mix.safetensors")]) == 0
    assert f"generators of round {last} match (" in capsys.readouterr().out

    assert cli.main(["sample", "names-arena", "--out", str(tmp_path / "best.png"), "-n", "100"]) == 0
    assert f"(round {last} match)" in capsys.readouterr().out


def test_the_last_generation_is_the_same_number_in_run_and_export(place, tmp_path, capsys):
    printed = run(place, tmp_path, tiny_ga("names-ga", generations=3))
    gens = [re.match(r"gen\s+(\d+)/(\d+)", line) for line in printed]
    last, total = next((int(m[1]), int(m[2])) for m in reversed(gens) if m)
    assert last == total == 3

    out = tmp_path / "best.safetensors"
    assert cli.main(["export", "names-ga", "--out", str(out)]) == 0
    assert f"of generation {last}, fitness " in capsys.readouterr().out
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["source"] == f"generation {last}"
