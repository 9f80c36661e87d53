"""`evoarena report EXPERIMENT`: one self-contained HTML page of a run, read from the store alone.

Every figure is a PNG embedded as a base64 data URI, so the page opens anywhere with no network
and no other file. The store is read through the ResultStore protocol only (SQLite or MongoDB),
and a run that is still going gets the page of what is stored so far.

    every run       fitness per generation (GA) or round (arena): best, mean and the 10th-90th
                    percentile band over the individuals (GA) or generators (arena)
    GA              train and validation loss and accuracy of each generation's fittest individual
    arena           the encounter matrix of each round; the share of each side descending from
                    each founder; generator quality (modes covered, or Frechet distance); network
                    sizes. The asynchronous fight is drawn per fight instead of per round
    steps           cache hit rate and tasks per second of each step (the step documents' stats)
    results         tasks per worker (the Celery node, or the local worker process)

Generations and rounds are counted from 1, as the progress line counts them. What the store does
not hold (the Adam baseline's history, generator samples) is said on the page, not drawn.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .status import algorithm_name, open_experiment, state_text, steps_of, usage_errors

if TYPE_CHECKING:
    import numpy as np

# numpy and matplotlib are imported inside the functions, so the command line starts fast.

MAX_HEATMAPS = 12  # encounter matrices drawn at most, evenly spaced over the run, the last one always
BAND = (10, 90)  # the percentiles of the fitness band


# --- the data each figure draws (pure functions of stored documents) ---------------------------------


@dataclass(frozen=True)
class Band:
    """Per x: the best and mean of a population's values, and its 10th and 90th percentiles."""

    x: list[int]
    best: list[float]
    mean: list[float]
    low: list[float]
    high: list[float]


def fitness_band(values: dict[int, list[float]]) -> Band:
    """Best, mean and percentile band of the finite values at each x (an x with none is left out);
    percentiles interpolate linearly between order statistics (numpy's default)."""
    import numpy as np

    rows = [(x, np.asarray(v, float)) for x, v in sorted(values.items())]
    rows = [(x, v[np.isfinite(v)]) for x, v in rows]
    rows = [(x, v) for x, v in rows if len(v)]
    return Band([x for x, _ in rows], [float(v.max()) for _, v in rows], [float(v.mean()) for _, v in rows],
                [float(np.percentile(v, BAND[0])) for _, v in rows], [float(np.percentile(v, BAND[1])) for _, v in rows])


def ga_fitness(results: list[dict]) -> dict[int, list[float]]:
    """Each generation's fitness values (counted from 1), from its evaluate results; failed ones left out."""
    values = defaultdict(list)
    for r in results:
        if r["op"] == "evaluate" and _finite(r.get("fitness")):
            values[r["generation"] + 1].append(r["fitness"])
    return dict(values)


def best_metrics(results: list[dict]) -> dict[str, list[float]]:
    """The metrics of each generation's fittest individual: {"x": generations, "train_loss": ...}."""
    best: dict[int, dict] = {}
    for r in results:
        if r["op"] == "evaluate" and _finite(r.get("fitness")):
            g = r["generation"] + 1
            if g not in best or (r["fitness"], r["_id"]) > (best[g]["fitness"], best[g]["_id"]):
                best[g] = r
    keys = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")
    out = {"x": sorted(best)}
    for key in keys:
        out[key] = [best[g]["metrics"].get(key, math.nan) for g in out["x"]]
    return out


def arena_fitness(gens: list[dict], kind: str) -> dict[int, list[float]]:
    """Each round's (or fight's) generator fitness of kind `kind`, from the pure_gen docs."""
    values = defaultdict(list)
    for doc in gens:
        f = (doc.get("fitness_map") or {}).get(kind)
        if _finite(f):
            values[doc["round"] + 1].append(f)
    return dict(values)


def fight_fitness(events: list[dict]) -> dict[int, list[float]]:
    """The asynchronous fight's generator fitness after each fight (the population of each event doc,
    by fights done); a generator that has not fought yet has no fitness and is left out."""
    values = {}
    for event in events:
        fit = [m.get("fitness") for m in event["members"] if m["side"] == "gen" and not m.get("failed")]
        values[event["done"]] = [f for f in fit if _finite(f)]
    return values


