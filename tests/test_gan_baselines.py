"""The arena's baselines (problems/gan_baselines.py) on tiny networks and a small ring: the same
seed gives the same bits, best-of-n keeps its best-scoring restart, and the steps are split n ways."""

from __future__ import annotations

import pytest
import torch

from evoarena.problems import gan, gan_baselines
from evoarena.problems.gan_baselines import best_of_restarts, restart_seed, single_gan

PROBLEM = {"kind": "gan", "latent": 4,
           "data": {"kind": "ring", "modes": 8, "radius": 2.0, "std": 0.02, "train": 512, "heldout": 64, "seed": 0}}
G_ARCH = {"input": [4], "layers": [{"type": "linear", "out": 8}, {"type": "relu"}, {"type": "linear", "out": 2}]}
D_ARCH = {"input": [2], "layers": [{"type": "linear", "out": 8}, {"type": "lrelu"}, {"type": "linear", "out": 1}]}
META = {"optimizer": "adam", "lr": 1e-3, "loss": "ns"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mean_x(arch: dict, flat: torch.Tensor) -> float:
    """A score that differs between restarts: the mean first coordinate of 256 fixed samples."""
    return gan.generate(arch, flat, 256, torch.Generator().manual_seed(7))[:, 0].mean().item()


def test_single_gan_same_seed_gives_the_same_bits():
    _, first = single_gan(PROBLEM, G_ARCH, D_ARCH, META, steps=30, batch_size=16, seed=3, chunk=10)
    _, again = single_gan(PROBLEM, G_ARCH, D_ARCH, META, steps=30, batch_size=16, seed=3, chunk=10)
    _, other = single_gan(PROBLEM, G_ARCH, D_ARCH, META, steps=30, batch_size=16, seed=4, chunk=10)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_single_gan_trains_in_chunks_with_fresh_optimizers(monkeypatch):
    calls = []
    real_train_pair = gan.train_pair

    def counting(*args):
        calls.append(args[7])  # steps
        return real_train_pair(*args)

    monkeypatch.setattr(gan, "train_pair", counting)
    single_gan(PROBLEM, G_ARCH, D_ARCH, META, steps=25, batch_size=8, seed=0, chunk=10)
    assert calls == [10, 10, 5]


def test_best_of_restarts_keeps_the_argmax_of_the_restarts_scores():
    arch, flat, scores = best_of_restarts(PROBLEM, G_ARCH, D_ARCH, META, steps=40, batch_size=16, seed=5, n=4,
                                          score=mean_x, chunk=10)
    # each restart on its own: single_gan with the restart's seed and a quarter of the steps
    alone = [single_gan(PROBLEM, G_ARCH, D_ARCH, META, 10, 16, restart_seed(5, i), chunk=10)[1] for i in range(4)]
    assert scores == [mean_x(G_ARCH, f) for f in alone]
    assert len(set(scores)) == 4  # the check means something only if the restarts differ
    best = max(range(4), key=lambda i: scores[i])
    assert arch == G_ARCH and torch.equal(flat, alone[best])


def test_best_of_restarts_gives_each_restart_steps_over_n(monkeypatch):
    steps_of_restart = []
    real_single = gan_baselines.single_gan

    def counting(problem, g_arch, d_arch, meta, steps, *rest):
        steps_of_restart.append(steps)
        return real_single(problem, g_arch, d_arch, meta, steps, *rest)

    monkeypatch.setattr(gan_baselines, "single_gan", counting)
    best_of_restarts(PROBLEM, G_ARCH, D_ARCH, META, steps=43, batch_size=8, seed=0, n=4, score=mean_x, chunk=10)
    assert steps_of_restart == [10, 10, 10, 10]


def test_best_of_restarts_refuses_fewer_steps_than_restarts():
    with pytest.raises(ValueError, match="steps = 3 cannot be split over n = 4"):
        best_of_restarts(PROBLEM, G_ARCH, D_ARCH, META, steps=3, batch_size=8, seed=0, n=4, score=mean_x)
