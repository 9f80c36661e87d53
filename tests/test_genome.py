"""Genomes as plain data: JSON that does not grow with the network, chained ids, edits as delta lists."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evoarena.encoding import nets
from evoarena.encoding.genome import (
    Checkpoint,
    Delta,
    Genome,
    crossover,
    founder,
    mutate,
    rebase,
    restrict,
    sample_delta,
)
from evoarena.encoding.materialize import Materializer, ParentCache
from evoarena.encoding.noise import open_noise

ARCH = nets.convnet([3, 8, 8], [{"channels": 4, "kernel": 3, "stride": 1}], [8, 6], 3)  # 4 parametric layers
LAY = nets.layout(ARCH)
NOISE_SIZE = 2**16


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    return open_noise(11, NOISE_SIZE, tmp_path_factory.mktemp("noise"))


def build(noise, genome: Genome) -> torch.Tensor:
    return Materializer(noise, ParentCache(0)).build(genome).flat


def lineage(arch: dict, seed: int, depth: int, rng_seed: int = 0) -> list[Genome]:
    """founder, child, grandchild, ... `depth` Gaussian mutations deep."""
    rng = np.random.default_rng(rng_seed)
    genomes = [founder(arch, seed)]
    for _ in range(depth):
        genomes.append(mutate(genomes[-1], sample_delta(rng, "gaussian", 0.02, 0.1, nets.layout(arch), NOISE_SIZE)))
    return genomes


def all_kinds(rng: np.random.Generator, parent: Genome, n: int) -> Genome:
    for i in range(n):
        kind = ("gaussian", "layer", "norm", "adaptive")[i % 4]
        parent = mutate(parent, sample_delta(rng, kind, 0.05, 0.2, LAY, NOISE_SIZE))
    return parent


def compact(genome: Genome) -> str:
    return json.dumps(genome.to_json(), separators=(",", ":"))


# --- JSON -----------------------------------------------------------------------------------------


def test_json_round_trip_keeps_the_id():
    rng = np.random.default_rng(1)
    a, b = all_kinds(rng, founder(ARCH, 1), 6), all_kinds(rng, founder(ARCH, 2), 5)
    child = mutate(crossover(a, b, 2, then=(Delta("gaussian", 7, 0.02),)), Delta("gaussian", 8, 0.02, layers=(0, 1)))
    for genome in (founder(ARCH, 1), a, crossover(a, b, 1), child, rebase(a, Checkpoint(a.prefix_ids[3], "file:///ck.safetensors"))):
        back = Genome.from_json(json.loads(json.dumps(genome.to_json())))
        assert back.id == genome.id
        assert back == genome


def test_a_tampered_id_is_refused():
    doc = lineage(ARCH, 1, 3)[-1].to_json()
    doc["id"] = "0" * 32
    with pytest.raises(ValueError, match="does not match its content"):
        Genome.from_json(doc)


def test_a_tampered_delta_is_refused():
    doc = lineage(ARCH, 1, 3)[-1].to_json()
    doc["deltas"][1]["s"] = 0.5
    with pytest.raises(ValueError, match="does not match its content"):
        Genome.from_json(doc)


def test_json_size_does_not_depend_on_the_parameter_count():
    wide_arch = nets.convnet([3, 8, 8], [{"channels": 4, "kernel": 3, "stride": 1}], [80, 6], 3)
    assert nets.layout(wide_arch).size > 9 * LAY.size
    deltas = lineage(ARCH, 1, 20)[-1].deltas
    narrow, wide = Genome(ARCH, 1, deltas), Genome(wide_arch, 1, deltas)
    arch_bytes = len(json.dumps(wide_arch, separators=(",", ":"))) - len(json.dumps(ARCH, separators=(",", ":")))
    assert arch_bytes == 1  # "out":80 instead of "out":8
    assert len(compact(wide)) - len(compact(narrow)) == arch_bytes


# --- ids --------------------------------------------------------------------------------------------


def test_mutate_gives_the_id_computed_from_scratch():
    rng = np.random.default_rng(2)
    child = all_kinds(rng, founder(ARCH, 4), 9)
    assert child.id == Genome.from_json(child.to_json()).id
    from_scratch = Genome(ARCH, 4, child.deltas, _prefix_ids=None)
    assert from_scratch.prefix_ids == child.prefix_ids


def test_prefix_j_is_ancestor_j():
    genomes = lineage(ARCH, 1, 12)
    last = genomes[-1]
    for j, ancestor in enumerate(genomes):
        assert last.prefix_ids[j] == ancestor.id
        assert Genome(ARCH, 1, last.deltas[:j]).id == ancestor.id


def test_ids_differ_by_seed_arch_and_delta():
    wide_arch = nets.convnet([3, 8, 8], [{"channels": 4, "kernel": 3, "stride": 1}], [9, 6], 3)
    base = founder(ARCH, 1)
    ids = {
        base.id,
        founder(ARCH, 2).id,
        founder(wide_arch, 1).id,
        mutate(base, Delta("gaussian", 1, 0.02)).id,
        mutate(base, Delta("gaussian", 2, 0.02)).id,
        mutate(base, Delta("gaussian", 1, 0.03)).id,
        mutate(base, Delta("gaussian", 1, 0.02, layers=(0, 1))).id,
        mutate(base, Delta("norm", 1, 0.02)).id,
    }
    assert len(ids) == 8


def test_arch_key_order_does_not_change_the_id():
    reordered = {"layers": ARCH["layers"], "input": ARCH["input"]}
    assert founder(reordered, 1).id == founder(ARCH, 1).id


# --- rebase -----------------------------------------------------------------------------------------


def test_rebase_keeps_the_id_and_shortens_the_list():
    genomes = lineage(ARCH, 1, 10)
    last = genomes[-1]
    checkpoint = Checkpoint(genomes[6].id, "file:///checkpoints/g6.safetensors")
    rebased = rebase(last, checkpoint)
    assert rebased.id == last.id
    assert rebased.base == checkpoint
    assert rebased.deltas == last.deltas[6:]
    assert rebased.prefix_ids == last.prefix_ids[6:]
    assert Genome.from_json(rebased.to_json()).id == last.id


def test_rebase_on_a_stranger_changes_nothing():
    last = lineage(ARCH, 1, 5)[-1]
    other = lineage(ARCH, 2, 5)[-1]
    assert rebase(last, Checkpoint(other.id, "file:///other.safetensors")) is last


def test_mutating_a_rebased_genome_gives_the_same_child_id():
    genomes = lineage(ARCH, 1, 8)
    rebased = rebase(genomes[-1], Checkpoint(genomes[4].id, "file:///g4.safetensors"))
    delta = Delta("gaussian", 123, 0.02)
    assert mutate(rebased, delta).id == mutate(genomes[-1], delta).id


# --- restrict ---------------------------------------------------------------------------------------


def test_restrict_shifts_the_offset_to_read_the_same_noise():
    delta = Delta("adaptive", offset=1000, sigma=0.1, rate_offset=3000, tau=0.2)
    kept = restrict(delta, 1, 3, LAY)
    shift = LAY.layer_bounds[1][0]
    assert kept.layers == (1, 3)
    assert (kept.offset, kept.rate_offset) == (1000 + shift, 3000 + shift)
    assert restrict(delta, 0, LAY.n_layers, LAY) == delta
    assert restrict(Delta("gaussian", 5, 0.1, layers=(0, 1)), 1, 4, LAY) is None


@pytest.mark.parametrize("kind", ["gaussian", "norm", "adaptive"])
def test_a_restricted_delta_moves_its_layers_as_the_whole_delta_does(noise, kind):
    base = founder(ARCH, 3)
    delta = Delta(kind, offset=500, sigma=0.1, rate_offset=2000, tau=0.3)
    whole = build(noise, mutate(base, delta))
    part = build(noise, mutate(base, restrict(delta, 1, 3, LAY)))
    untouched = build(noise, base)
    lo, hi = LAY.span((1, 3))
    assert torch.equal(part[lo:hi], whole[lo:hi])
    assert torch.equal(part[:lo], untouched[:lo]) and torch.equal(part[hi:], untouched[hi:])


# --- crossover --------------------------------------------------------------------------------------


def test_crossover_keeps_shared_history_once():
    common = lineage(ARCH, 1, 5)[-1]
    first = mutate(common, Delta("gaussian", 10, 0.02))
    second = mutate(mutate(common, Delta("gaussian", 20, 0.02)), Delta("norm", 30, 0.02))
    child = crossover(first, second, 2)
    assert child.deltas[:5] == common.deltas
    assert child.prefix_ids[5] == common.id
    assert all(child.deltas.count(d) == 1 for d in common.deltas)
    shift = LAY.layer_bounds[2][0]
    own = [Delta("gaussian", 10, 0.02, layers=(0, 2)), Delta("gaussian", 20 + shift, 0.02, layers=(2, 4)), Delta("norm", 30 + shift, 0.02, layers=(2, 4))]
    assert [d for d in child.deltas[5:] if d in own] == own
    assert child.parents == (first.id, second.id)


def test_crossover_of_different_founders_inserts_an_init_delta():
    first, second = lineage(ARCH, 1, 2)[-1], lineage(ARCH, 2, 3, rng_seed=1)[-1]
    child = crossover(first, second, 1, then=(Delta("gaussian", 5, 0.02),))
    assert child.init_seed == 1
    assert child.deltas[2] == Delta("init", seed=2, layers=(1, 4))
    assert child.deltas[-1] == Delta("gaussian", 5, 0.02)
    same_founder = crossover(first, lineage(ARCH, 1, 3, rng_seed=1)[-1], 1)
    assert all(d.kind != "init" for d in same_founder.deltas)


def test_a_crossover_child_id_does_not_depend_on_how_its_parents_are_written():
    genomes = lineage(ARCH, 1, 8)
    first, second = genomes[-1], mutate(genomes[5], Delta("gaussian", 99, 0.02))
    then = (Delta("gaussian", 5, 0.02),)
    rebased_first = rebase(first, Checkpoint(genomes[6].id, "file:///g6.safetensors"))
    rebased_second = rebase(second, Checkpoint(genomes[3].id, "file:///g3.safetensors"))
    child = crossover(first, second, 2, then)
    assert crossover(rebased_first, second, 2, then).id == child.id
    assert crossover(first, rebased_second, 2, then).id == child.id
    assert crossover(rebased_first, rebased_second, 2, then).id == child.id
    assert crossover(first, second, 1, then).id != child.id
    assert crossover(second, first, 2, then).id != child.id


def test_crossover_with_a_rebased_lineage_inserts_a_load_delta():
    genomes = lineage(ARCH, 1, 6)
    checkpoint = Checkpoint(genomes[4].id, "file:///g4.safetensors")
    first, second = lineage(ARCH, 2, 2)[-1], rebase(genomes[-1], checkpoint)
    child = crossover(first, second, 3)
    assert Delta("load", uri=checkpoint.uri, layers=(3, 4)) in child.deltas
    assert child.base is None


@pytest.mark.parametrize("point", [0, -1, LAY.n_layers, LAY.n_layers + 1])
def test_crossover_point_out_of_range_raises(point):
    with pytest.raises(ValueError, match=f"crossover point {point}"):
        crossover(founder(ARCH, 1), founder(ARCH, 2), point)


def test_crossover_of_different_architectures_raises():
    wide_arch = nets.convnet([3, 8, 8], [{"channels": 4, "kernel": 3, "stride": 1}], [9, 6], 3)
    with pytest.raises(ValueError, match="same architecture"):
        crossover(founder(ARCH, 1), founder(wide_arch, 1), 1)


# --- sample_delta -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gaussian", "layer", "norm", "adaptive"])
def test_sampled_deltas_stay_inside_the_noise_table(kind):
    rng = np.random.default_rng(0)
    noise_size = LAY.size + 3  # only four offsets fit a whole-network delta
    for _ in range(300):
        delta = sample_delta(rng, kind, 0.02, 0.1, LAY, noise_size)
        lo, hi = LAY.span(delta.layers)
        assert 0 <= delta.offset and delta.offset + (hi - lo) <= noise_size
        if kind == "adaptive":
            assert 0 <= delta.rate_offset and delta.rate_offset + (hi - lo) <= noise_size
            assert delta.tau == 0.1
        assert delta.sigma == 0.02


def test_a_layer_delta_covers_exactly_one_layer(noise):
    rng = np.random.default_rng(0)
    base = founder(ARCH, 1)
    before = build(noise, base)
    seen = set()
    for _ in range(40):
        delta = sample_delta(rng, "layer", 0.1, 0.0, LAY, NOISE_SIZE)
        assert delta.kind == "gaussian"
        lo, hi = delta.layers
        assert hi == lo + 1
        seen.add(lo)
        after = build(noise, mutate(base, delta))
        start, stop = LAY.layer_bounds[lo]
        assert (after[start:stop] != before[start:stop]).all()
        assert torch.equal(after[:start], before[:start]) and torch.equal(after[stop:], before[stop:])
    assert seen == set(range(LAY.n_layers))


def test_a_noise_table_smaller_than_the_network_is_refused():
    with pytest.raises(ValueError, match="noise table"):
        sample_delta(np.random.default_rng(0), "gaussian", 0.02, 0.1, LAY, LAY.size - 1)


def test_an_unknown_mutation_kind_is_refused():
    with pytest.raises(ValueError, match="accepted: gaussian, layer, norm, adaptive"):
        sample_delta(np.random.default_rng(0), "cauchy", 0.02, 0.1, LAY, NOISE_SIZE)


def test_an_unknown_delta_kind_is_refused():
    with pytest.raises(ValueError, match="unknown"):
        Delta("cauchy")
    with pytest.raises(ValueError, match="only the keys"):
        Delta.from_json({"k": "gaussian", "sigma": 0.1})


# --- what a delta touches ---------------------------------------------------------------------------


def test_biases_are_mutated_like_weights(noise):
    base = founder(ARCH, 1)
    before = build(noise, base)
    after = build(noise, mutate(base, Delta("gaussian", 77, 0.1)))
    biases = [s for s in LAY.slots if s.name.endswith("bias")]
    assert len(biases) == LAY.n_layers
    for slot in LAY.slots:
        assert (after[slot.start : slot.stop] != before[slot.start : slot.stop]).all(), slot.name
    torch.testing.assert_close(after, before + 0.1 * noise.slice(77, LAY.size))


def test_founder_biases_are_initialized_from_the_seed(noise):
    flat = build(noise, founder(ARCH, 1))
    for slot in LAY.slots:
        values = flat[slot.start : slot.stop]
        bound = 1.0 / np.sqrt(slot.fan_in)
        assert values.abs().max() <= bound and values.std() > 0, slot.name
    assert not torch.equal(flat, build(noise, founder(ARCH, 2)))


def test_numbers_of_any_type_survive_the_json_round_trip():
    # an int sigma or a numpy offset must hash as its JSON form reads back
    delta = Delta("adaptive", np.int64(5), 1, rate_offset=np.int32(7), tau=np.float32(0.5))
    genome = mutate(founder(ARCH, 1), delta)
    assert Genome.from_json(json.loads(json.dumps(genome.to_json()))).id == genome.id