def lineage_shares(snapshots: dict[int, list[str]]) -> tuple[list[int], list[str], np.ndarray]:
    """(x, founders, shares): shares[i, k] is the fraction of the population at x[i] whose lineage
    is founders[k]; founders sorted by their share over the whole run, largest first."""
    import numpy as np

    x = sorted(snapshots)
    total = Counter(lineage for k in x for lineage in snapshots[k])
    founders = sorted(total, key=lambda f: (-total[f], f))
    shares = np.zeros((len(x), len(founders)))
    for i, k in enumerate(x):
        counts = Counter(snapshots[k])
        for j, f in enumerate(founders):
            shares[i, j] = counts[f] / len(snapshots[k]) if snapshots[k] else 0.0
    return x, founders, shares


def generator_quality(gens: list[dict]) -> dict[str, dict[int, list[float]]]:
    """Per quality measure the pure_gen docs carry ("modes_covered", "frechet", ...), its values per round."""
    out: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for doc in gens:
        for key, value in (doc.get("quality") or {}).items():
            if _finite(value):
                out[key][doc["round"] + 1].append(float(value))
    return {k: dict(v) for k, v in out.items()}


def network_sizes(docs: list[dict]) -> dict[int, tuple[int, float, int]]:
    """Per round: (smallest, median, largest) parameter count of the members of one side."""
    import numpy as np

    by_round = defaultdict(list)
    for doc in docs:
        by_round[doc["round"] + 1].append(doc["parameters"])
    return {r: (min(p), float(np.median(p)), max(p)) for r, p in sorted(by_round.items())}


def heatmap_rounds(rounds: list[int], limit: int = MAX_HEATMAPS) -> list[int]:
    """At most `limit` of `rounds` (sorted), evenly spaced, the first and the last always among them."""
    import numpy as np

    rounds = sorted(rounds)
    if len(rounds) <= limit:
        return rounds
    picks = np.linspace(0, len(rounds) - 1, limit).round().astype(int)
    return [rounds[i] for i in sorted(set(picks))]


def step_throughput(steps: list[dict]) -> dict[str, list[float]]:
    """Cache hit rate and tasks per second of each step that measured them (a step counted from 1)."""
    measured = [d for d in steps if "hit_rate" in d.get("stats", {}) and "evals_per_s" in d.get("stats", {})]
    return {"x": [d["generation"] + 1 for d in measured], "hit_rate": [d["stats"]["hit_rate"] for d in measured],
            "evals_per_s": [d["stats"]["evals_per_s"] for d in measured]}


def tasks_per_worker(results: list[dict]) -> dict[str, Counter]:
    """Per worker (its Celery node when it had one, else its process name), how many results of each
    op it stored; results the master recorded for a lost task count under "(lost)"."""
    out: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        out[r.get("node") or r.get("worker") or "(lost)"][r["op"]] += 1
    return dict(sorted(out.items()))


# --- the figures ----------------------------------------------------------------------------------


def plot_fitness(band: Band, xlabel: str, title: str):
    fig, ax = _figure()
    ax.fill_between(band.x, band.low, band.high, alpha=0.25, color="C0", label=f"{BAND[0]}th-{BAND[1]}th percentile")
    ax.plot(band.x, band.mean, color="C0", marker=".", label="mean")
    ax.plot(band.x, band.best, color="C3", marker=".", label="best")
    ax.set(xlabel=xlabel, ylabel="fitness", title=title)
    ax.legend()
    return fig


def plot_loss_and_accuracy(metrics: dict[str, list[float]]):
    fig, (loss, acc) = _figure(2)
    for key, style in (("train", "-"), ("val", "--")):
        loss.plot(metrics["x"], metrics[f"{key}_loss"], style, marker=".", label=f"{key} loss")
        acc.plot(metrics["x"], metrics[f"{key}_accuracy"], style, marker=".", label=f"{key} accuracy")
    loss.set(xlabel="generation", ylabel="cross-entropy", title="fittest individual: loss")
    acc.set(xlabel="generation", ylabel="accuracy", title="fittest individual: accuracy", ylim=(0, 1.02))
    loss.legend(), acc.legend()
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


