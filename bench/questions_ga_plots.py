"""The plots of bench/questions_ga.py (seed 003's questions): what it measured, drawn.

ga-overwrite.png (Q1): per setting, points forgotten and learned by a random child against its
parent; child-minus-parent fitness percentiles; the best individual's correct set and what its
line forgot and learned. ga-robustness.png (Q2): the damage of a fresh mutation of the best over
generations and against the best's training cross-entropy, with the no-selection control.
Each measure is the median over the seeds with a min-max band (or one line per seed).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from questions_ga import Damage, Run


def _band(ax, xs, per_seed: list[list[float]], label: str, color: str) -> None:
    arr = np.array(per_seed, dtype=float)
    ax.plot(xs, np.nanmedian(arr, 0), color=color, label=label)
    ax.fill_between(xs, np.nanmin(arr, 0), np.nanmax(arr, 0), color=color, alpha=0.2)


def _smooth(xs: list[float], window: int) -> list[float]:
    out = []
    for i in range(len(xs)):
        part = [x for x in xs[max(0, i - window + 1) : i + 1] if not math.isnan(x)]
        out.append(statistics.fmean(part) if part else math.nan)
    return out


def plot_overwrite(runs: dict[str, list[Run]], path: Path, window: int = 10) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, len(runs), figsize=(4.2 * len(runs), 9), squeeze=False, sharex=True)
    for col, (s, rs) in enumerate(runs.items()):
        gens = list(range(1, rs[0].generations))
        ax = axes[0][col]
        for key, color in (("forgotten", "tab:red"), ("learned", "tab:green")):
            _band(ax, gens, [_smooth([p[key] for p in r.pairs], window) for r in rs], f"points {key}", color)
        ax.set_title(f"{s}: random child vs its parent", fontsize=9)
        ax.set_ylabel(f"points of 64 ({window}-gen mean)", fontsize=8)
        ax = axes[1][col]
        for key, color in (("delta_q90", "tab:green"), ("delta_median", "tab:blue"), ("delta_q10", "tab:red")):
            _band(ax, gens, [_smooth([p[key] for p in r.pairs], window) for r in rs], key.replace("delta_", ""), color)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title("child - parent fitness (percentiles over children)", fontsize=9)
        ax = axes[2][col]
        for key, color in ((0, "tab:red"), (1, "tab:green")):
            per_seed = []
            for r in rs:
                cum, total = [], 0
                changes = dict(r.elite_churn)
                for g in gens:
                    total += (changes[g].forgotten, changes[g].learned)[key] if g in changes else 0
                    cum.append(total)
                per_seed.append(cum)
            _band(ax, gens, per_seed, f"best's line: points {('forgotten', 'learned')[key]} (cumulative)", color)
        _band(ax, gens, [[64 * a for a in r.best_accuracy[1:]] for r in rs], "best: points correct", "tab:blue")
        ax.set_xlabel("generation")
        ax.set_title("the best individual's correct set", fontsize=9)
        for a in axes[:, col]:
            a.legend(fontsize=7)
    fig.suptitle("Q1: do mutations overwrite what was learned? (median over seeds, band: min-max)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_robustness(runs: dict[str, list[Run]], control: list[dict[int, Damage]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(runs, ("tab:blue", "tab:orange", "tab:green", "tab:purple")))
    fig, (left, right, walk) = plt.subplots(1, 3, figsize=(15, 4))
    for s, rs in runs.items():
        gens = sorted(rs[0].damage)
        _band(left, gens, [[r.damage[g].mean_rise for g in gens] for r in rs], s, colors[s])
        for i, r in enumerate(rs):
            right.plot([r.damage[g].loss for g in gens], [r.damage[g].mean_rise for g in gens], "o-", ms=3,
                       color=colors[s], alpha=0.7, label=s if i == 0 else None)
        matched = [r.matched[1] for r in rs if r.matched]
        right.plot([d.loss for d in matched], [d.mean_rise for d in matched], "*", ms=11, color=colors[s],
                   markeredgecolor="k", label=f"{s} at matched fitness")
    left.set_xlabel("generation")
    left.set_ylabel("CE rise of a fresh mutation of the best (mean)")
    left.set_title("robustness over generations (median over seeds, band: min-max)", fontsize=9)
    right.set_xlabel("the best's training cross-entropy (lower = fitter)")
    right.invert_xaxis()
    right.set_title("the same against fitness, each seed a line; stars: matched fitness", fontsize=9)
    # its own panel: with nothing selected the cross-entropy runs far beyond the selected runs' range
    if control:
        gens = sorted(control[0])
        _band(walk, gens, [[c[g].mean_rise for g in gens] for c in control], "CE rise of a fresh mutation", "tab:gray")
        twin = walk.twinx()
        _band(twin, gens, [[c[g].loss for g in gens] for c in control], "its training CE (right axis)", "tab:red")
        twin.legend(fontsize=7, loc="center left")
    walk.set_xlabel("random mutations (generations)")
    walk.set_title("no selection: the generation-0 best, mutated at random", fontsize=9)
    for ax in (left, right, walk):
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Q2: do several parents let robustness to mutation evolve?", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
