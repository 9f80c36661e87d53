"""k-NN precision and recall against the training data (problems/manifold.py), on points along a line
whose neighbourhoods are worked out by hand (K = 3)."""

from __future__ import annotations

import pytest
import torch

from evoarena.problems import manifold

LINE = torch.tensor([[float(x), 0.0] for x in range(10)], dtype=torch.float64)  # 0, 1, ..., 9 on the x axis


def test_each_radius_is_the_distance_to_the_third_nearest_other_point():
    assert manifold.K == 3
    # point 0: others at 1, 2, 3 -> 3; point 1: at 1, 1, 2 -> 2; the inner points: 1, 1, 2 -> 2
    assert manifold.radii(LINE).tolist() == [3, 2, 2, 2, 2, 2, 2, 2, 2, 3]


def test_precision_is_the_share_of_samples_inside_some_real_ball():
    real = (LINE, manifold.radii(LINE))
    fakes = torch.tensor([[5.0, 1.5],   # 1.5 from point 5, whose ball has radius 2: inside
                          [5.0, 2.5],   # 2.5 from point 5, 2.69 from 4 and 6: outside
                          [20.0, 0.0],   # 11 from point 9 (radius 3): outside
                          [30.0, 0.0], [31.0, 0.0]])  # far outside too (recall needs four samples)
    assert manifold.precision_recall(fakes, real)["precision"] == pytest.approx(1 / 5)


def test_recall_is_the_share_of_real_points_inside_the_samples_manifold():
    real = (LINE, manifold.radii(LINE))
    fakes = LINE[:5]  # 0..4: radii 3, 2, 2, 2, 3; real 5, 6, 7 lie within 3 of point 4, 8 and 9 do not
    result = manifold.precision_recall(fakes, real)
    assert result == {"precision": 1.0, "recall": pytest.approx(0.8)}


def test_too_few_points_for_a_third_neighbour_are_refused():
    with pytest.raises(ValueError, match="3 points cannot give each a 3-th nearest neighbour"):
        manifold.radii(LINE[:3])