def plot_lineage_shares(per_side: dict[str, tuple[list[int], list[str], np.ndarray]], xlabel: str):
    import matplotlib
    import numpy as np

    fig, axes = _figure(len(per_side))
    for ax, (side_name, (x, founders, shares)) in zip(np.atleast_1d(axes), per_side.items()):
        bottom = np.zeros(len(x))
        for k, founder in enumerate(founders):  # stacked bars: rounds are discrete, and one round still shows
            ax.bar(x, shares[:, k], bottom=bottom, width=0.8 if len(x) < 50 else 1.0, label=founder.split("-")[-1][:6],
                   color=matplotlib.colormaps["tab20"](k % 20))
            bottom += shares[:, k]
        ax.set(xlabel=xlabel, ylabel="share of the side", ylim=(0, 1), title=f"{side_name}: founding lineages")
        if len(founders) <= 12:
            ax.legend(fontsize=7, loc="upper left", title="founder", title_fontsize=7)
    return fig


def plot_quality(quality: dict[str, dict[int, list[float]]], modes: int | None, xlabel: str):
    import numpy as np

    shown = [k for k in ("modes_covered", "high_quality", "frechet", "classes_covered") if k in quality]
    fig, axes = _figure(len(shown))
    for ax, key in zip(np.atleast_1d(axes), shown):
        x = sorted(quality[key])
        lower_is_better = key == "frechet"
        best = [(min if lower_is_better else max)(quality[key][k]) for k in x]
        ax.plot(x, best, color="C3", marker=".", label="best generator")
        ax.plot(x, [float(np.mean(quality[key][k])) for k in x], color="C0", marker=".", label="mean")
        if key == "modes_covered" and modes:
            ax.axhline(modes, color="grey", linestyle=":", label=f"all {modes} modes")
        ax.set(xlabel=xlabel, ylabel=key.replace("_", " "), title=_QUALITY_TITLES[key])
        ax.legend(fontsize=8)
    return fig


def plot_network_sizes(per_side: dict[str, dict[int, tuple[int, float, int]]], xlabel: str):
    fig, ax = _figure()
    for color, (side_name, sizes) in zip(("C0", "C1"), per_side.items()):
        x = list(sizes)
        ax.fill_between(x, [s[0] for s in sizes.values()], [s[2] for s in sizes.values()], alpha=0.2, color=color)
        ax.plot(x, [s[1] for s in sizes.values()], color=color, marker=".", label=f"{side_name} (median, min-max)")
    ax.set(xlabel=xlabel, ylabel="parameters", title="network sizes")
    ax.legend()
    return fig


def plot_throughput(throughput: dict[str, list[float]], xlabel: str):
    fig, (hits, rate) = _figure(2)
    hits.plot(throughput["x"], throughput["hit_rate"], marker=".")
    hits.set(xlabel=xlabel, ylabel="share of builds from a cache", title="parent-cache hit rate", ylim=(-0.02, 1.02))
    rate.plot(throughput["x"], throughput["evals_per_s"], marker=".", color="C2")
    rate.set(xlabel=xlabel, ylabel="tasks per second", title="throughput", ylim=(0, None))
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
    ax.legend(fontsize=8)
    return fig


_QUALITY_TITLES = {"modes_covered": "modes covered", "high_quality": "high-quality samples",
                   "frechet": "Frechet distance (digits classifier features; lower is better)",
                   "classes_covered": "digit classes covered"}


# --- the page -------------------------------------------------------------------------------------


def build_page(store, name: str) -> str:
    """The report of experiment `name` (which must be in `store`) as one HTML document."""
    from .spec import parse_spec

    experiment = store.get_experiment(name)
    spec = parse_spec(experiment["spec"], source=f"the stored spec of {name}")
    steps = store.list_generations(name)
    results = store.find_results(name)
    page = _Page()
    if spec.algorithm == "arena":
        _arena_sections(page, store, spec, steps)
    else:
        _ga_sections(page, spec, results, steps)
    throughput = step_throughput(steps)
    if throughput["x"]:
        page.figure("Throughput", plot_throughput(throughput, "step" if spec.algorithm == "arena" else "generation"),
                    "Per step: the share of network builds served from a worker's parent cache, and tasks finished "
                    "per second.")
    if results:
        page.figure("Workers", plot_tasks_per_worker(tasks_per_worker(results)),
                    "Results stored by each worker (Celery node name on a fleet, process name on a local run).")
    return page.html(name, _summary(store, experiment, spec, len(results)))


