"""The figures of `evoarena report`: each takes the data report/build.py computed from the store and
returns a matplotlib Figure (no pyplot, so nothing global; the Agg backend draws it).

matplotlib and numpy are imported inside the functions, so the command line starts fast.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from evoarena.report.build import Band

BAND = (10, 90)  # the percentiles of the fitness band


def evenly_spaced(rounds: list[int], limit: int) -> list[int]:
    """At most `limit` of `rounds` (sorted), evenly spaced, the first and the last always among them."""
    import numpy as np

    rounds = sorted(rounds)
    if len(rounds) <= limit:
        return rounds
    picks = np.linspace(0, len(rounds) - 1, limit).round().astype(int)
    return [rounds[i] for i in sorted(set(picks))]


def plot_fitness(band: Band, xlabel: str, title: str):
    fig, ax = _figure()
    ax.fill_between(band.x, band.low, band.high, alpha=0.25, color="C0", label=f"{BAND[0]}th-{BAND[1]}th percentile")
    ax.plot(band.x, band.mean, color="C0", marker=".", label="mean")
    ax.plot(band.x, band.best, color="C3", marker=".", label="best")
    ax.set(xlabel=xlabel, ylabel="fitness", title=title)
    ax.legend()
    return fig


def plot_loss_and_accuracy(metrics: dict[str, list[float]], adam: list[dict] | None = None,
                           ga_work: str = "", adam_work: str = "", by: str = "GA generation"):
    """The fittest individual's train and validation loss and accuracy per generation (bottom axis,
    `by`: "GA generation", "PSO step"); with `adam` (the baseline's per-epoch history), Adam's on a
    second x axis on top, in epochs: a generation and an epoch are not the same work, and the axis
    labels say what each costs."""
    import math

    from matplotlib.ticker import MaxNLocator

    fig, (loss, acc) = _figure(2, size=(6.4, 4.6))
    for key, style in (("train", "-"), ("val", "--")):
        loss.plot(metrics["x"], metrics[f"{key}_loss"], style, color="C0", marker=".", label=f"{by.split()[0]} {key}")
        acc.plot(metrics["x"], metrics[f"{key}_accuracy"], style, color="C0", marker=".", label=f"{by.split()[0]} {key}")
    for ax in (loss, acc):
        ax.set_xlabel(by + (f"\n({ga_work})" if ga_work else ""), fontsize=8)
    loss.set(ylabel="cross-entropy", title="loss")
    acc.set(ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    values = [v for v in metrics["train_loss"] + metrics["val_loss"] if math.isfinite(v)]
    if adam:
        epochs = [r["epoch"] for r in adam]
        for ax, what in ((loss, "loss"), (acc, "accuracy")):
            top = ax.twiny()
            top.xaxis.set_major_locator(MaxNLocator(integer=True))
            for key, style in (("train", "-"), ("val", "--")):
                top.plot(epochs, [r[f"{key}_{what}"] for r in adam], style, color="C1", marker=".", label=f"Adam {key}")
            top.set_xlabel("Adam epoch" + (f" ({adam_work})" if adam_work else ""), fontsize=8, color="C1")
            top.tick_params(axis="x", colors="C1")
            lines, labels = ax.get_legend_handles_labels()
            more, more_labels = top.get_legend_handles_labels()
            ax.legend(lines + more, labels + more_labels, fontsize=8)
        values += [r[f"{k}_loss"] for r in adam for k in ("train", "val") if math.isfinite(r[f"{k}_loss"])]
    else:
        loss.legend(fontsize=8), acc.legend(fontsize=8)
    if values and min(values) > 0 and max(values) > 10 * min(values):  # Adam drives the training loss towards 0:
        loss.set_yscale("log")  # a log scale shows both curves
    return fig


def plot_encounter_matrix(trace: dict, players: dict[str, int], title: str):
    """Share of each generator's samples each discriminator took for real; unjudged encounters grey,
    a lying (Byzantine) discriminator marked with *."""
    import matplotlib
    import numpy as np

    values = np.asarray(trace["matrix"], float)
    masked = np.ma.masked_where(~np.asarray(trace["judged"], bool), values)
    fig, ax = _figure(size=(1.2 + 0.55 * values.shape[1], 1.2 + 0.45 * values.shape[0]), scale=False)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d0d0d0")
    image = ax.imshow(masked, cmap=cmap, vmin=0, vmax=1, aspect="auto")
    liars = set(trace.get("liars") or [])
    ax.set_xticks(range(len(trace["discs"])), [("*" if j in liars else "") + _short(d, players)
                                               for j, d in enumerate(trace["discs"])], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(trace["gens"])), [_short(g, players) for g in trace["gens"]], fontsize=7)
    ax.set(xlabel="discriminator", ylabel="generator", title=title)
    fig.colorbar(image, ax=ax, label="taken for real")
    return fig


def plot_lineage_shares(per_side: dict[str, tuple[list[int], list[str], np.ndarray]], xlabel: str,
                        by: str = "founder"):
    """Stacked bars: each side's share descending from each founder (`by` "founder": labelled by the
    founder's id) or from each founding player (`by` "player": labelled "player N")."""
    import matplotlib
    import numpy as np

    fig, axes = _figure(len(per_side))
    # one colour per founder (or player) in every panel: "player 1" is the same colour for both sides
    everyone = sorted({f for _, founders, _ in per_side.values() for f in founders},
                      key=lambda f: (len(f), f))  # player 2 before player 10
    colour = {f: matplotlib.colormaps["tab20"](i % 20) for i, f in enumerate(everyone)}
    for ax, (side_name, (x, founders, shares)) in zip(np.atleast_1d(axes), per_side.items()):
        bottom = np.zeros(len(x))
        for k, founder in enumerate(founders):  # stacked bars: rounds are discrete, and one round still shows
            label = founder if by == "player" else founder.split("-")[-1][:6]
            ax.bar(x, shares[:, k], bottom=bottom, width=0.8 if len(x) < 50 else 1.0, label=label,
                   color=colour[founder])
            bottom += shares[:, k]
        title = "founding lineages" if by == "founder" else "descent from each founding player"
        ax.set(xlabel=xlabel, ylabel="share of the side", ylim=(0, 1), title=f"{side_name}: {title}")
        if len(founders) <= 12:  # beside the bars, which fill the axes to 1: inside, it would cover them
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title=by, title_fontsize=7)
    return fig


