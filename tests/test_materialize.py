"""Genome -> weights: the same bits whichever path builds them, and a child costs one delta."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from evoarena.encoding import nets
from evoarena.encoding.genome import Checkpoint, Delta, Genome, crossover, founder, mutate, rebase, sample_delta
from evoarena.encoding.materialize import Materializer, ParentCache, Stats, Weights
from evoarena.encoding.noise import open_noise

ARCH = nets.convnet([3, 8, 8], [{"channels": 4, "kernel": 3, "stride": 1}], [8, 6], 3)  # 4 parametric layers
LAY = nets.layout(ARCH)
NOISE_SIZE = 2**16
NET_BYTES = LAY.size * 4
MUTATIONS = ("gaussian", "layer", "norm", "adaptive")


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    return open_noise(5, NOISE_SIZE, tmp_path_factory.mktemp("noise"))


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)


def same_weights(a: Weights, b: Weights) -> bool:
    """Bit-for-bit equality of the weights and of the log-rates (present on both or on neither)."""
    if not torch.equal(bits(a.flat), bits(b.flat)):
        return False
    if a.rates is None or b.rates is None:
        return a.rates is None and b.rates is None
    return torch.equal(bits(a.rates), bits(b.rates))


def snapshot(weights: Weights) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors, copied out of the materializer's cache (as an artifact store would)."""
    return {k: v.clone() for k, v in weights.tensors(ARCH).items()}


def delta(kind: str, offset: int, sigma: float = 0.1, tau: float = 0.3, rate_offset: int = 0, layers=None) -> Delta:
    return Delta(kind, offset, sigma, layers, rate_offset, tau)


# --- the property: every path gives the same bits ---------------------------------------------------


@dataclass
class Node:
    genome: Genome
    made_by: str  # founder | mutate | crossover | rebase
    own_deltas: int = 0  # crossover: the mutations applied after it (`then`)


@dataclass
class Tree:
    nodes: list[Node]
    saved: dict[str, dict[str, torch.Tensor]]  # checkpoint uri -> tensors: an in-memory artifact store

    def materializer(self, noise, budget: int) -> Materializer:
        return Materializer(noise, ParentCache(budget), load_checkpoint=lambda uri: self.saved[uri])


