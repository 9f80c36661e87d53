"""The arena's fitness kinds, each checked against numbers worked out by hand in the test."""

from __future__ import annotations

import math
import re

import pytest

from evoarena.evolve.fitness import KINDS, elo, host_pathogen, judged_mask, score, seed001

ALL_2x3 = [[True, True, True], [True, True, True]]
ALL_3x3 = [[True] * 3 for _ in range(3)]

# Three generators: one always caught, one never caught, one in between.
SPREAD = [
    [0.0, 0.0, 0.0],
    [1.0, 1.0, 1.0],
    [0.2, 0.4, 0.9],
]

# Column means (fakes let through): 0.4, 0.7, 0.25; fakes caught: 0.6, 0.3, 0.75.
CATCHES = [
    [0.2, 0.4, 0.0],
    [0.6, 1.0, 0.5],
]
REAL = [0.9, 0.5, 1.0]


def approx(values):
    return pytest.approx(values, rel=1e-12, abs=1e-12)


# --- seed001 ---------------------------------------------------------------------------------


def test_seed001_generator_caught_by_every_judge_scores_0_and_caught_by_none_scores_1():
    gen, _ = seed001(SPREAD, [1.0, 1.0, 1.0], ALL_3x3)
    assert gen[0] == 0.0
    assert gen[1] == 1.0


def test_seed001_cluster_target_averages_over_the_judges():
    gen, _ = seed001(SPREAD, [1.0, 1.0, 1.0], ALL_3x3, target="cluster")
    assert gen == approx([0.0, 1.0, (0.2 + 0.4 + 0.9) / 3])


def test_seed001_single_target_takes_the_most_fooled_judge():
    gen, _ = seed001(SPREAD, [1.0, 1.0, 1.0], ALL_3x3, target="single")
    assert gen == approx([0.0, 1.0, 0.9])


def test_seed001_only_judging_discriminators_count_for_a_generator():
    judged = [[True, True, True], [True, True, True], [True, True, False]]  # disc 2 does not judge gen 2
    cluster, _ = seed001(SPREAD, [1.0, 1.0, 1.0], judged)
    single, _ = seed001(SPREAD, [1.0, 1.0, 1.0], judged, target="single")
    assert cluster[2] == pytest.approx((0.2 + 0.4) / 2)
    assert single[2] == pytest.approx(0.4)


def test_seed001_discriminator_with_rac_weight_0_scores_only_fakes_caught():
    _, disc = seed001(CATCHES, REAL, ALL_2x3, rac_weight=0.0)
    assert disc == approx([1 - (0.2 + 0.6) / 2, 1 - (0.4 + 1.0) / 2, 1 - (0.0 + 0.5) / 2])
    assert disc == approx([0.6, 0.3, 0.75])


def test_seed001_discriminator_with_rac_weight_1_scores_only_real_accepted():
    _, disc = seed001(CATCHES, REAL, ALL_2x3, rac_weight=1.0)
    assert disc == approx([0.9, 0.5, 1.0])


def test_seed001_discriminator_with_rac_weight_half_averages_the_two():
    _, disc = seed001(CATCHES, REAL, ALL_2x3, rac_weight=0.5)
    assert disc == approx([0.5 * 0.9 + 0.5 * 0.6, 0.5 * 0.5 + 0.5 * 0.3, 0.5 * 1.0 + 0.5 * 0.75])


def test_seed001_discriminator_counts_only_the_generators_it_judges():
    judged = [[False, True, True], [True, True, True]]  # disc 0 judges only gen 1
    _, disc = seed001(CATCHES, REAL, judged, rac_weight=0.0)
    assert disc[0] == pytest.approx(1 - 0.6)


def test_seed001_unjudged_generator_and_idle_discriminator_get_nan():
    judged = [[False, False, False], [True, True, False]]  # nobody judges gen 0; disc 2 judges nobody
    gen, disc = seed001(CATCHES, REAL, judged)
    assert math.isnan(gen[0])
    assert gen[1] == pytest.approx((0.6 + 1.0) / 2)
    assert math.isnan(disc[2])


def test_seed001_rejects_a_rac_weight_outside_0_1():
    with pytest.raises(ValueError, match=r"rac_weight must be in \[0, 1\], got 1.5"):
        seed001(CATCHES, REAL, ALL_2x3, rac_weight=1.5)


def test_seed001_rejects_an_unknown_target():
    with pytest.raises(ValueError, match=r"target must be one of \('cluster', 'single'\), got 'pair'"):
        seed001(CATCHES, REAL, ALL_2x3, target="pair")


# --- host_pathogen -------------------------------------------------------------------------

# Column means (fake_error per host): 0.05, 0.2, 0.5; row means (per pathogen): 0.3, 0.2.
INFECTIONS = [
    [0.1, 0.3, 0.5],
    [0.0, 0.1, 0.5],
]
HOST_REAL = [0.9, 1.0, 0.8]  # real_error: 0.1, 0.0, 0.2


