"""The truncation GA as pure functions: who is selected, who is born, and that it is all repeatable."""

from __future__ import annotations

import math

import pytest

from evoarena.evolve import ga
from evoarena.encoding.genome import Checkpoint, Delta, Genome, founder, mutate
from evoarena.encoding.nets import convnet, layout
from evoarena.spec.experiment import GASpec

# tiny.yaml's network: conv, linear, linear (three parametric layers, so crossover has two points).
ARCH = convnet([3, 16, 16], [{"channels": 4, "kernel": 4, "stride": 2}], [16], 4)
NOISE_SIZE = 65_536


def ga_spec(**fields) -> GASpec:
    return GASpec(**{"generations": 5, "parents": 2, "children_per_parent": 3, "elites": 1, **fields})


def scored(fitnesses: list[float | None]) -> list[ga.Scored]:
    """One founder per fitness, init seeds 0, 1, 2, ... in order."""
    return [ga.Scored(founder(ARCH, seed), f) for seed, f in enumerate(fitnesses)]


def parents_of(n: int) -> list[Genome]:
    return [founder(ARCH, 100 + i) for i in range(n)]


def offspring(spec: GASpec, parents: list[Genome], seed: int = 7, generation: int = 3) -> list[ga.Individual]:
    rng = ga.generation_rng(seed, generation)
    return ga.reproduce(parents, parents[: spec.elites], spec, rng, NOISE_SIZE)


# --- select ---------------------------------------------------------------------------------


def test_select_takes_the_fittest_as_parents_and_elites_best_first():
    population = scored([0.1, 0.9, 0.5, 0.7, 0.3])

    parents, elites = ga.select(population, ga_spec(parents=3, elites=2))

    fitness = {s.genome.id: s.fitness for s in population}
    assert [fitness[p.id] for p in parents] == [0.9, 0.7, 0.5]
    assert [fitness[e.id] for e in elites] == [0.9, 0.7]


def test_select_breaks_fitness_ties_on_genome_id():
    population = scored([0.5, 0.5, 0.5, 0.1])

    parents, _ = ga.select(population, ga_spec(parents=3, elites=1))

    assert [p.id for p in parents] == sorted(s.genome.id for s in population[:3])
    # and the order given does not matter
    assert ga.select(list(reversed(population)), ga_spec(parents=3, elites=1))[0] == parents


@pytest.mark.parametrize("failed", [None, math.nan], ids=["None", "NaN"])
def test_select_never_picks_a_failed_evaluation_even_when_short_of_parents(failed):
    population = scored([failed, 0.2, failed, -5.0])

    parents, elites = ga.select(population, ga_spec(parents=4, elites=3))

    assert [p.init_seed for p in parents] == [1, 3]
    assert [e.init_seed for e in elites] == [1, 3]


def test_select_counts_a_genome_scored_twice_once():
    # An elite is evaluated again in the next generation; it must not take two parent slots.
    twice = founder(ARCH, 1)
    population = [ga.Scored(twice, 0.9), ga.Scored(twice, 0.9), ga.Scored(founder(ARCH, 2), 0.5)]

    parents, _ = ga.select(population, ga_spec(parents=2, elites=1))

    assert [p.init_seed for p in parents] == [1, 2]


# --- reproduce ------------------------------------------------------------------------------


def test_reproduce_carries_elites_unchanged_then_children_per_parent():
    spec = ga_spec(parents=2, children_per_parent=3, elites=1)
    parents = parents_of(2)

    population = offspring(spec, parents)

    assert len(population) == spec.population == 1 + 2 * 3
    assert [i.role for i in population] == ["elite"] + ["child"] * 6
    assert population[0].genome == parents[0]
    assert population[0].genome.id == parents[0].id