def grow_tree(data, noise) -> Tree:
    """Founders, mutations of every kind, crossovers and rebases, on random nodes of a growing tree."""
    tree = Tree([], {})
    seeds = st.integers(0, 3)  # few seeds: founders that share a start, and some that do not

    def newest_first() -> int:  # shrinks towards the newest node: deep lineages
        return len(tree.nodes) - 1 - data.draw(st.integers(0, len(tree.nodes) - 1))

    def sampled() -> Delta:
        kind = data.draw(st.sampled_from(MUTATIONS))
        sigma, tau = data.draw(st.sampled_from([0.02, 0.3])), data.draw(st.sampled_from([0.1, 0.5]))
        return sample_delta(np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))), kind, sigma, tau, LAY, NOISE_SIZE)

    tree.nodes.append(Node(founder(ARCH, data.draw(seeds)), "founder"))
    for _ in range(data.draw(st.integers(3, 30))):
        op = data.draw(st.sampled_from(["founder", "mutate", "mutate", "mutate", "crossover", "crossover", "rebase"]))
        if op == "founder":
            tree.nodes.append(Node(founder(ARCH, data.draw(seeds)), op))
        elif op == "mutate":
            parent = tree.nodes[newest_first()].genome
            tree.nodes.append(Node(mutate(parent, sampled()), op))
        elif op == "crossover":
            first, second = tree.nodes[newest_first()].genome, tree.nodes[newest_first()].genome
            point = data.draw(st.integers(1, LAY.n_layers - 1))
            then = tuple(sampled() for _ in range(data.draw(st.integers(0, 1))))
            tree.nodes.append(Node(crossover(first, second, point, then=then), op, len(then)))
        else:
            genome = tree.nodes[newest_first()].genome
            # Any prefix of the delta list is a genome that could have been checkpointed, a crossover
            # child's own deltas included.
            j = data.draw(st.integers(0, genome.depth))
            prefix = Genome(ARCH, genome.init_seed, genome.deltas[:j], base=genome.base)
            uri = f"mem://checkpoints/{len(tree.saved)}"
            tree.saved[uri] = snapshot(tree.materializer(noise, 0).build(prefix))
            rebased = rebase(genome, Checkpoint(prefix.id, uri))
            assert rebased.id == genome.id and rebased.base.uri == uri
            tree.nodes.append(Node(rebased, op))
    return tree


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_build_path_gives_the_same_bits(noise, data):
    """DESIGN invariants 2 and 3, on random genome trees."""
    tree = grow_tree(data, noise)
    genomes = [node.genome for node in tree.nodes]

    # (a) nothing cached: the full chain, or the base checkpoint plus the deltas after it
    reference = []
    for genome in genomes:
        fresh = tree.materializer(noise, 0)
        reference.append(fresh.build(genome).clone())
        expected = "from_checkpoint" if genome.base is not None else "full_chain"
        assert getattr(fresh.stats, expected) == 1 and fresh.stats.builds == 1

    # (b) creation order, everything fits: each new genome is one step from something cached
    in_order = tree.materializer(noise, 10**9)
    for node, expected in zip(tree.nodes, reference):
        was_cached = node.genome.id in in_order.cache
        before = replace(in_order.stats)
        assert same_weights(in_order.build(node.genome), expected)
        applied = in_order.stats.deltas_applied - before.deltas_applied
        if was_cached:
            assert in_order.stats.cached == before.cached + 1 and applied == 0
        elif node.made_by == "mutate":
            assert in_order.stats.from_parent == before.from_parent + 1 and applied == 1
        elif node.made_by == "crossover":
            assert in_order.stats.from_parent == before.from_parent + 1 and applied == node.own_deltas
        else:  # a founder (a rebase keeps the id of a node built before it)
            assert node.made_by == "founder" and in_order.stats.full_chain == before.full_chain + 1

    # (c) a cache of about two networks and a random order: evictions, older ancestors, checkpoints
    squeezed = tree.materializer(noise, int(2.5 * NET_BYTES))
    for i in data.draw(st.permutations(range(len(genomes)))):
        assert same_weights(squeezed.build(genomes[i]), reference[i])
        assert squeezed.cache.used <= squeezed.cache.budget
    for path, count in squeezed.stats.as_dict().items():
        if path not in ("hit_rate", "deltas_applied") and count:
            event(f"squeezed cache built by {path}")

    # (d) crossover children (and their rebased forms) from their two cached parents: copy each side,
    # apply the child's own deltas
    by_id = {genome.id: genome for genome in genomes}
    for node, expected in zip(tree.nodes, reference):
        if len(node.genome.parents) != 2:
            continue
        m = tree.materializer(noise, 10**9)
        for parent in node.genome.parents:
            m.build(by_id[parent])
        was_cached = node.genome.id in m.cache
        before = replace(m.stats)
        assert same_weights(m.build(node.genome), expected)
        if node.made_by == "crossover" and not was_cached:
            assert m.stats.from_parent == before.from_parent + 1
            assert m.stats.deltas_applied - before.deltas_applied == node.own_deltas


# --- Stats: which path each build took ---------------------------------------------------------------


def chain(seed: int, depth: int) -> list[Genome]:
    genomes = [founder(ARCH, seed)]
    for i in range(depth):
        genomes.append(mutate(genomes[-1], delta(("gaussian", "norm", "adaptive")[i % 3], 100 * i)))
    return genomes


def test_a_founder_on_an_empty_cache_is_a_full_chain(noise):
    m = Materializer(noise, ParentCache(10**9))
    m.build(founder(ARCH, 1))
    assert (m.stats.full_chain, m.stats.builds, m.stats.deltas_applied) == (1, 1, 0)


def test_a_deep_genome_on_an_empty_cache_replays_every_delta(noise):
    m = Materializer(noise, ParentCache(10**9))
    m.build(chain(1, 30)[-1])
    assert (m.stats.full_chain, m.stats.deltas_applied) == (1, 30)
    assert m.stats.hit_rate == 0.0


def test_a_child_of_a_cached_parent_costs_one_delta(noise):
    genomes = chain(1, 30)
    m = Materializer(noise, ParentCache(10**9))
    m.build(genomes[29])
    m.stats = Stats()
    m.build(genomes[30])
    assert (m.stats.from_parent, m.stats.builds, m.stats.deltas_applied) == (1, 1, 1)


def test_a_cached_genome_costs_nothing(noise):
    genome = chain(1, 5)[-1]
    m = Materializer(noise, ParentCache(10**9))
    first = m.build(genome)
    assert m.build(genome) is first
    assert (m.stats.cached, m.stats.full_chain, m.stats.deltas_applied) == (1, 1, 5)
    assert m.stats.hit_rate == 0.5


def test_the_nearest_cached_ancestor_is_used(noise):
    genomes = chain(1, 20)
    m = Materializer(noise, ParentCache(10**9))
    m.build(genomes[5])
    m.build(genomes[12])  # from genomes[5]: 7 deltas
    m.stats = Stats()
    m.build(genomes[20])  # from genomes[12], not genomes[5]
    assert (m.stats.from_ancestor, m.stats.deltas_applied) == (1, 8)