def test_host_below_the_floor_is_floored():
    # host 0, a = v = 20: load = sqrt((20 * 0.1)^2 + (20 * 0.05)^2) = sqrt(4 + 1) = sqrt(5);
    # fitness = 1 - (1 - exp(-5)) = exp(-5) ~ 0.0067 < 0.01, so 0.01.
    assert math.exp(-5) < 0.01
    _, host = host_pathogen(INFECTIONS, HOST_REAL, ALL_2x3, autoimmunity=20.0, virulence=20.0)
    assert host == approx([0.01, 0.01, 0.01])  # loads^2 5, 16 and 116: all below the floor


def test_host_above_the_floor_is_exp_of_minus_load_squared():
    # a = v = 1: load^2 = 0.1^2 + 0.05^2 = 0.0125, 0^2 + 0.2^2 = 0.04, 0.2^2 + 0.5^2 = 0.29
    _, host = host_pathogen(INFECTIONS, HOST_REAL, ALL_2x3, autoimmunity=1.0, virulence=1.0)
    assert host == approx([math.exp(-0.0125), math.exp(-0.04), math.exp(-0.29)])


def test_host_weighs_blocked_real_data_by_autoimmunity():
    # a = 2, v = 1, host 0: load^2 = (2 * 0.1)^2 + 0.05^2 = 0.04 + 0.0025 = 0.0425
    _, host = host_pathogen(INFECTIONS, HOST_REAL, ALL_2x3, autoimmunity=2.0, virulence=1.0)
    assert host[0] == pytest.approx(math.exp(-0.0425))


def test_pathogen_fitness_is_virulence_times_weibull_of_scaled_fake_error():
    # v = 2: pathogen 0 = 2 * (1 - exp(-(2 * 0.3)^2)) = 2 * (1 - exp(-0.36)); pathogen 1: (2 * 0.2)^2 = 0.16
    pathogen, _ = host_pathogen(INFECTIONS, HOST_REAL, ALL_2x3, autoimmunity=1.0, virulence=2.0)
    assert pathogen == approx([2 * (1 - math.exp(-0.36)), 2 * (1 - math.exp(-0.16))])


def test_pathogen_below_the_floor_is_floored():
    # v = 1: pathogen 0 = 1 - exp(-0.09) ~ 0.086; pathogen 1 = 1 - exp(-0.04) ~ 0.039 < 0.05
    below, above = 1 - math.exp(-0.04), 1 - math.exp(-0.09)
    assert below < 0.05 < above  # the case straddles the floor, so the test shows both sides of it
    pathogen, _ = host_pathogen(INFECTIONS, HOST_REAL, ALL_2x3, autoimmunity=1.0, virulence=1.0)
    assert pathogen == approx([1 - math.exp(-0.09), 0.05])


def test_host_pathogen_unjudged_players_get_nan():
    judged = [[True, True, False], [False, False, False]]
    pathogen, host = host_pathogen(INFECTIONS, HOST_REAL, judged, autoimmunity=1.0, virulence=2.0)
    assert math.isnan(pathogen[1])
    assert math.isnan(host[2])
    # pathogen 0 now judged by hosts 0 and 1 only: fake_error = (0.1 + 0.3) / 2 = 0.2, (2 * 0.2)^2 = 0.16
    assert pathogen[0] == pytest.approx(2 * (1 - math.exp(-0.16)))


def test_host_pathogen_rejects_a_negative_virulence():
    with pytest.raises(ValueError, match="virulence must be a finite number >= 0, got -1.0"):
        host_pathogen(INFECTIONS, HOST_REAL, ALL_2x3, virulence=-1.0)


# --- elo -----------------------------------------------------------------------------------

ONE_GAME = [[True, False], [False, False]]  # only gen 0 against disc 0


def test_elo_equal_ratings_generator_win_moves_both_by_half_k():
    gen, disc = elo([[1.0, 0.0], [0.0, 0.0]], ONE_GAME, k=32.0)
    assert gen == [1500.0 + 16.0, 1500.0]
    assert disc == [1500.0 - 16.0, 1500.0]


def test_elo_equal_ratings_draw_changes_nothing():
    gen, disc = elo([[0.5, 0.0], [0.0, 0.0]], ONE_GAME, k=32.0)
    assert gen == [1500.0, 1500.0]
    assert disc == [1500.0, 1500.0]


def test_elo_discriminator_win_against_a_weaker_generator():
    # R_gen = 1500, R_disc = 1900: expected = 1 / (1 + 10^(400/400)) = 1/11; score 0
    gen, disc = elo([[0.0, 0.0], [0.0, 0.0]], ONE_GAME, [1500.0, 1500.0], [1900.0, 1500.0], k=32.0)
    assert gen == approx([1500.0 - 32.0 / 11, 1500.0])
    assert disc == approx([1900.0 + 32.0 / 11, 1500.0])


def test_elo_update_is_simultaneous_not_sequential():
    # gen 0 beats disc 0 and disc 1, all at 1500: both games expect 0.5, so +16 + 16 = +32.
    # (A sequential update would play the second game at 1516 and gain less than 16.)
    gen, disc = elo([[1.0, 1.0], [0.0, 0.0]], [[True, True], [False, False]], k=32.0)
    assert gen == [1532.0, 1500.0]
    assert disc == [1484.0, 1484.0]


