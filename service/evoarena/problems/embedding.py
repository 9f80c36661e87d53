"""How close a generator, or a mixture of generators, is to the TRAINING data, with a kernel that
needs nothing but that data: the arena may select and weight generators by it without ever seeing
the mode labels, the held-out data or the evaluation metrics (gan_metrics).

The kernel is a Gaussian-kernel mixture approximated by random Fourier features (Rahimi and Recht
2007): a sample x (flattened to d numbers) becomes

    phi(x) = sqrt(2 / F) * cos(W x + b),    W[f] ~ N(0, I / h_f^2),  b[f] ~ U(0, 2 pi)

with F = FEATURES features split evenly over the bandwidths h = BANDWIDTHS * m, m the median
distance between two training samples (the median heuristic, on the first MEDIAN_SAMPLES training
samples against themselves). Several bandwidths: the smallest sees whether samples sit on the
data (sample quality), the largest whether mass is spread as the data's is (coverage).

A set of samples is summarised by its mean embedding mu = mean phi(x) (F floats: what a match
task returns per generator, JSON-sized, never samples). For k(x, y) = phi(x) . phi(y), the squared
maximum mean discrepancy between samples P and the training data Q is exactly

    MMD^2(P, Q) = || mu_P - mu_Q ||^2

and that of a mixture of generators with weights w (w >= 0, sum 1) is || sum_i w_i mu_i - mu_Q ||^2:
the master scores any mixture from the per-generator embeddings without drawing a sample. The
features are a pure function of (the training data, FEATURE_SEED): every worker draws the same W
and b, so embeddings from different workers can be compared and summed.
"""

from __future__ import annotations

import numpy as np
import torch

FEATURES = 384
BANDWIDTHS = (0.05, 0.2, 1.0)  # times the median distance between training samples
MEDIAN_SAMPLES = 1000
FEATURE_SEED = 20170601
CHUNK = 8192

_cache: dict[str, tuple[torch.Tensor, torch.Tensor, list[float]]] = {}  # data spec JSON -> (W, b, mu_Q)


def features(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [F, d], b [F]) for training data `train` [N, ...], float64 on the CPU."""
    x = train[:MEDIAN_SAMPLES].reshape(min(len(train), MEDIAN_SAMPLES), -1).double()
    distances = torch.cdist(x, x)
    median = float(distances[torch.triu(torch.ones_like(distances, dtype=torch.bool), diagonal=1)].median())
    if not median > 0:
        raise ValueError("the training data's first samples are all equal: no bandwidth can be chosen")
    rng = torch.Generator().manual_seed(FEATURE_SEED)
    per = FEATURES // len(BANDWIDTHS)
    w = torch.cat([torch.randn(per, x.shape[1], generator=rng, dtype=torch.float64) / (scale * median)
                   for scale in BANDWIDTHS])
    b = torch.rand(len(w), generator=rng, dtype=torch.float64) * 2 * torch.pi
    return w, b


def mean_embedding(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mu = mean of phi over the samples x [N, ...] (float64 [F])."""
    flat = x.detach().cpu().reshape(len(x), -1).double()
    total = torch.zeros(len(w), dtype=torch.float64)
    for part in flat.split(CHUNK):
        total += torch.cos(part @ w.T + b).sum(dim=0)
    return total * (2.0 / len(w)) ** 0.5 / len(flat)


def real_embedding(train: torch.Tensor, key: str) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """(W, b, mu of the whole training set), computed once per process for each training set;
    `key` names the set (its data spec as JSON)."""
    if key not in _cache:
        w, b = features(train)
        _cache[key] = (w, b, mean_embedding(train, w, b).tolist())
    return _cache[key]


def mmd2(mu: list[float] | np.ndarray, real: list[float] | np.ndarray) -> float:
    """|| mu - real ||^2: the squared MMD of the samples behind `mu` to the training data."""
    d = np.asarray(mu, dtype=float) - np.asarray(real, dtype=float)
    return float(d @ d)


def mixture_mmd2(weights: np.ndarray, mus: np.ndarray, real: np.ndarray) -> float:
    """|| sum_i w_i mu_i - real ||^2 for mixture weights w [G] over embeddings mus [G, F]."""
    d = np.asarray(weights, dtype=float) @ np.asarray(mus, dtype=float) - np.asarray(real, dtype=float)
    return float(d @ d)


def evolve_weights(mus: list[list[float]], real: list[float], rng: np.random.Generator, iterations: int = 400,
                   sigma: float = 0.05) -> tuple[list[float], float]:
    """Mixture weights by a (1+1)-ES (Lipizzaner's): start uniform; each iteration adds N(0, sigma^2)
    to every weight, clips at 0 and renormalises to sum 1, and keeps the candidate when its mixture
    MMD^2 to the training data is not worse. Returns (weights, their MMD^2)."""
    mus_a, real_a = np.asarray(mus, dtype=float), np.asarray(real, dtype=float)
    if mus_a.ndim != 2 or len(mus_a) == 0:
        raise ValueError(f"mus must be a non-empty list of embeddings; got shape {mus_a.shape}")
    weights = np.full(len(mus_a), 1.0 / len(mus_a))
    best = mixture_mmd2(weights, mus_a, real_a)
    for _ in range(iterations):
        candidate = np.clip(weights + rng.normal(0.0, sigma, len(weights)), 0.0, None)
        if candidate.sum() <= 0:
            continue
        candidate /= candidate.sum()
        score = mixture_mmd2(candidate, mus_a, real_a)
        if score <= best:
            weights, best = candidate, score
    return [float(w) for w in weights], best