def test_reproduce_gives_parent_i_its_own_children_one_delta_each():
    spec = ga_spec(parents=3, children_per_parent=4, elites=0)
    parents = [mutate(p, Delta("gaussian", offset=10 * i, sigma=0.1)) for i, p in enumerate(parents_of(3))]

    children = [i.genome for i in offspring(spec, parents)]

    for index, child in enumerate(children):
        parent = parents[index // spec.children_per_parent]
        assert child.parents == (parent.id,)
        assert child.init_seed == parent.init_seed
        assert child.deltas[:-1] == parent.deltas
        assert child.prefix_ids[-2] == parent.id  # the child's id chains on from its parent's
        assert child.deltas[-1].kind == "gaussian" and child.deltas[-1].sigma == spec.mutation.sigma
        assert all(d.kind != "cross" for d in child.deltas)
    assert len({c.id for c in children}) == len(children)


def test_reproduce_with_crossover_rate_one_gives_every_child_two_parents():
    spec = ga_spec(parents=3, children_per_parent=4, elites=0, crossover_rate=1.0)
    parents = parents_of(3)

    children = [i.genome for i in offspring(spec, parents)]

    n_layers = layout(ARCH).n_layers
    for index, child in enumerate(children):
        first = parents[index // spec.children_per_parent]
        assert len(child.parents) == 2
        assert child.parents[0] == first.id
        assert child.parents[1] in {p.id for p in parents} - {first.id}
        marker, own = child.deltas[-2], child.deltas[-1:]  # crossover, then one mutation
        assert marker.kind == "cross" and marker.mates == child.parents
        assert marker.point in range(1, n_layers)
        assert own[0].kind == "gaussian"


def test_reproduce_is_a_function_of_the_generation_rng():
    spec = ga_spec(parents=2, children_per_parent=3, elites=1)
    parents = parents_of(2)

    def ids(seed: int, generation: int) -> list[str]:
        return [i.genome.id for i in offspring(spec, parents, seed, generation)]

    assert ids(seed=7, generation=3) == ids(seed=7, generation=3)
    assert ids(seed=7, generation=4)[1:] != ids(seed=7, generation=3)[1:]
    assert ids(seed=8, generation=3)[1:] != ids(seed=7, generation=3)[1:]


# --- founders -------------------------------------------------------------------------------


def test_founders_are_the_population_with_distinct_seeds():
    spec = ga_spec(parents=2, children_per_parent=3, elites=1)

    population = ga.founders(spec, ARCH, ga.generation_rng(0, 0))

    assert len(population) == spec.population
    assert all(i.role == "founder" and i.genome.depth == 0 for i in population)
    assert len({i.genome.init_seed for i in population}) == spec.population


def test_founders_honour_initial_population():
    spec = ga_spec(initial_population=20)

    population = ga.founders(spec, ARCH, ga.generation_rng(0, 0))

    assert len(population) == 20
    assert len({i.genome.id for i in population}) == 20


def test_founders_are_a_function_of_the_generation_rng():
    spec = ga_spec()

    def ids(seed: int) -> list[str]:
        return [i.genome.id for i in ga.founders(spec, ARCH, ga.generation_rng(seed, 0))]

    assert ids(0) == ids(0)
    assert set(ids(0)).isdisjoint(ids(1))


# --- rebase_all -----------------------------------------------------------------------------


def lineage(root: Genome, n: int, start: int = 0) -> list[Genome]:
    """root, its child, its grandchild, ...: n generations of one-delta mutations."""
    chain = [root]
    for j in range(n):
        chain.append(mutate(chain[-1], Delta("gaussian", offset=start + j, sigma=0.02)))
    return chain


def test_rebase_all_rebases_descendants_of_a_checkpoint_and_keeps_ids():
    line = lineage(founder(ARCH, 1), 5)
    stranger = lineage(founder(ARCH, 2), 5)[-1]
    checkpoint = Checkpoint(line[2].id, "file:///ckpt/line2.safetensors")

    descendant, unrelated = ga.rebase_all([line[5], stranger], [checkpoint])

    assert descendant.id == line[5].id
    assert descendant.base == checkpoint
    assert descendant.deltas == line[5].deltas[2:]
    assert unrelated == stranger and unrelated.base is None


def test_rebase_all_leaves_an_ancestor_of_the_checkpoint_alone():
    line = lineage(founder(ARCH, 1), 5)
    checkpoint = Checkpoint(line[3].id, "file:///ckpt/line3.safetensors")

    (older,) = ga.rebase_all([line[2]], [checkpoint])

    assert older == line[2] and older.base is None


def test_rebase_all_uses_the_newest_checkpoint_among_the_ancestors():
    line = lineage(founder(ARCH, 1), 6)
    old = Checkpoint(line[1].id, "file:///ckpt/line1.safetensors")
    new = Checkpoint(line[4].id, "file:///ckpt/line4.safetensors")

    (rebased,) = ga.rebase_all([line[6]], [new, old])

    assert rebased.base == new
    assert rebased.deltas == line[6].deltas[4:]
    assert rebased.id == line[6].id
