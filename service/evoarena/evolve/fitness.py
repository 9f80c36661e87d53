"""The arena's fitness kinds: what a match's encounter matrix is worth to each player.

Inputs, for G generators and D discriminators:

    matrix[i][j]    fraction of generator i's samples that discriminator j took for real, in [0, 1]
    real_accept[j]  fraction of held-out real data that discriminator j accepted, in [0, 1]
    judged[i][j]    True when encounter (i, j) counts (see `judged_mask`); entries of `matrix`
                    outside the mask are ignored and may be NaN (an encounter never played)

Each kind returns (generator fitness, discriminator fitness) as two lists of floats:

    seed001        generators: share of the judging discriminators fooled (seeds 000/001)
                   discriminators: rac_weight * real accepted + (1 - rac_weight) * fakes caught
    host_pathogen  discriminators are hosts, generators pathogens (Kucharavy et al.,
                   arXiv 2006.04720): a host's fitness falls as its Weibull "load" of errors
                   grows; a pathogen's rises with the fakes it gets through
    elo            Elo ratings, every judged encounter one game scored matrix[i][j] for the
                   generator; fitness = rating

No encounter, no fitness: a generator no discriminator judges, or a discriminator that judges
no generator, gets NaN under seed001 and host_pathogen (there is nothing to average), and keeps
its previous rating under elo (it played no game). NaN sorts as neither fit nor unfit; the
caller decides what to do with such a player.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from evoarena.evolve import ELO_START

KINDS = ("seed001", "host_pathogen", "elo")
TARGETS = ("cluster", "single")


# ---------------------------------------------------------------------------------------------
# checking the inputs (bookkeeping)
# ---------------------------------------------------------------------------------------------


def _encounters(matrix, judged) -> tuple[np.ndarray, np.ndarray]:
    """`matrix` and `judged` as (G, D) arrays, with every judged value a number in [0, 1]."""
    values = np.asarray(matrix, dtype=float)
    mask = np.asarray(judged, dtype=bool)
    if values.ndim != 2:
        raise ValueError(f"matrix must be G x D (generators x discriminators), got shape {values.shape}")
    if mask.shape != values.shape:
        raise ValueError(f"judged has shape {mask.shape} but matrix has shape {values.shape}; they must match")
    bad = mask & ~((values >= 0.0) & (values <= 1.0))  # also catches NaN
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        raise ValueError(f"matrix[{i}][{j}] = {values[i, j]} is judged but not a fraction in [0, 1]")
    return values, mask


def _real_accept(real_accept, n_disc: int) -> np.ndarray:
    accept = np.asarray(real_accept, dtype=float)
    if accept.shape != (n_disc,):
        raise ValueError(
            f"real_accept has shape {accept.shape} but matrix has {n_disc} discriminators; expected shape ({n_disc},)"
        )
    if not ((accept >= 0.0) & (accept <= 1.0)).all():
        raise ValueError(f"real_accept must hold fractions in [0, 1], got {accept.tolist()}")
    return accept


def _masked_mean(values: np.ndarray, mask: np.ndarray, axis: int) -> np.ndarray:
    """Mean of the judged values along `axis`; NaN where nothing is judged."""
    counts = mask.sum(axis=axis)
    totals = np.where(mask, values, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def _masked_max(values: np.ndarray, mask: np.ndarray, axis: int) -> np.ndarray:
    """Max of the judged values along `axis`; NaN where nothing is judged."""
    best = np.where(mask, values, -np.inf).max(axis=axis)
    return np.where(mask.any(axis=axis), best, np.nan)


def _floats(array: np.ndarray) -> list[float]:
    return [float(x) for x in array]


def _weibull_cdf(x: np.ndarray) -> np.ndarray:
    """Weibull CDF with shape 2 and scale 1: 1 - exp(-x^2)."""
    return 1.0 - np.exp(-np.square(x))


# ---------------------------------------------------------------------------------------------
# the fitness kinds
# ---------------------------------------------------------------------------------------------


def seed001(
    matrix, real_accept, judged, rac_weight: float = 0.5, target: str = "cluster"
) -> tuple[list[float], list[float]]:
    """Seed 001's fitness: generators fool foreign discriminators, discriminators catch them.

    Generator i: how far it fools the discriminators that judge it, from 0 (every one catches
    all its samples) to 1 (none catches any). Per encounter "fooled" is matrix[i][j];
    target="cluster" averages over the judges, target="single" takes the best encounter
    (seed 000: "induce into error a single discriminator rather than a cluster").

    Discriminator j: rac_weight * real_accept[j] + (1 - rac_weight) * (1 - mean of matrix[i][j]
    over the generators it judges) -- the seeds' "RAC weighting" of blocking real data against
    letting fakes through. NaN for a player with no judged encounter.
    """
    values, mask = _encounters(matrix, judged)
    accept = _real_accept(real_accept, values.shape[1])
    if not 0.0 <= rac_weight <= 1.0:
        raise ValueError(f"rac_weight must be in [0, 1], got {rac_weight}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")

    fooled = _masked_mean(values, mask, axis=1) if target == "cluster" else _masked_max(values, mask, axis=1)
    caught = 1.0 - _masked_mean(values, mask, axis=0)
    disc = rac_weight * accept + (1.0 - rac_weight) * caught
    return _floats(fooled), _floats(disc)


def host_pathogen(
    matrix,
    real_accept,
    judged,
    autoimmunity: float = 20.0,
    virulence: float = 20.0,
    host_floor: float = 0.01,
    pathogen_floor: float = 0.05,
) -> tuple[list[float], list[float]]:
    """The seed project's host-pathogen fitness (Kucharavy et al., arXiv 2006.04720).

    Host (discriminator) j, with a = autoimmunity and v = virulence:
        real_error = 1 - real_accept[j]                 (real data it blocked: autoimmunity)
        fake_error = mean of matrix[i][j] over the generators it judges   (fakes let through)
        load       = sqrt((a * real_error)^2 + (v * fake_error)^2)
        fitness    = max(host_floor, 1 - WeibullCDF(load)) = max(host_floor, exp(-load^2))
    Pathogen (generator) i:
        fake_error = mean of matrix[i][j] over the discriminators judging it
        fitness    = max(pathogen_floor, v * WeibullCDF(v * fake_error))
    WeibullCDF(x) = 1 - exp(-x^2) (shape 2, scale 1). The pathogen formula is the seed issue's
    definition, written as given: it is scaled by v, so it reaches up to v, not 1.
    NaN for a player with no judged encounter.
    """
    values, mask = _encounters(matrix, judged)
    accept = _real_accept(real_accept, values.shape[1])
    for name, value in (("autoimmunity", autoimmunity), ("virulence", virulence)):
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")

    real_error = 1.0 - accept
    let_through = _masked_mean(values, mask, axis=0)
    load = np.sqrt((autoimmunity * real_error) ** 2 + (virulence * let_through) ** 2)
    host = np.maximum(host_floor, 1.0 - _weibull_cdf(load))  # maximum keeps NaN (no encounter)

    got_through = _masked_mean(values, mask, axis=1)
    pathogen = np.maximum(pathogen_floor, virulence * _weibull_cdf(virulence * got_through))
    return _floats(pathogen), _floats(host)


def elo(
    matrix,
    judged,
    ratings_gen: Sequence[float] | None = None,
    ratings_disc: Sequence[float] | None = None,
    k: float = 32.0,
    start: float = ELO_START,
) -> tuple[list[float], list[float]]:
    """Elo ratings after one match; fitness = rating.

    Every judged (i, j) is one game; the generator scores matrix[i][j] (1: it fooled the
    discriminator entirely, 0: it was always caught) and the discriminator 1 - matrix[i][j].
    expected = 1 / (1 + 10 ** ((R_disc - R_gen) / 400)) for the generator; the generator moves by
    K * (score - expected) and the discriminator by the opposite amount.

    The update is simultaneous: every game's delta is computed from the ratings before the
    match and all deltas are summed and applied at once, so the result does not depend on the
    order of the games. A player with no judged game keeps its rating. None ratings start at
    `start`.
    """
    values, mask = _encounters(matrix, judged)
    n_gen, n_disc = values.shape
    gen = _ratings("ratings_gen", ratings_gen, n_gen, start)
    disc = _ratings("ratings_disc", ratings_disc, n_disc, start)

    expected = 1.0 / (1.0 + 10.0 ** ((disc[None, :] - gen[:, None]) / 400.0))
    delta = np.where(mask, k * (np.nan_to_num(values) - expected), 0.0)  # generator's gain per game
    return _floats(gen + delta.sum(axis=1)), _floats(disc - delta.sum(axis=0))


def _ratings(name: str, ratings: Sequence[float] | None, n: int, start: float) -> np.ndarray:
    if ratings is None:
        return np.full(n, float(start))
    array = np.asarray(ratings, dtype=float)
    if array.shape != (n,):
        raise ValueError(f"{name} has shape {array.shape} but the matrix needs shape ({n},)")
    return array


# ---------------------------------------------------------------------------------------------
# dispatch and the judged mask
# ---------------------------------------------------------------------------------------------


# the keyword arguments each kind accepts in `score`'s params
_PARAMS = {
    "seed001": ("rac_weight", "target"),
    "host_pathogen": ("autoimmunity", "virulence", "host_floor", "pathogen_floor"),
    "elo": ("k", "start"),
}


def score(
    kind: str,
    matrix,
    real_accept,
    judged,
    params: dict,
    previous: tuple[Sequence[float], Sequence[float]] | None = None,
) -> tuple[list[float], list[float]]:
    """(generator fitness, discriminator fitness) by the fitness kind named `kind`.

    `params` are the keyword arguments of that kind (e.g. {"rac_weight": 0.7} for seed001).
    `previous` is the (generator, discriminator) ratings of the last match: used by "elo" only,
    where None starts everyone at `start`; the other kinds have no memory and ignore it.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown fitness kind {kind!r}; expected one of {KINDS}")
    allowed = _PARAMS[kind]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"fitness kind {kind!r} takes no parameter {unknown}; it accepts {allowed}")
    if kind == "seed001":
        return seed001(matrix, real_accept, judged, **params)
    if kind == "host_pathogen":
        return host_pathogen(matrix, real_accept, judged, **params)
    ratings_gen, ratings_disc = previous if previous is not None else (None, None)
    return elo(matrix, judged, ratings_gen, ratings_disc, **params)


