"""The measuring functions of bench/questions_ga.py (seed 003's questions), on hand-computed values."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evoarena.encoding.genome import Delta, founder, mutate
from evoarena.encoding.materialize import Materializer, ParentCache
from evoarena.encoding.noise import open_noise
from evoarena.problems import memorize

BENCH = Path(__file__).resolve().parent.parent / "bench" / "questions_ga.py"
_spec = importlib.util.spec_from_file_location("questions_ga", BENCH)
qga = importlib.util.module_from_spec(_spec)
sys.modules["questions_ga"] = qga
_spec.loader.exec_module(qga)


def bools(*xs: int) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.bool)


# --- churn: what a child kept of its parent's correct set ------------------------------------------


def test_churn_counts_points_forgotten_and_learned():
    parent = bools(1, 1, 1, 0, 0, 0, 1, 0)
    child = bools(1, 0, 1, 1, 0, 0, 0, 0)  # loses points 1 and 6, gains point 3
    c = qga.churn(parent, child)
    assert (c.points, c.known, c.forgotten, c.learned) == (8, 4, 2, 1)
    assert c.forget_rate == 0.5  # 2 of the 4 points the parent knew
    assert c.learn_rate == 0.25  # 1 of the 4 it did not


def test_churn_of_a_network_with_itself_is_zero():
    same = bools(1, 0, 1, 1, 0)
    c = qga.churn(same, same.clone())
    assert (c.forgotten, c.learned, c.forget_rate, c.learn_rate) == (0, 0, 0.0, 0.0)


def test_churn_rates_are_nan_when_their_denominator_is_empty():
    nothing_known = qga.churn(bools(0, 0, 0), bools(1, 0, 0))
    assert math.isnan(nothing_known.forget_rate) and nothing_known.learn_rate == pytest.approx(1 / 3)
    all_known = qga.churn(bools(1, 1), bools(0, 1))
    assert all_known.forget_rate == 0.5 and math.isnan(all_known.learn_rate)


def test_churn_refuses_vectors_of_different_lengths():
    with pytest.raises(ValueError, match="1-d and of one length"):
        qga.churn(bools(1, 0, 1), bools(1, 0))


# --- damage: what fresh mutations do to a network ----------------------------------------------------


def test_damage_is_the_rise_of_cross_entropy_and_the_share_forgotten():
    correct = bools(1, 1, 0, 0)
    mutants = [bools(0, 1, 0, 0), bools(1, 1, 1, 0), bools(0, 0, 0, 0)]  # forget 1/2, 0/2, 2/2 of the known
    d = qga.Damage.of(1.0, correct, [1.5, 0.9, 1.3], mutants)
    assert d.loss == 1.0
    assert d.mean_rise == pytest.approx((0.5 - 0.1 + 0.3) / 3)
    assert d.median_rise == pytest.approx(0.3)
    assert d.forget_rate == pytest.approx(0.5)


def test_damage_needs_one_correctness_vector_per_mutant():
    with pytest.raises(ValueError, match="one correctness vector per mutant loss"):
        qga.Damage.of(1.0, bools(1, 0), [1.1, 1.2], [bools(1, 0)])


# --- matched fitness, ranges, the document block -------------------------------------------------------


def test_first_reaching_is_the_first_generation_at_or_below_the_target():
    best = [2.3, 2.1, 2.2, 1.9]
    assert qga.first_reaching(best, 2.15) == 1
    assert qga.first_reaching(best, 1.9) == 3
    assert qga.first_reaching(best, 1.0) is None


def test_apart_tells_disjoint_ranges_from_overlapping_ones():
    assert qga.apart([1.0, 2.0], [3.0, 4.0])
    assert qga.apart([3.0, 4.0], [1.0, 2.0])
    assert not qga.apart([1.0, 3.0], [2.0, 4.0])
    assert not qga.apart([], [1.0])


def test_summary_is_median_min_max():
    assert qga.summary([3.0, 1.0, 2.0, math.nan], 1) == "2.0 [1.0, 3.0]"
    assert qga.summary([], 2) == "-"


def test_replace_block_appends_when_the_markers_are_absent():
    out = qga.replace_block("# Questions\n\nseed 000 text\n", "## Seed 003: x\n")
    assert out == f"# Questions\n\nseed 000 text\n\n{qga.START}\n## Seed 003: x\n{qga.END}\n"


def test_replace_block_replaces_only_what_is_between_the_markers():
    text = f"# Questions\n\nbefore\n\n{qga.START}\nold 003\n{qga.END}\nafter\n"
    out = qga.replace_block(text, "new 003")
    assert out == f"# Questions\n\nbefore\n\n{qga.START}\nnew 003\n{qga.END}\nafter\n"


def test_replace_block_refuses_a_start_marker_without_an_end():
    with pytest.raises(ValueError, match="without"):
        qga.replace_block(f"x\n{qga.START}\nhalf a block\n", "new")


# --- Q1 per generation: pairs and the fitness of every child ------------------------------------------


class FixedCorrectness:
    """A stand-in Probe whose networks classify the training points as a table says, by genome id."""

    def __init__(self, table: dict[str, torch.Tensor]):
        self.table = table

    def genome(self, genome):
        return 0.0, self.table[genome.id]


def test_pair_measures_compare_children_with_their_rebuilt_parents():
    parent = founder(memorize.architecture({"image": [1, 2, 2], "classes": 2}, {"convs": [], "hidden": [2]}), 1)
    c1, c2 = mutate(parent, Delta("gaussian", 0, 0.1)), mutate(parent, Delta("gaussian", 5, 0.1))
    probe = FixedCorrectness({parent.id: bools(1, 1, 0, 0), c1.id: bools(1, 0, 1, 1), c2.id: bools(1, 1, 0, 0)})
    docs = [
        {"role": "elite", "genome": parent.to_json(), "parents": [], "fitness": -1.5},
        {"role": "child", "genome": c1.to_json(), "parents": [parent.id], "fitness": -1.0},
        {"role": "child", "genome": c2.to_json(), "parents": [parent.id], "fitness": -2.0},
    ]
    m = qga.pair_measures(docs, {parent.id: -1.5}, probe, pairs=2, rng=np.random.default_rng(0))
    assert m["forgotten"] == 0.5 and m["learned"] == 1.0 and m["known"] == 2.0  # c1: -1 +2, c2: nothing
    assert m["forget_rate"] == 0.25 and m["learn_rate"] == 0.5
    assert m["delta_median"] == pytest.approx(0.0)  # child - parent fitness: +0.5 and -0.5
    assert m["delta_q10"] == pytest.approx(-0.4) and m["delta_q90"] == pytest.approx(0.4)
    assert m["improved"] == 0.5


# --- the probe: scores as the worker does, same fresh mutations in every run --------------------------


def small_spec(seed: int, parents: int, children: int):
    return qga.parse_spec({
        "name": "q", "seed": seed,
        "problem": {"kind": "memorize", "image": [3, 8, 8], "classes": 4, "batch_size": 8, "train_batches": 2,
                    "val_batches": 1, "data_seed": seed},
        "network": {"convs": [{"channels": 2, "kernel": 4, "stride": 2}], "hidden": [8]},
        "ga": {"generations": 2, "parents": parents, "children_per_parent": children},
        "noise": {"size": 65536},
    })


def test_probe_scores_a_genome_as_the_worker_scores_its_fitness(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOARENA_NOISE_DIR", str(tmp_path))
    spec = small_spec(0, 1, 4)
    probe = qga.probe_for(spec, probes=4)
    genome = mutate(founder(probe.arch, 7), Delta("gaussian", 100, 0.05))
    noise = open_noise(spec.noise.seed, spec.noise.size, tmp_path)
    flat = Materializer(noise, ParentCache(1 << 20)).build(genome).flat
    worker = memorize.evaluate(probe.arch, flat, memorize.make_data(spec.problem.model_dump(mode="json")))
    loss, correct = probe.genome(genome)
    assert loss == pytest.approx(worker["train_loss"], abs=1e-6)
    assert correct.float().mean().item() == pytest.approx(worker["train_accuracy"])


def test_probe_mutations_are_the_same_whatever_the_run_seed_and_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOARENA_NOISE_DIR", str(tmp_path))
    a, b = qga.probe_for(small_spec(0, 1, 16), probes=5), qga.probe_for(small_spec(3, 8, 4), probes=5)
    assert a.offsets == b.offsets and len(set(a.offsets)) == 5


def test_damage_of_a_genome_is_zero_with_zero_sigma(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOARENA_NOISE_DIR", str(tmp_path))
    probe = qga.probe_for(small_spec(0, 1, 4), probes=3)
    probe.sigma = 0.0  # mutations that change nothing do no damage and forget nothing
    genome = founder(probe.arch, 5)
    assert probe.genome(genome)[1].sum() > 0  # it knows some points, so there is something to forget
    d = probe.damage(genome)
    assert (d.mean_rise, d.median_rise, d.forget_rate) == (0.0, 0.0, 0.0)


def test_damage_with_a_real_sigma_changes_the_cross_entropy(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOARENA_NOISE_DIR", str(tmp_path))
    probe = qga.probe_for(small_spec(0, 1, 4), probes=3)
    probe.sigma = 0.5
    d = probe.damage(founder(probe.arch, 5))
    assert d.mean_rise != 0.0 and d.loss == pytest.approx(probe.genome(founder(probe.arch, 5))[0])


def test_relink_moves_relative_image_links_to_the_new_folder():
    text = "![q1](ga-overwrite.png) and ![web](https://x/y.png) and ![abs](/a/b.png)"
    out = qga.relink(text, Path("docs/questions"), Path("docs"))
    assert out == "![q1](questions/ga-overwrite.png) and ![web](https://x/y.png) and ![abs](/a/b.png)"


def test_relink_moves_relative_page_links_too():
    out = qga.relink("Report (seed 0): [ga-1x16.html](reports/ga-1x16.html)", Path("docs/questions"), Path("docs"))
    assert out == "Report (seed 0): [ga-1x16.html](questions/reports/ga-1x16.html)"