def plot_quality(quality: dict[str, dict[int, list[float]]], modes: int | None, xlabel: str,
                 reference: dict[str, dict[int, float]] | None = None,
                 picked: dict[str, dict[int, float]] | None = None):
    """Per measure and round: the arena's pick (`picked`: its best generator by fitness, what the command
    line names), the best value of any generator (labelled as the best of all, which may be another one)
    and the mean; `reference` (the single-GAN baseline's measure per round) dashed beside them."""
    import numpy as np

    shown = [k for k in ("modes_covered", "modes_covered@20", "high_quality", "frechet", "classes_covered")
             if k in quality]
    columns = min(2, len(shown))  # two panels a row: three or more side by side shrink to an unreadable strip
    fig, axes = _figure(columns, rows=math.ceil(len(shown) / columns))
    axes = list(np.atleast_1d(axes).ravel())
    for spare in axes[len(shown):]:
        fig.delaxes(spare)
    for ax, key in zip(axes, shown):
        x = sorted(quality[key])
        lower_is_better = key == "frechet"
        best = [(min if lower_is_better else max)(quality[key][k]) for k in x]
        if picked and picked.get(key):
            ax.plot(list(picked[key]), list(picked[key].values()), color="C3", marker="o",
                    label="the arena's pick (best fitness)")
        ax.plot(x, best, color="C1", marker=".", linestyle=":", label="best of all generators")
        ax.plot(x, [float(np.mean(quality[key][k])) for k in x], color="C0", marker=".", label="mean")
        if reference and reference.get(key):
            ax.plot(list(reference[key]), list(reference[key].values()), color="black", linestyle="--", marker="x",
                    label="single GAN, same gradient steps")
        if key in ("modes_covered", "modes_covered@20") and modes:
            ax.axhline(modes, color="grey", linestyle=":", label=f"all {modes} modes")
        ax.set(xlabel=xlabel, ylabel=key.replace("_", " "), title=_QUALITY_TITLES[key])
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)  # below: never over a curve
    return fig


def plot_network_sizes(per_side: dict[str, dict[int, tuple[int, float, int]]], xlabel: str):
    fig, ax = _figure()
    for color, (side_name, sizes) in zip(("C0", "C1"), per_side.items()):
        x = list(sizes)
        ax.fill_between(x, [s[0] for s in sizes.values()], [s[2] for s in sizes.values()], alpha=0.2, color=color)
        ax.plot(x, [s[1] for s in sizes.values()], color=color, marker=".", label=f"{side_name} (median, min-max)")
    ax.set(xlabel=xlabel, ylabel="parameters", title="network sizes")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)  # below the axes, not over the bands
    return fig