def test_a_rebased_genome_starts_from_its_checkpoint(noise):
    genomes = chain(1, 20)
    saved = {"mem://g15": snapshot(Materializer(noise, ParentCache(0)).build(genomes[15]))}
    rebased = rebase(genomes[20], Checkpoint(genomes[15].id, "mem://g15"))
    m = Materializer(noise, ParentCache(10**9), load_checkpoint=saved.__getitem__)
    built = m.build(rebased)
    assert (m.stats.from_checkpoint, m.stats.deltas_applied) == (1, 5)
    assert same_weights(built, Materializer(noise, ParentCache(0)).build(genomes[20]))


def test_a_cached_ancestor_beats_the_checkpoint(noise):
    genomes = chain(1, 20)
    saved = {"mem://g10": snapshot(Materializer(noise, ParentCache(0)).build(genomes[10]))}
    m = Materializer(noise, ParentCache(10**9), load_checkpoint=saved.__getitem__)
    m.build(genomes[17])
    m.stats = Stats()
    m.build(rebase(genomes[20], Checkpoint(genomes[10].id, "mem://g10")))
    assert (m.stats.from_ancestor, m.stats.deltas_applied) == (1, 3)


def test_a_crossover_child_of_two_cached_parents_costs_its_own_deltas(noise):
    a, b = chain(1, 6)[-1], chain(2, 4)[-1]
    child = crossover(a, b, 2, then=(delta("gaussian", 7), delta("norm", 8)))
    m = Materializer(noise, ParentCache(10**9))
    m.build(a), m.build(b)
    m.stats = Stats()
    m.build(child)
    assert (m.stats.from_parent, m.stats.deltas_applied) == (1, 2)


def test_a_crossover_child_with_one_cached_parent_replays_its_list(noise):
    a, b = chain(1, 6)[-1], chain(2, 4)[-1]
    child = crossover(a, b, 2)
    m = Materializer(noise, ParentCache(10**9))
    m.build(a)
    m.stats = Stats()
    m.build(child)
    assert (m.stats.full_chain, m.stats.deltas_applied) == (1, child.depth)


# --- ParentCache -------------------------------------------------------------------------------------


def floats(n: int, rates: bool = False) -> Weights:
    return Weights(torch.zeros(n), torch.zeros(n) if rates else None)


def test_cache_evicts_the_least_recently_used():
    cache = ParentCache(3 * 400)
    for name in "abc":
        cache.put(name, floats(100))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", floats(100))
    assert cache.ids() == ["c", "a", "d"]
    assert "b" not in cache and cache.get("b") is None


def test_cache_stays_within_its_byte_budget():
    cache = ParentCache(1000)
    for i, n in enumerate([100, 50, 120, 10, 200, 60, 30, 250]):
        cache.put(str(i), floats(n))
        assert cache.used == sum(cache.get(k).nbytes for k in cache.ids()) <= 1000
    assert cache.ids()[-1] == "7"


def test_an_item_larger_than_the_budget_is_not_cached():
    cache = ParentCache(1000)
    cache.put("small", floats(100))
    cache.put("huge", floats(251))
    assert "huge" not in cache
    assert cache.ids() == ["small"] and cache.used == 400


def test_putting_an_id_again_updates_its_bytes():
    cache = ParentCache(10_000)
    cache.put("a", floats(100))
    cache.put("b", floats(100))
    cache.put("a", floats(100, rates=True))
    assert len(cache) == 2 and cache.used == 400 + 800
    assert cache.ids() == ["b", "a"]


def test_an_adaptive_genome_counts_its_rates():
    assert floats(100, rates=True).nbytes == 800


# --- what the deltas do --------------------------------------------------------------------------------


def test_norm_mutation_keeps_each_tensor_norm(noise):
    base = founder(ARCH, 1)
    before = Materializer(noise, ParentCache(0)).build(base).flat
    after = Materializer(noise, ParentCache(0)).build(mutate(base, delta("norm", 321, sigma=0.5))).flat
    for slot in LAY.slots:
        old, new = before[slot.start : slot.stop], after[slot.start : slot.stop]
        assert not torch.equal(old, new), slot.name
        torch.testing.assert_close(torch.linalg.vector_norm(new), torch.linalg.vector_norm(old), rtol=1e-5, atol=0)


