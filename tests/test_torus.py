"""Spatial co-evolution's grid (evolve/torus.py), checked against neighbourhoods worked out by hand
on a 3x3 torus:

     0 1 2
     3 4 5
     6 7 8
"""

from __future__ import annotations

import pytest

from evoarena.evolve import torus


@pytest.mark.parametrize("cell, expected", [
    (0, [0, 6, 1, 3, 2]),  # itself, north wraps to row 2, east, south, west wraps to col 2
    (4, [4, 1, 5, 7, 3]),  # the centre: no wrapping
    (8, [8, 5, 6, 2, 7]),  # bottom right: east wraps to col 0, south wraps to row 0
    (2, [2, 8, 0, 5, 1]),
])
def test_a_neighbourhood_on_a_3x3_torus_is_the_cell_and_its_four_wrapped_neighbours(cell, expected):
    assert torus.neighbourhood(cell, 3, 3) == expected


def test_a_2x2_torus_neighbourhood_lists_each_cell_once():
    # north and south of cell 0 are both cell 2, east and west both cell 1
    assert torus.neighbourhood(0, 2, 2) == [0, 2, 1]


def test_the_squarest_grid_is_chosen_unless_one_is_given():
    assert torus.shape(9) == (3, 3) and torus.shape(4) == (2, 2) and torus.shape(6) == (2, 3) and torus.shape(5) == (1, 5)
    assert torus.shape(6, [3, 2]) == (3, 2)
    with pytest.raises(ValueError, match="2 x 2 has 4 cells, not 6"):
        torus.shape(6, [2, 2])


def test_training_partners_cycle_self_north_east_south_west_and_form_a_permutation():
    assert [torus.partner(4, r, 3, 3) for r in range(6)] == [4, 1, 5, 7, 3, 4]
    for r in range(5):
        assert sorted(torus.partner(c, r, 3, 3) for c in range(9)) == list(range(9))


def test_a_discriminator_judges_only_generators_of_its_neighbourhood():
    mask = torus.judged([0, 4], [0, 1, 4, 8], 3, 3)
    # generator of cell 0: its neighbourhood is {0, 6, 1, 3, 2}; of cell 4: {4, 1, 5, 7, 3}
    assert mask == [[True, True, False, False], [False, True, True, False]]


def test_a_cell_takes_its_neighbourhoods_fittest_only_when_strictly_fitter():
    score = {c: 0.0 for c in range(9)}
    score[4] = 1.0  # the centre is fittest: its four neighbours take it
    score[0] = 0.5  # cell 0 beats its own neighbours (6, 1, 3, 2) but not the centre, which is not one of them
    assert torus.replacements(score, 3, 3) == {1: 4, 3: 4, 5: 4, 7: 4, 2: 0, 6: 0}


def test_ties_keep_the_cell_own_member_and_a_missing_score_never_spreads():
    assert torus.replacements({c: 1.0 for c in range(9)}, 3, 3) == {}
    score = {c: 0.0 for c in range(9) if c != 4}  # cell 4 has no score: it takes the first of its fittest neighbours
    assert torus.replacements(score, 3, 3) == {4: 1}