def judged_mask(
    gen_players: Sequence[int],
    disc_players: Sequence[int],
    speciation: bool,
    partners: Sequence[int | None] | None = None,
) -> list[list[bool]]:
    """Which encounters count: mask[i][j] is True when discriminator j judges generator i.

    gen_players[i] / disc_players[j] are the players owning generator i / discriminator j.
    speciation=True: j judges i iff their players differ (discriminators judge only other
    players' generators). speciation=False: every pair counts except a generator and its own
    train-pair partner, partners[i] being the index of generator i's partner discriminator (or
    None). The partner exclusion applies in both modes; under speciation a partner is of the
    same player and already excluded.
    """
    n_gen, n_disc = len(gen_players), len(disc_players)
    if partners is not None and len(partners) != n_gen:
        raise ValueError(f"partners has {len(partners)} entries but there are {n_gen} generators")
    partner_of = list(partners) if partners is not None else [None] * n_gen
    for i, j in enumerate(partner_of):
        if j is not None and not 0 <= j < n_disc:
            raise ValueError(f"partners[{i}] = {j} is not a discriminator index in [0, {n_disc})")

    return [
        [(not speciation or gen_players[i] != disc_players[j]) and partner_of[i] != j for j in range(n_disc)]
        for i in range(n_gen)
    ]