def plot_throughput(throughput: dict[str, list[float]], xlabel: str):
    fig, (hits, rate) = _figure(2)
    hits.plot(throughput["x"], throughput["hit_rate"], marker=".")
    hits.set(xlabel=xlabel, ylabel="share of builds from a cache", title="parent-cache hit rate", ylim=(-0.02, 1.02))
    rate.plot(throughput["x"], throughput["evals_per_s"], marker=".", color="C2")
    rate.set(xlabel=xlabel, ylabel="tasks per second", title="throughput", ylim=(0, None))
    return fig


def plot_workers_over_time(workers: dict[int, int], xlabel: str):
    """Distinct workers that stored a result of each step."""
    fig, ax = _figure(size=(6.4, 3.2))
    x = list(workers)
    ax.plot(x, list(workers.values()), marker=".", drawstyle="steps-mid", color="C4")
    ax.set(xlabel=xlabel, ylabel="distinct workers", title="workers over time", ylim=(0, max(workers.values()) + 1))
    ax.yaxis.get_major_locator().set_params(integer=True)
    return fig


def plot_tasks_per_worker(counts: dict[str, Counter]):
    import numpy as np

    workers = list(counts)
    fig, ax = _figure(size=(7, 1.4 + 0.35 * len(workers)), scale=False)
    left = np.zeros(len(workers))
    for op in sorted({op for c in counts.values() for op in c}):
        n = np.array([counts[w][op] for w in workers], float)
        ax.barh(workers, n, left=left, label=op)
        left += n
    ax.set(xlabel="tasks stored", title="tasks per worker")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, not over them
    return fig


def plot_trials(trials: list[dict], best: list[float], objective: str):
    """Each trial's objective against trials run (counted from 1), coloured by step, and the best so far."""
    fig, ax = _figure()
    scored = [(i, t) for i, t in enumerate(trials, start=1) if t["objective"] is not None]
    points = ax.scatter([i for i, _ in scored], [t["objective"] for _, t in scored], c=[t["step"] for _, t in scored],
                        cmap="viridis", zorder=3, label="trial")
    ax.step(range(1, len(best) + 1), best, where="post", color="C3", label="best so far")
    _step_colorbar(fig, points, ax)
    ax.set(xlabel="trial", ylabel=objective, title=f"{objective} of each trial")
    ax.legend()
    return fig


def plot_trial_values(trials: list[dict], space: list, objective: str):
    """Per searched value (one panel each, a log axis for a log range): each trial's objective against
    the value it tried, coloured by step; the best trial ringed. `trials` must have one scored."""
    import numpy as np
    from matplotlib.ticker import AutoLocator

    scored = [t for t in trials if t["objective"] is not None]
    fig, axes = _figure(len(space), size=(4.2, 3.6))
    top = max(scored, key=lambda t: t["objective"])
    for ax, p in zip(np.atleast_1d(axes), space):
        ax.xaxis.set_major_locator(AutoLocator())  # values, not counts
        points = ax.scatter([t["values"][p.path] for t in scored], [t["objective"] for t in scored],
                            c=[t["step"] for t in scored], cmap="viridis", zorder=3)
        ax.scatter([top["values"][p.path]], [top["objective"]], s=160, facecolors="none", edgecolors="C3", zorder=4)
        pad = (p.high / p.low) ** 0.03 if p.log else 0.03 * (p.high - p.low)  # the whole range, ends visible
        ax.set(xlabel=p.path, ylabel=objective, xscale="log" if p.log else "linear",
               xlim=(p.low / pad, p.high * pad) if p.log else (p.low - pad, p.high + pad))
    _step_colorbar(fig, points, axes)
    return fig


def _step_colorbar(fig, points, axes) -> None:
    from matplotlib.ticker import MaxNLocator

    fig.colorbar(points, ax=axes, label="step").ax.yaxis.set_major_locator(MaxNLocator(integer=True))


_QUALITY_TITLES = {"modes_covered": "modes covered (>= 1 high-quality sample)",
                   "modes_covered@20": "modes covered@20 (>= 20 high-quality samples)",
                   "high_quality": "high-quality samples",
                   "frechet": "Frechet distance (digits or MNIST classifier features; lower is better)",
                   "classes_covered": "digit classes covered"}


def _figure(columns: int = 1, size: tuple[float, float] | None = None, scale: bool = True, rows: int = 1):
    """A new figure (no pyplot: nothing global) drawn by the Agg backend, `columns` axes side by side
    (in `rows` rows)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    width, height = size or (6.4, 4.0)
    fig = Figure(figsize=(width * columns if scale else width, height * rows if scale else height),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns)
    for ax in np.atleast_1d(axes).ravel():  # generations, rounds, steps and fights are whole numbers
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, axes


def png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _short(member: str, players: dict[str, int]) -> str:
    player = players.get(member)
    return ("?" if player is None else f"p{player}") + " " + member.split("-")[-1][:6]