def test_elo_starts_missing_ratings_at_start():
    gen, disc = elo([[1.0, 0.0], [0.0, 0.0]], ONE_GAME, k=10.0, start=1000.0)
    assert gen == [1005.0, 1000.0]
    assert disc == [995.0, 1000.0]


def test_elo_rejects_ratings_of_the_wrong_length():
    with pytest.raises(ValueError, match=re.escape("ratings_disc has shape (3,) but the matrix needs shape (2,)")):
        elo([[1.0, 0.0], [0.0, 0.0]], ONE_GAME, None, [1500.0, 1500.0, 1500.0])


# --- score ---------------------------------------------------------------------------------


def test_score_dispatches_with_the_kinds_keyword_arguments():
    gen, disc = score("seed001", CATCHES, REAL, ALL_2x3, {"rac_weight": 1.0})
    assert gen == approx([(0.2 + 0.4 + 0.0) / 3, (0.6 + 1.0 + 0.5) / 3])
    assert disc == approx([0.9, 0.5, 1.0])


def test_score_passes_previous_ratings_to_elo():
    gen, disc = score("elo", [[1.0, 0.0], [0.0, 0.0]], [1.0, 1.0], ONE_GAME, {"k": 32.0},
                      previous=([1600.0, 1500.0], [1600.0, 1500.0]))
    assert gen == [1616.0, 1500.0]
    assert disc == [1584.0, 1500.0]


def test_score_rejects_an_unknown_kind_listing_the_kinds():
    assert KINDS == ("seed001", "host_pathogen", "elo")
    with pytest.raises(ValueError, match=re.escape("expected one of ('seed001', 'host_pathogen', 'elo')")):
        score("glicko", CATCHES, REAL, ALL_2x3, {})


def test_score_rejects_a_parameter_of_another_kind():
    with pytest.raises(ValueError, match=r"fitness kind 'seed001' takes no parameter \['virulence'\]"):
        score("seed001", CATCHES, REAL, ALL_2x3, {"virulence": 2.0})


# --- judged_mask -----------------------------------------------------------------------------


def test_judged_mask_with_speciation_pairs_only_different_players():
    mask = judged_mask([0, 1, 1], [0, 0, 1], speciation=True)
    assert mask == [
        [False, False, True],
        [True, True, False],
        [True, True, False],
    ]


def test_judged_mask_without_speciation_excludes_only_training_partners():
    mask = judged_mask([0, 1, 2], [0, 1, 2], speciation=False, partners=[0, None, 2])
    assert mask == [
        [False, True, True],
        [True, True, True],
        [True, True, False],
    ]


def test_judged_mask_without_speciation_or_partners_counts_every_pair():
    assert judged_mask([0, 0], [0, 0, 0], speciation=False) == ALL_2x3


def test_judged_mask_rejects_a_partner_outside_the_discriminators():
    with pytest.raises(ValueError, match=re.escape("partners[1] = 3 is not a discriminator index in [0, 3)")):
        judged_mask([0, 1], [0, 1, 2], speciation=False, partners=[0, 3])


def test_a_generator_whose_player_owns_every_discriminator_is_unjudged():
    mask = judged_mask([0, 1], [0, 0, 0], speciation=True)
    gen, _ = seed001(CATCHES, REAL, mask)
    assert math.isnan(gen[0])
    assert gen[1] == pytest.approx((0.6 + 1.0 + 0.5) / 3)


# --- shapes and values ---------------------------------------------------------------------


def test_mismatched_mask_shape_is_rejected_naming_both_shapes():
    with pytest.raises(ValueError, match=re.escape("judged has shape (3, 3) but matrix has shape (2, 3)")):
        seed001(CATCHES, REAL, ALL_3x3)


def test_real_accept_of_the_wrong_length_is_rejected_naming_the_shapes():
    with pytest.raises(ValueError, match=re.escape("real_accept has shape (2,) but matrix has 3 discriminators")):
        host_pathogen(CATCHES, [1.0, 1.0], ALL_2x3)


def test_a_matrix_that_is_not_two_dimensional_is_rejected():
    with pytest.raises(ValueError, match=re.escape("matrix must be G x D (generators x discriminators), got shape (3,)")):
        elo([0.1, 0.2, 0.3], [True, True, True])


def test_a_judged_value_outside_0_1_is_rejected():
    with pytest.raises(ValueError, match=re.escape("matrix[1][2] = 1.5 is judged but not a fraction in [0, 1]")):
        seed001([[0.2, 0.4, 0.0], [0.6, 1.0, 1.5]], REAL, ALL_2x3)


def test_unjudged_entries_may_be_nan():
    judged = [[False, True, True], [True, True, True]]
    gen, disc = seed001([[math.nan, 0.4, 0.0], [0.6, 1.0, 0.5]], REAL, judged, rac_weight=0.0)
    assert gen == approx([(0.4 + 0.0) / 2, (0.6 + 1.0 + 0.5) / 3])
    assert disc == approx([1 - 0.6, 1 - (0.4 + 1.0) / 2, 1 - (0.0 + 0.5) / 2])