def _ga_sections(page: _Page, spec, results: list[dict], steps: list[dict]) -> None:
    band = fitness_band(ga_fitness(results))
    if not band.x:
        page.note("No evaluation is stored yet: nothing to draw.")
        return
    page.figure("Fitness", plot_fitness(band, "generation", "fitness (minus the training cross-entropy)"),
                f"Per generation, over its evaluated individuals: best, mean and the {BAND[0]}th-{BAND[1]}th "
                "percentile band.")
    page.figure("Training loss and accuracy", plot_loss_and_accuracy(best_metrics(results)),
                "The fittest individual of each generation on the training set and on the validation set "
                "(never trained on: memorization cannot help there).")
    page.note(f"The Adam baseline is not stored: `evoarena baseline` prints its history (here {spec.baseline.epochs} "
              f"epochs at lr {spec.baseline.lr}) without writing it to the store, so it is not drawn beside the GA.",
              section="Training loss and accuracy")
    if len(steps) < band.x[-1]:
        page.note(f"Generation {band.x[-1]} is in progress: the figures include the {len(ga_fitness(results)[band.x[-1]])} "
                  "results stored so far.")


def _arena_sections(page: _Page, store, spec, steps: list[dict]) -> None:
    name, fight = spec.name, spec.arena.mode == "async"
    unit = "fight" if fight else "round"
    gens, discs = store.find_docs("pure_gen", name), store.find_docs("pure_disc", name)
    if not gens:
        page.note("No match is stored yet: nothing to draw.")
        return
    band = fitness_band(fight_fitness(steps) if fight else arena_fitness(gens, spec.arena.fitness.kind))
    if band.x:
        page.figure("Fitness", plot_fitness(band, unit, f"generator fitness ({spec.arena.fitness.kind})"),
                    f"Per {unit}, over the generators {'after it (those that have fought)' if fight else 'matched'}: "
                    f"best, mean and the {BAND[0]}th-{BAND[1]}th percentile band.")

    traces = {d["round"] + 1: d for d in store.find_docs("pure_match_trace", name) if "matrix" in d}
    players = {d["member"]: d["player"] for d in gens + discs}
    shown = heatmap_rounds(list(traces))
    page.text("Share of each generator's samples each discriminator took for real. Grey: an encounter that does not "
              "count (speciation, or the training partner); *: a Byzantine discriminator. Labels: player, member id.",
              section="Encounter matrices")
    for r in shown:
        page.figure(f"encounter matrix, {unit} {r}", plot_encounter_matrix(traces[r], players, f"{unit} {r}"),
                    section="Encounter matrices")
    if len(shown) < len(traces):
        page.note(f"{len(shown)} of the {len(traces)} encounter matrices are drawn, evenly spaced.",
                  section="Encounter matrices")

    page.figure("Founding lineages", plot_lineage_shares(founding_lineages(spec, steps, gens, discs), unit),
                "The share of each side descending from each founder (a member's lineage is its first parent's, "
                "back to a founder)." + (" Per fight, over the whole population after it." if fight else ""))
    quality = generator_quality(gens)
    if quality:
        modes = max((m for ms in quality.get("modes", {}).values() for m in ms), default=None)
        page.figure("Generator quality", plot_quality(quality, modes and int(modes), unit),
                    f"Per {unit}, measured on {spec.problem.metric_samples} samples of each generator"
                    + (" (the fight's own generator)." if fight else "."))
    else:
        page.note("The stored generators carry no quality measures (a user's npz data has none).")
    page.figure("Network sizes", plot_network_sizes({"generators": network_sizes(gens),
                                                     "discriminators": network_sizes(discs)}, unit),
                f"Parameters per network, per {unit}" + (" (the fight's pair)" if fight else "")
                + ": architectures evolve by adding, deleting and resizing layers.")
    page.note("Generator samples are not drawn: the result store keeps each generator's genome and a reference to "
              "its weights in the artifact store, not samples, and this page is built from the result store alone "
              f"(`evoarena sample {name} --out FILE.png` draws the best generator's samples from its weights).")