def test_adaptive_mutation_creates_rates_and_changes_them(noise):
    base = founder(ARCH, 1)
    once = mutate(base, delta("adaptive", 10, sigma=0.1, tau=0.3, rate_offset=5000))
    twice = mutate(once, delta("adaptive", 20, sigma=0.1, tau=0.3, rate_offset=9000))
    m = Materializer(noise, ParentCache(10**9))
    w0, w1, w2 = (m.build(g) for g in (base, once, twice))
    assert w0.rates is None
    torch.testing.assert_close(w1.rates, 0.3 * noise.slice(5000, LAY.size))
    torch.testing.assert_close(w2.rates, w1.rates + 0.3 * noise.slice(9000, LAY.size))
    torch.testing.assert_close(w2.flat, w1.flat + 0.1 * w2.rates.exp() * noise.slice(20, LAY.size))
    assert "rates.0.weight" in w2.tensors(ARCH)


@pytest.mark.parametrize("same_founder", [True, False])
@pytest.mark.parametrize("point", range(1, LAY.n_layers))
def test_a_crossover_child_takes_each_side_from_its_parent(noise, same_founder, point):
    rng = np.random.default_rng(point)
    common = mutate(founder(ARCH, 1), delta("adaptive", 3, rate_offset=70))
    a, b = common, (common if same_founder else founder(ARCH, 2))
    for i in range(8):
        a = mutate(a, sample_delta(rng, MUTATIONS[i % 4], 0.1, 0.3, LAY, NOISE_SIZE))
        b = mutate(b, sample_delta(rng, MUTATIONS[(i + 1) % 4], 0.1, 0.3, LAY, NOISE_SIZE))
    child = crossover(a, b, point)
    assert any(d.kind == "init" for d in child.deltas) != same_founder
    built = {g.id: Materializer(noise, ParentCache(0)).build(g) for g in (a, b, child)}  # full chains only
    start = LAY.layer_bounds[point][0]
    kid, first, second = built[child.id], built[a.id], built[b.id]
    assert torch.equal(bits(kid.flat[:start]), bits(first.flat[:start]))
    assert torch.equal(bits(kid.flat[start:]), bits(second.flat[start:]))
    assert torch.equal(bits(kid.rates[:start]), bits(first.rates[:start]))
    assert torch.equal(bits(kid.rates[start:]), bits(second.rates[start:]))


# --- errors --------------------------------------------------------------------------------------------


def test_a_checkpoint_without_a_loader_is_a_clear_error(noise):
    genomes = chain(1, 4)
    rebased = rebase(genomes[4], Checkpoint(genomes[2].id, "file:///runs/g2.safetensors"))
    with pytest.raises(RuntimeError, match="needs checkpoint file:///runs/g2.safetensors .* no artifact store"):
        Materializer(noise, ParentCache(10**9)).build(rebased)


def test_a_load_delta_without_a_loader_is_a_clear_error(noise):
    genomes = chain(1, 4)
    second = rebase(genomes[4], Checkpoint(genomes[2].id, "file:///runs/g2.safetensors"))
    child = crossover(founder(ARCH, 3), second, 2)
    with pytest.raises(RuntimeError, match="needs checkpoint file:///runs/g2.safetensors"):
        Materializer(noise, ParentCache(10**9)).build(child)


# --- regressions ---------------------------------------------------------------------------------------


def test_a_crossover_child_rebased_on_itself_keeps_its_own_deltas(noise):
    a, b = chain(1, 2)[-1], chain(1, 3)[-1]
    child = crossover(a, b, 1, then=(delta("gaussian", 30), delta("gaussian", 40)))
    expected = Materializer(noise, ParentCache(0)).build(child)
    saved = {"mem://child": snapshot(expected)}
    rebased = rebase(child, Checkpoint(child.id, "mem://child"))  # an elite checkpointed as itself
    m = Materializer(noise, ParentCache(10**9), load_checkpoint=saved.__getitem__)
    m.build(a), m.build(b)
    assert same_weights(m.build(rebased), expected)


def test_a_genome_checkpoints_the_same_tensors_whichever_path_builds_it(noise):
    f = founder(ARCH, 1)
    carrier = crossover(mutate(f, delta("adaptive", 10, rate_offset=99)), mutate(f, delta("gaussian", 20)), 1)
    other = mutate(f, delta("gaussian", 50))
    child = crossover(other, carrier, 2)  # carrier's adaptive delta (layer 0) falls outside layers 2..3
    m = Materializer(noise, ParentCache(10**9))
    m.build(carrier), m.build(other)
    fast, full = m.build(child), Materializer(noise, ParentCache(0)).build(child)
    fast_tensors, full_tensors = fast.tensors(ARCH), full.tensors(ARCH)
    assert sorted(fast_tensors) == sorted(full_tensors)
    for name, tensor in full_tensors.items():  # the values, bit for bit, not only the names
        assert torch.equal(fast_tensors[name], tensor), name
