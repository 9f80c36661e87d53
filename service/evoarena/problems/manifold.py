"""Improved precision and recall (Kynkäänniemi et al. 2019) of a generator's samples against the
TRAINING data: a quality and a coverage signal the arena may select by, since it needs no mode
label, no held-out data and no evaluation metric (gan_metrics), only training samples.

Each set is a k-nearest-neighbour manifold: the union of balls around its points, each ball's
radius the distance from the point to its K-th nearest neighbour in the same set.

    precision  the share of generated samples inside the real manifold (inside some real point's
               ball): how much of what the generator draws looks like data
    recall     the share of real points inside the generated manifold: how much of the data the
               generator reaches

The real manifold is built from REAL_POINTS training samples (the first ones: the training set is
already in random order), once per process for each data set; distances are Euclidean on the
flattened samples, in float64, in blocks of BLOCK rows.
"""

from __future__ import annotations

import torch

K = 3
REAL_POINTS = 5000
BLOCK = 1024

_real: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # data spec JSON -> (points, radii)


def radii(points: torch.Tensor, k: int = K) -> torch.Tensor:
    """Each point's distance to its k-th nearest other point of the set."""
    if len(points) <= k:
        raise ValueError(f"{len(points)} points cannot give each a {k}-th nearest neighbour")
    out = [torch.cdist(block, points).kthvalue(k + 1, dim=1).values for block in points.split(BLOCK)]
    return torch.cat(out)  # k + 1: a point's nearest is itself, at distance 0


def inside(x: torch.Tensor, centres: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """For each row of x, whether it lies within r[j] of some centres[j]."""
    return torch.cat([(torch.cdist(block, centres) <= r).any(dim=1) for block in x.split(BLOCK)])


def real_manifold(train: torch.Tensor, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(points, radii) of the training data's manifold; `key` names the data (its spec as JSON)."""
    if key not in _real:
        points = train[:REAL_POINTS].reshape(min(len(train), REAL_POINTS), -1).double()
        _real[key] = (points, radii(points))
    return _real[key]


def precision_recall(samples: torch.Tensor, real: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """{"precision", "recall"} of `samples` against the real manifold `real` (real_manifold)."""
    points, real_radii = real
    fake = samples.detach().cpu().reshape(len(samples), -1).double()
    return {"precision": float(inside(fake, points, real_radii).double().mean()),
            "recall": float(inside(points, fake, radii(fake)).double().mean())}