def founding_lineages(spec, steps: list[dict], gens: list[dict], discs: list[dict]) -> dict[str, tuple]:
    """The founding-lineage shares of each side: from the pure_gen/pure_disc docs of each round, or,
    for the asynchronous fight (whose docs hold only the fight's pair), from the population after each fight."""
    out = {}
    for side_name, label, docs in (("gen", "generators", gens), ("disc", "discriminators", discs)):
        snapshots = defaultdict(list)
        if spec.arena.mode == "async":
            for step in steps:
                snapshots[step["done"]] = [m["lineage"] for m in step["members"] if m["side"] == side_name]
        else:
            for doc in docs:
                snapshots[doc["round"] + 1].append(doc["lineage"])
        out[label] = lineage_shares(dict(snapshots))
    return out


def _summary(store, experiment: dict, spec, n_results: int) -> list[tuple[str, str]]:
    """The table at the top: what ran, how far it is, when it last moved, on what."""
    provenance = experiment.get("provenance") or {}
    rows = [("algorithm", algorithm_name(spec)), ("state", state_text(experiment)),
            ("progress", f"{steps_of(store, spec.name, spec)} complete; {n_results} results stored"),
            ("updated", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(experiment["updated"])))]
    if provenance:
        rows.append(("master", ", ".join(f"{k} {provenance[k]}" for k in ("evoarena", "torch", "master_device")
                                         if k in provenance)))
    return rows


class _Page:
    """Sections of figures and notes, in the order they were added."""

    def __init__(self):
        self.sections: dict[str, list[str]] = {}

    def figure(self, title: str, fig, caption: str = "", section: str | None = None) -> None:
        """`fig` as a PNG data URI, in section `section` (default: its own, named `title`)."""
        uri = "data:image/png;base64," + base64.b64encode(_png(fig)).decode()
        below = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.sections.setdefault(section or title, []).append(
            f'<figure><img src="{uri}" alt="{html.escape(title)}">{below}</figure>')

    def text(self, text: str, section: str) -> None:
        self.sections.setdefault(section, []).append(f"<p>{html.escape(text)}</p>")

    def note(self, text: str, section: str = "Notes") -> None:
        """What the page cannot show, and why."""
        self.sections.setdefault(section, []).append(f'<p class="note">{html.escape(text)}</p>')

    def html(self, name: str, summary: list[tuple[str, str]]) -> str:
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary)
        body = "".join(f"<section><h2>{html.escape(title)}</h2>{''.join(items)}</section>"
                       for title, items in self.sections.items())
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(name)}: evoarena '
                f'report</title><style>{_CSS}</style></head><body><h1>{html.escape(name)}</h1><table>{rows}</table>'
                f"{body}<footer>evoarena report, written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} "
                "from the result store.</footer></body></html>")


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}th,td{text-align:left;padding:2px 12px 2px 0}"
        "figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}"
        "figure img{max-width:100%}figcaption{font-size:.85em;color:#555;max-width:800px}"
        ".note{color:#7a4b00}footer{margin-top:2em;font-size:.8em;color:#777}")


def _figure(columns: int = 1, size: tuple[float, float] | None = None, scale: bool = True):
    """A new figure (no pyplot: nothing global) drawn by the Agg backend, `columns` axes side by side."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    width, height = size or (6.4, 4.0)
    fig = Figure(figsize=(width * columns if scale else width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, columns)
    for ax in np.atleast_1d(axes):  # generations, rounds, steps and fights are whole numbers
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, axes


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _short(member: str, players: dict[str, int]) -> str:
    player = players.get(member)
    return ("?" if player is None else f"p{player}") + " " + member.split("-")[-1][:6]


def _finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# --- the command ----------------------------------------------------------------------------------


def add_parser(commands) -> None:
    report = commands.add_parser("report", help="one self-contained HTML page of a run's figures, from the store")
    report.add_argument("name", help="experiment name (the `name:` in its file)")
    report.add_argument("--out", default="runs/reports", help="directory to write NAME.html in (default runs/reports)")
    report.add_argument("--store", help="result store URL (default: $EVOARENA_STORE or sqlite:///runs/evoarena.db)")


@usage_errors  # an unknown experiment: one line and exit code 2, as `evoarena status`
def cmd_report(args: argparse.Namespace, settings) -> int:
    store, _, _ = open_experiment(args.store or settings.store, args.name)
    with store:
        page = build_page(store, args.name)
    path = Path(args.out) / f"{args.name}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    print(f"{args.name}: report written to {path}")
    return 0
