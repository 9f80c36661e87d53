"""The training data's kernel embedding (problems/embedding.py): random Fourier features checked by
hand, MMDs of sets we know, and the (1+1)-ES that weights a mixture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evoarena.problems import embedding


def test_the_embedding_is_the_mean_of_sqrt_2_over_f_cos_wx_plus_b():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([0.0, math.pi / 2], dtype=torch.float64)
    x = torch.tensor([[0.0, 0.0], [math.pi, 0.25]])
    # phi(x) = sqrt(2/2) * (cos(x0), cos(2 x1 + pi/2)); mean over the two samples
    expected = [(math.cos(0) + math.cos(math.pi)) / 2, (math.cos(math.pi / 2) + math.cos(0.5 + math.pi / 2)) / 2]
    assert embedding.mean_embedding(x, w, b).tolist() == pytest.approx(expected, abs=1e-6)


def test_bandwidths_scale_with_the_median_distance_of_the_training_data():
    torch.manual_seed(0)
    small = torch.randn(2000, 2)
    w_small, _ = embedding.features(small)
    w_large, _ = embedding.features(small * 10)
    # the same draws divided by ten times the bandwidth
    assert torch.allclose(w_large * 10, w_small, rtol=1e-4)
    per = embedding.FEATURES // len(embedding.BANDWIDTHS)
    assert len(w_small) == per * len(embedding.BANDWIDTHS)


def test_samples_of_the_data_are_closer_than_samples_off_the_data():
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    train = centres[torch.randint(2, (4000,), generator=g)] + 0.05 * torch.randn(4000, 2, generator=g)
    w, b, real = embedding.real_embedding(train, "test-two-modes")
    same = centres[torch.randint(2, (2000,), generator=g)] + 0.05 * torch.randn(2000, 2, generator=g)
    one_mode = centres[0] + 0.05 * torch.randn(2000, 2, generator=g)
    between = 0.05 * torch.randn(2000, 2, generator=g)
    d_same, d_one, d_between = (embedding.mmd2(embedding.mean_embedding(x, w, b), real) for x in (same, one_mode, between))
    assert d_same < 0.05 * d_one and d_one < d_between


def test_the_es_puts_the_weight_on_the_members_that_rebuild_the_data():
    rng = np.random.default_rng(0)
    mus = np.eye(3)  # three orthogonal embeddings
    real = np.array([0.5, 0.5, 0.0])  # the data is half member 0, half member 1, nothing of member 2
    weights, mmd2 = embedding.evolve_weights(mus.tolist(), real.tolist(), rng, iterations=2000)
    assert weights[2] < 0.02 and weights[0] == pytest.approx(0.5, abs=0.03) and weights[1] == pytest.approx(0.5, abs=0.03)
    assert mmd2 <= embedding.mixture_mmd2(np.full(3, 1 / 3), mus, real)  # never worse than where it started
    assert sum(weights) == pytest.approx(1.0)


def test_the_es_is_a_function_of_its_seed():
    mus, real = np.random.default_rng(5).random((4, 6)).tolist(), [0.3] * 6
    first = embedding.evolve_weights(mus, real, np.random.default_rng(7))
    assert embedding.evolve_weights(mus, real, np.random.default_rng(7)) == first
