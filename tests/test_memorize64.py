"""Issue 11 part 3: the memorize problem's fitness kinds and seed 003's mutation options
(momentum, self-adaptive sigma, per-layer sigmas, the layer with the largest sigma)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from evoarena.encoding import nets
from evoarena.encoding.genome import Delta, canonical, child_delta, crossover, founder, mutate, sample_delta
from evoarena.encoding.materialize import Materializer, ParentCache
from evoarena.encoding.noise import open_noise
from evoarena.problems import memorize
from evoarena.spec.experiment import MemorizeSpec, MutationSpec, SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
ARCH = nets.convnet([3, 8, 8], [{"channels": 4, "kernel": 3, "stride": 1}], [8, 6], 3)  # 4 parametric layers
LAY = nets.layout(ARCH)
NOISE_SIZE = 2**16

# Three points, three classes. Point 0: label 0, argmax 0, margin 2 - 1 = 1. Point 1: label 1,
# argmax 1, margin 3 - 1 = 2. Point 2: label 2, argmax 0, margin 0.5 - 1 = -0.5.
LOGITS = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.5]])
LABELS = torch.tensor([0, 1, 2])


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    return open_noise(17, NOISE_SIZE, tmp_path_factory.mktemp("noise"))


# --- fitness kinds ----------------------------------------------------------------------------------


def test_memorized_counts_the_points_whose_argmax_is_their_label():
    assert memorize.fitness_of("memorized", LOGITS, LABELS).item() == 2.0


def test_memorized_margin_adds_the_softsign_of_the_mean_margin_to_the_count():
    m = (1 + 2 - 0.5) / 3  # = 5/6, so m / (1 + |m|) = 5/11
    assert memorize.fitness_of("memorized_margin", LOGITS, LABELS).item() == pytest.approx(2 + (1 + 5 / 11) / 2, abs=1e-12)
    assert 2 + (1 + 5 / 11) / 2 == pytest.approx(2 + 8 / 11)


def test_cross_entropy_fitness_is_minus_the_mean_cross_entropy():
    rows = LOGITS.tolist()
    by_hand = [math.log(sum(math.exp(v) for v in row)) - row[y] for row, y in zip(rows, LABELS.tolist())]
    assert memorize.fitness_of("cross_entropy", LOGITS, LABELS).item() == pytest.approx(-sum(by_hand) / 3, abs=1e-6)


def test_one_more_point_memorized_beats_any_margin():
    # network A: all 3 points right by a hair; network B: 2 right by a huge margin, one wrong by a hair
    a = torch.tensor([[1.0, 0.999, 0.0], [0.0, 1.0, 0.999], [0.999, 0.0, 1.0]])
    b = torch.tensor([[1e9, 0.0, 0.0], [0.0, 1e9, 0.0], [0.0, 1.0, 0.999]])
    fa = memorize.fitness_of("memorized_margin", a, LABELS).item()
    fb = memorize.fitness_of("memorized_margin", b, LABELS).item()
    assert (math.floor(fa), math.floor(fb)) == (3, 2)
    assert fa > fb
    assert fb < 3.0  # the tie-break stays below one point even for an enormous margin


def test_the_margin_breaks_ties_between_equal_counts():
    confident = LOGITS * 2  # same argmax everywhere, every margin doubled
    assert memorize.fitness_of("memorized", confident, LABELS).item() == 2.0
    assert memorize.fitness_of("memorized_margin", confident, LABELS) > memorize.fitness_of("memorized_margin", LOGITS, LABELS)


@pytest.mark.parametrize("kind", memorize.FITNESS_KINDS)
def test_fitness_of_a_stacked_group_equals_each_network_alone(kind):
    group = torch.stack([LOGITS, LOGITS * 2, -LOGITS])
    together = memorize.fitness_of(kind, group, LABELS)
    alone = [memorize.fitness_of(kind, g, LABELS).item() for g in group]
    assert together.tolist() == alone


def test_an_unknown_fitness_kind_is_refused_with_the_accepted_ones():
    with pytest.raises(ValueError, match="accepted: cross_entropy, memorized, memorized_margin"):
        memorize.fitness_of("accuracy", LOGITS, LABELS)


def test_the_spec_accepts_exactly_the_problem_modules_fitness_kinds():
    assert MemorizeSpec.model_fields["fitness"].annotation.__args__ == memorize.FITNESS_KINDS


def test_a_wrong_fitness_kind_in_a_file_names_the_field():
    with pytest.raises(SpecError, match=r"problem\.fitness = 'accuracy'"):
        parse_spec({"name": "x", "problem": {"kind": "memorize", "fitness": "accuracy"}, "ga": {"generations": 1}}, "x.yaml")


def small_problem(fitness: str) -> dict:
    return MemorizeSpec(kind="memorize", image=(3, 8, 8), classes=3, batch_size=8, train_batches=2, val_batches=1,
                        fitness=fitness).model_dump(mode="json")


@pytest.mark.parametrize("kind", memorize.FITNESS_KINDS)
def test_evaluate_scores_with_the_problems_fitness_kind(kind):
    data = memorize.make_data(small_problem(kind))
    flat = torch.empty(LAY.size)
    nets.init_layers(ARCH, 3, flat)
    got = memorize.evaluate(ARCH, flat, data)
    logits = nets.forward(ARCH, flat, data.train_x)
    correct = int((logits.argmax(1) == data.train_y).sum())
    assert got["memorized"] == correct
    assert got["train_accuracy"] == correct / 16
    expected = {"cross_entropy": -got["train_loss"], "memorized": float(correct)}.get(kind)
    if expected is None:  # memorized_margin: the count plus a term in (0, 1)
        assert correct < got["fitness"] < correct + 1
    else:
        assert got["fitness"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("kind", memorize.FITNESS_KINDS)
def test_batched_and_one_by_one_evaluation_give_the_same_fitness(kind):
    data = memorize.make_data(small_problem(kind))
    flats = []
    for seed in (1, 2, 3, 4):
        flat = torch.empty(LAY.size)
        nets.init_layers(ARCH, seed, flat)
        flats.append(flat)
    together = memorize.evaluate_many(ARCH, torch.stack(flats), data)
    for flat, batched in zip(flats, together):
        alone = memorize.evaluate(ARCH, flat, data)
        assert batched["memorized"] == alone["memorized"]
        assert batched["fitness"] == pytest.approx(alone["fitness"], abs=1e-5)


def test_memorize_64_has_64_training_points():
    spec = load_spec(ROOT / "experiments" / "memorize-64.yaml")
    problem = spec.problem.model_dump(mode="json")
    assert len(memorize.make_data(problem).train_y) == 64
    assert spec.problem.fitness == "memorized_margin"


# --- seed 003's mutation options -------------------------------------------------------------------


def options(**kw) -> MutationSpec:
    return MutationSpec(**kw)


def lineage(m: MutationSpec, depth: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    genomes = [founder(ARCH, 7)]
    for _ in range(depth):
        genomes.append(mutate(genomes[-1], child_delta(rng, genomes[-1], m, LAY, NOISE_SIZE)))
    return genomes


OPTIONS = {
    "momentum": options(momentum=0.5, sigma=0.05),
    "self_adapt": options(self_adapt=0.3, sigma=0.05),
    "self_adapt_layer": options(kind="layer", self_adapt=0.3, sigma=0.05),
    "per_layer": options(self_adapt=0.3, per_layer=True, sigma=0.05),
    "largest_sigma": options(kind="layer", self_adapt=0.3, per_layer=True, layer_choice="largest_sigma", sigma=0.05),
    "per_layer_random_layer": options(kind="layer", self_adapt=0.3, per_layer=True, sigma=0.05),
}


@pytest.mark.parametrize("name", OPTIONS)
def test_each_option_replays_bit_identically_from_the_cached_parent_and_from_the_full_chain(noise, name):
    genomes = lineage(OPTIONS[name], 12)
    warm = Materializer(noise, ParentCache(1 << 30))
    for g in genomes:
        warm_flat, how = warm.build_how(g)
    assert how == "from_parent"  # the last child cost one delta from its cached parent
    cold = Materializer(noise, ParentCache(0)).build_how(genomes[-1])
    assert cold[1] == "full_chain"
    assert torch.equal(warm_flat.flat.view(torch.int32), cold[0].flat.view(torch.int32))


@pytest.mark.parametrize("name", OPTIONS)
def test_each_options_delta_survives_a_json_round_trip_with_its_id(name):
    child = lineage(OPTIONS[name], 3)[-1]
    again = type(child).from_json(json.loads(json.dumps(child.to_json())))
    assert again.id == child.id and again.deltas == child.deltas


# Bytes of canonical JSON per delta: a momentum delta is four numbers, a rated one a noise offset,
# one sigma per layer (at most SIGMA_DIGITS significant digits each) and the layer range.
MOMENTUM_BYTES = 80
RATED_BYTES_PER_LAYER = 16
RATED_BYTES_FIXED = 48


@pytest.mark.parametrize("name", OPTIONS)
def test_a_delta_stays_a_few_numbers(name):
    deltas = lineage(OPTIONS[name], 20)[-1].deltas
    sizes = [len(canonical(d.to_json()).encode()) for d in deltas]
    bound = RATED_BYTES_FIXED + RATED_BYTES_PER_LAYER * LAY.n_layers if OPTIONS[name].per_layer else MOMENTUM_BYTES
    assert max(sizes) < bound


def test_momentum_repeats_the_parents_fresh_noise_with_its_weight(noise):
    parent, child = lineage(OPTIONS["momentum"], 2)[1:]
    last, delta = parent.deltas[-1], child.deltas[-1]
    assert (delta.kind, delta.prev_offset, delta.weight) == ("momentum", last.offset, 0.5)
    table = noise.array
    expected = (build(noise, parent).numpy() + np.float32(0.05) * table[delta.offset : delta.offset + LAY.size]
                + np.float32(0.05 * 0.5) * table[last.offset : last.offset + LAY.size])
    assert np.allclose(build(noise, child).numpy(), expected, atol=1e-6)


def test_momentum_from_a_founder_is_a_plain_gaussian_step():
    first = lineage(OPTIONS["momentum"], 1)[1]
    assert first.deltas[-1].kind == "gaussian"


def test_a_self_adapted_sigma_is_the_parents_times_exp_tau_times_a_normal_draw():
    parent = mutate(founder(ARCH, 7), Delta("gaussian", 100, 0.04))
    delta = child_delta(np.random.default_rng(9), parent, options(self_adapt=0.3), LAY, NOISE_SIZE)
    z = np.random.default_rng(9).standard_normal()  # the first draw child_delta makes
    assert delta.kind == "gaussian"
    assert delta.sigma == pytest.approx(0.04 * math.exp(0.3 * z), rel=1e-5)


def test_per_layer_sigmas_each_adapt_from_the_parents():
    parent = mutate(founder(ARCH, 7), Delta("rated", 100, sigmas=(0.01, 0.02, 0.03, 0.04)))
    delta = child_delta(np.random.default_rng(9), parent, OPTIONS["per_layer"], LAY, NOISE_SIZE)
    z = np.random.default_rng(9).standard_normal(4)
    assert delta.kind == "rated" and delta.layers is None
    assert list(delta.sigmas) == pytest.approx([s * math.exp(0.3 * x) for s, x in zip((0.01, 0.02, 0.03, 0.04), z)], rel=1e-5)


def test_largest_sigma_mutates_the_layer_whose_adapted_sigma_is_largest():
    parent = mutate(founder(ARCH, 7), Delta("rated", 100, sigmas=(0.01, 0.02, 5.0, 0.04)))
    delta = child_delta(np.random.default_rng(9), parent, OPTIONS["largest_sigma"], LAY, NOISE_SIZE)
    assert delta.layers == (2, 3)
    assert max(delta.sigmas) == delta.sigmas[2]


def test_a_rated_delta_moves_each_layer_by_its_own_sigma(noise):
    start = founder(ARCH, 7)
    sigmas = (0.1, 0.0, 0.3, 0.0)
    child = mutate(start, Delta("rated", 500, sigmas=sigmas))
    moved = build(noise, child).numpy() - build(noise, start).numpy()
    for k, (lo, hi) in enumerate(LAY.layer_bounds):
        expected = np.float32(sigmas[k]) * noise.array[500 + lo : 500 + hi]
        assert np.allclose(moved[lo:hi], expected, atol=1e-6)


def test_a_rated_delta_whose_sigmas_are_not_a_list_of_numbers_is_refused():
    with pytest.raises(ValueError, match="'ss' must be a list of numbers"):
        Delta.from_json({"k": "rated", "o": 3, "ss": 0.5})


def test_a_rated_delta_with_the_wrong_number_of_sigmas_is_refused(noise):
    child = mutate(founder(ARCH, 7), Delta("rated", 500, sigmas=(0.1, 0.2)))
    with pytest.raises(ValueError, match="2 sigmas"):
        build(noise, child)


def test_with_every_option_off_a_child_draws_what_sample_delta_draws():
    parent = lineage(options(), 2)[-1]
    for kind in ("gaussian", "layer", "norm", "adaptive"):
        ours = child_delta(np.random.default_rng(4), parent, options(kind=kind), LAY, NOISE_SIZE)
        before = sample_delta(np.random.default_rng(4), kind, 0.02, 0.1, LAY, NOISE_SIZE)
        assert ours == before


def test_crossover_of_option_lineages_builds_the_same_bits_from_cached_parents_and_from_the_chain(noise):
    for name in ("momentum", "per_layer"):
        first, second = lineage(OPTIONS[name], 5, seed=1)[-1], lineage(OPTIONS[name], 5, seed=2)[-1]
        rng = np.random.default_rng(3)
        child = crossover(first, second, 2, then=(child_delta(rng, first, OPTIONS[name], LAY, NOISE_SIZE),))
        warm = Materializer(noise, ParentCache(1 << 30))
        warm.build(first), warm.build(second)
        hot, how = warm.build_how(child)
        assert how == "from_parent"
        cold = Materializer(noise, ParentCache(0)).build(child)
        assert torch.equal(hot.flat.view(torch.int32), cold.flat.view(torch.int32))


SPEC_ERRORS = {
    "momentum needs gaussian": ({"kind": "layer", "momentum": 0.5}, "ga.mutation.momentum = 0.5: needs kind gaussian"),
    "self_adapt needs gaussian or layer": ({"kind": "norm", "self_adapt": 0.2}, "ga.mutation.self_adapt = 0.2: needs kind gaussian or layer"),
    "per_layer needs self_adapt": ({"per_layer": True}, "ga.mutation.per_layer = True: needs self_adapt > 0"),
    "largest_sigma needs per_layer": ({"kind": "layer", "layer_choice": "largest_sigma"},
                                      "ga.mutation.layer_choice = 'largest_sigma': largest_sigma needs kind layer and per_layer"),
}


@pytest.mark.parametrize("case", SPEC_ERRORS)
def test_a_wrong_mutation_option_is_refused_naming_the_field(case):
    mutation, message = SPEC_ERRORS[case]
    with pytest.raises(SpecError) as caught:
        parse_spec({"name": "x", "ga": {"generations": 1, "mutation": mutation}}, "x.yaml")
    assert message in str(caught.value)


def test_options_that_read_the_parents_deltas_refuse_checkpoints():
    with pytest.raises(SpecError, match=r"ga\.checkpoint_every = 5: must be 0 with mutation\.momentum"):
        parse_spec({"name": "x", "ga": {"generations": 1, "checkpoint_every": 5, "mutation": {"momentum": 0.5}}}, "x.yaml")


def build(noise, genome) -> torch.Tensor:
    return Materializer(noise, ParentCache(0)).build(genome).flat
