"""`evoarena report EXPERIMENT`: one self-contained HTML page of a run, read from the store.

Every figure is a PNG embedded as a base64 data URI, so the page opens anywhere with no network
and no other file. The result store is read through the ResultStore protocol only (SQLite or
MongoDB), and a run that is still going gets the page of what is stored so far.

    every run       fitness per generation (GA), step (PSO) or round (arena): best, mean and the
                    10th-90th percentile band over the individuals, particles or generators
    GA, PSO         train and validation loss and accuracy of each generation's fittest individual,
                    beside the Adam baseline's per-epoch history when `evoarena baseline` stored one
                    for the same problem and network (on a second x axis: an epoch is not a generation)
    arena           the encounter matrix of each round; the share of each side descending from
                    each founder, and from the founders of each player; generator quality (modes
                    covered at >= 1 and at >= 20 high-quality samples and the high-quality share, or
                    Frechet distance); network sizes; the samples of the best generator
                    of up to MAX_SAMPLE_PICTURES rounds, drawn from its weights in the artifact store
                    by samples.draw (a picture that cannot be drawn is replaced by a note saying why).
                    The asynchronous fight is drawn per fight instead of per round
    tune            the meta-parameter search's objective against trials, and each trial's values
                    (report/tune.py)
    steps           cache hit rate and tasks per second of each step (the step documents' stats)
    results         tasks per worker, and distinct workers per step (the Celery node, or the local
                    worker process)

Generations, steps and rounds are counted from 1, as the progress line counts them. What cannot be drawn
is said on the page.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from evoarena.cli.status import algorithm_name, open_experiment, state_text, steps_of, usage_errors
from evoarena.report.page import Page
from evoarena.report.plots import (
    BAND,
    evenly_spaced,
    plot_encounter_matrix,
    plot_fitness,
    plot_lineage_shares,
    plot_loss_and_accuracy,
    plot_network_sizes,
    plot_quality,
    plot_tasks_per_worker,
    plot_throughput,
    plot_workers_over_time,
)
from evoarena.report.samples import MAX_SAMPLE_PICTURES, sample_section
from evoarena.report.tune import tune_sections

if TYPE_CHECKING:
    import numpy as np

    from evoarena.settings import Settings

# numpy and matplotlib are imported inside the functions, so the command line starts fast.

MAX_HEATMAPS = 12  # encounter matrices drawn at most, evenly spaced over the run, the last one always


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


def picked_quality(steps: list[dict], fight: bool) -> dict[str, dict[int, float]]:
    """Per quality measure, that of the generator the arena picked as its best (by fitness: the one
    `evoarena run` names, `export` and `sample` take) at each round's match (keyed by round, from 1)
    or after each fight (keyed by fights done)."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for state in steps:
        if not fight and state.get("phase") != "match":
            continue
        x = state.get("done") if fight else state.get("round", 0) + 1
        for key, value in quality_as_today((state.get("stats") or {}).get("best_quality") or {}).items():
            if _finite(value) and x is not None:
                out[key][x] = float(value)
    return dict(out)


def generator_quality(gens: list[dict]) -> dict[str, dict[int, list[float]]]:
    """Per quality measure the pure_gen docs carry ("modes_covered", "frechet", ...), its values per round."""
    out: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for doc in gens:
        for key, value in quality_as_today(doc.get("quality") or {}).items():
            if _finite(value):
                out[key][doc["round"] + 1].append(float(value))
    return {k: dict(v) for k, v in out.items()}


def problem_as_today(problem: dict) -> dict:
    """A stored gan problem as today's spec writes it (a field added since, like data.preset, at its
    default); as stored when today's spec refuses it."""
    from pydantic import ValidationError

    from evoarena.spec.arena import GanSpec

    try:
        return GanSpec.model_validate(problem).model_dump(mode="json")
    except ValidationError:
        return problem


def quality_as_today(quality: dict) -> dict:
    """A stored mixture quality under today's names: one stored before "modes_covered@20" existed
    counted, under "modes_covered", the modes with >= 20 high-quality samples (gan_metrics.STRICT_COUNT)."""
    if "modes" in quality and "modes_covered" in quality and "modes_covered@20" not in quality:
        quality = {("modes_covered@20" if k == "modes_covered" else k): v for k, v in quality.items()}
    return quality


def network_sizes(docs: list[dict]) -> dict[int, tuple[int, float, int]]:
    """Per round: (smallest, median, largest) parameter count of the members of one side."""
    import numpy as np

    by_round = defaultdict(list)
    for doc in docs:
        by_round[doc["round"] + 1].append(doc["parameters"])
    return {r: (min(p), float(np.median(p)), max(p)) for r, p in sorted(by_round.items())}


def heatmap_rounds(rounds: list[int], limit: int = MAX_HEATMAPS) -> list[int]:
    """The rounds whose encounter matrices are drawn: report_plots.evenly_spaced."""
    return evenly_spaced(rounds, limit)


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


def workers_per_step(results: list[dict]) -> dict[int, int]:
    """Per step (counted from 1) that has results: how many distinct workers (Celery node, else process)
    stored them; the master's records of lost tasks are nobody's and are not counted."""
    workers = defaultdict(set)
    for r in results:
        who = r.get("node") or r.get("worker")
        workers[r["generation"] + 1].update([who] if who else [])
    return {step: len(w) for step, w in sorted(workers.items())}


# --- the page -------------------------------------------------------------------------------------


def build_page(store, name: str, settings: Settings | None = None, store_url: str = "") -> str:
    """The report of experiment `name` (which must be in `store`) as one HTML document. With
    `settings` (where the artifact store and the noise table are) and the store's URL, an arena's
    pages also draw its best generators' samples from their weights."""
    from evoarena.spec.experiment import parse_spec

    experiment = store.get_experiment(name)
    spec = parse_spec(experiment["spec"], source=f"the stored spec of {name}")
    steps = store.list_generations(name)
    results = store.find_results(name)
    page = Page()
    if spec.algorithm == "arena":
        _arena_sections(page, store, spec, steps)
        if store.count_docs("pure_gen", name):
            sample_section(page, spec, steps, settings, store_url)
    elif spec.algorithm == "tune":
        tune_sections(page, spec, results, steps)
    else:
        _ga_sections(page, store, spec, results, steps)
    throughput = step_throughput(steps)
    if throughput["x"]:
        page.figure("Throughput", plot_throughput(throughput, spec.step_unit),
                    "Per step: the share of network builds served from a worker's parent cache, and tasks finished "
                    "per second.")
    if results:
        page.figure("Workers", plot_tasks_per_worker(tasks_per_worker(results)),
                    "Results stored by each worker (Celery node name on a fleet, process name on a local run).")
        page.figure("workers over time", plot_workers_over_time(workers_per_step(results), spec.step_unit),
                    "How many distinct workers stored results of each step (a fleet that grows or loses workers "
                    "shows here).", section="Workers")
    return page.html(name, _summary(store, experiment, spec, len(results), steps))


def _ga_sections(page: Page, store, spec, results: list[dict], steps: list[dict]) -> None:
    values = ga_fitness(results)
    band = fitness_band(values)
    if not band.x:
        page.note("No evaluation is stored yet: nothing to draw.")
        return
    atari, unit, who = spec.problem.kind == "atari", spec.step_unit, "individual" if spec.algorithm == "ga" else "particle"
    page.figure("Fitness", plot_fitness(band, unit, f"fitness ({FITNESS_TITLES['atari' if atari else spec.problem.fitness]})"),
                f"Per {unit}, over its evaluated {who}s: best, mean and the {BAND[0]}th-{BAND[1]}th percentile band.")
    if atari:  # no training set and no gradient baseline; bench/atari.py puts the return against frames
        _in_progress_note(page, unit, steps, band, values)
        return
    adam, why_not = adam_baseline(store, spec)
    n_train = spec.problem.batch_size * spec.problem.train_batches
    evaluations = max(len(v) for v in values.values())
    ga_work = f"each: {evaluations} networks scored, one forward pass over the {n_train} training images each"
    adam_work = (f"each: {adam['steps_per_epoch']} gradient steps, one forward and backward pass over the "
                 f"{n_train} training images" if adam else "")
    page.figure("Training loss and accuracy",
                plot_loss_and_accuracy(best_metrics(results), adam and adam["history"], ga_work, adam_work,
                                       f"{spec.algorithm.upper()} {unit}"),
                f"The fittest {who} of each {unit} (blue, bottom axis) on the training set and on the "
                "validation set (never trained on: memorization cannot help there)"
                + (f"; the Adam baseline (orange, top axis: epochs; lr {adam['lr']}, seed {adam['seed']}) on the same "
                   f"network and data. The two x axes are not the same work: a {unit} scores many networks "
                   "without a gradient, an epoch takes gradient steps with one network." if adam else "."))
    if why_not:
        page.note(why_not, section="Training loss and accuracy")
    _in_progress_note(page, unit, steps, band, values)


FITNESS_TITLES = {"atari": "mean episode return", "cross_entropy": "minus the training cross-entropy",
                  "memorized": "training points memorized", "memorized_margin": "points memorized + margin"}


def _in_progress_note(page: Page, unit: str, steps: list[dict], band, values: dict) -> None:
    if len(steps) < band.x[-1]:
        page.note(f"{unit.capitalize()} {band.x[-1]} is in progress: the figures include the "
                  f"{len(values[band.x[-1]])} results stored so far.")


def adam_baseline(store, spec) -> tuple[dict | None, str | None]:
    """(the experiment's stored Adam baseline, None), or (None, why none is drawn): there is none,
    or it trained another problem or network than the experiment's spec."""
    doc = store.get_baseline(spec.name, "adam")
    if doc is None:
        return None, (f"No Adam baseline is stored for {spec.name}: `evoarena baseline FILE --store URL` trains one "
                      f"({spec.baseline.epochs} epochs at lr {spec.baseline.lr}) and records it here.")
    for field in ("problem", "network"):
        if doc[field] != getattr(spec, field).model_dump(mode="json"):
            return None, (f"The stored Adam baseline is not drawn: its {field} differs from the experiment's "
                          f"(stored {doc[field]}); run `evoarena baseline` on this experiment's file again.")
    return doc, None


def _arena_sections(page: Page, store, spec, steps: list[dict]) -> None:
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
    page.figure("Founding players", plot_lineage_shares(founding_lineages(spec, steps, gens, discs, by="player"),
                                                        unit, by="player"),
                "The share of each side descending from the founders of each player (a child may join another "
                "player than its parent's: this is where the descendants of each player's founders went).")
    quality = generator_quality(gens)
    if quality:
        modes = max((m for ms in quality.get("modes", {}).values() for m in ms), default=None)
        reference, why_not = (None, None) if fight else single_gan_baseline(store, spec)
        page.figure("Generator quality", plot_quality(quality, modes and int(modes), unit, reference,
                                                      picked=picked_quality(steps, fight)),
                    f"Per {unit}, measured on {spec.problem.metric_samples} samples of each generator"
                    + (" (the fight's own generator)" if fight else "")
                    + ": the arena's pick (its best generator by fitness, the one `evoarena run` names and "
                      "`export` and `sample` take), the best value any generator reached, and the mean."
                    + (" Dashed: the single-GAN baseline (`evoarena baseline`), one generator and one discriminator "
                       "of the founders' architectures trained for the gradient steps one lineage of the arena has "
                       "had by that round (its train_pair chunks and cross-train steps), measured the same way."
                       if reference else ""))
        if why_not:
            page.note(why_not, section="Generator quality")
    else:
        page.note("The stored generators carry no quality measures (a user's npz data has none).")
    page.figure("Network sizes", plot_network_sizes({"generators": network_sizes(gens),
                                                     "discriminators": network_sizes(discs)}, unit),
                f"Parameters per network, per {unit}" + (" (the fight's pair)" if fight else "")
                + ": architectures evolve by adding, deleting and resizing layers.")


def single_gan_baseline(store, spec) -> tuple[dict[str, dict[int, float]] | None, str | None]:
    """(the stored single-GAN baseline's quality measures per round, None), or (None, why none is drawn):
    there is none, or it trained another problem or other networks or steps than the experiment's."""
    from evoarena.problems.gan_baselines import ARENA_FIELDS

    doc = store.get_baseline(spec.name, "single_gan")
    if doc is None:
        return None, (f"No single-GAN baseline is stored for {spec.name}: `evoarena baseline FILE --store URL` "
                      "trains one at the arena's gradient steps per generator and records it here.")
    arena = spec.arena.model_dump(mode="json")
    differs = [k for k in ARENA_FIELDS if doc["arena"].get(k) != arena[k]]
    if problem_as_today(doc["problem"]) != spec.problem.model_dump(mode="json") or differs:
        return None, (f"The stored single-GAN baseline is not drawn: its {', '.join(differs) or 'problem'} "
                      "differs from the experiment's; run `evoarena baseline` on this experiment's file again.")
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for row in doc["rounds"]:
        for key, value in quality_as_today(row["quality"]).items():
            if _finite(value):
                out[key][row["round"]] = float(value)
    return dict(out), None


def founding_lineages(spec, steps: list[dict], gens: list[dict], discs: list[dict],
                      by: str = "founder") -> dict[str, tuple]:
    """The shares of each side descending from each founder (`by` "founder") or from the founders of
    each player (`by` "player", labelled "player N"): from the pure_gen/pure_disc docs of each round, or,
    for the asynchronous fight (whose docs hold only the fight's pair), from the population after each fight."""
    members = [m for step in steps for m in step.get("members", ())]
    founder_player = {d["member"]: d["player"] for d in gens + discs if d["member"] == d["lineage"]}
    founder_player |= {m["id"]: m["player"] for m in members if m["id"] == m["lineage"]}

    def label(lineage: str) -> str:
        return lineage if by == "founder" else f"player {founder_player.get(lineage, '?')}"

    out = {}
    for side_name, name, docs in (("gen", "generators", gens), ("disc", "discriminators", discs)):
        snapshots = defaultdict(list)
        if spec.arena.mode == "async":
            for step in steps:
                snapshots[step["done"]] = [label(m["lineage"]) for m in step["members"] if m["side"] == side_name]
        else:
            for doc in docs:
                snapshots[doc["round"] + 1].append(label(doc["lineage"]))
        out[name] = lineage_shares(dict(snapshots))
    return out


def _summary(store, experiment: dict, spec, n_results: int, steps: list[dict] = ()) -> list[tuple[str, str]]:
    """The table at the top: what ran, how far it is, how long it took, when it last moved, on what."""
    provenance = experiment.get("provenance") or {}
    rows = [("algorithm", algorithm_name(spec)), ("state", state_text(experiment)),
            ("progress", f"{steps_of(store, spec.name, spec)} complete; {n_results} results stored")]
    seconds = [d["stats"]["seconds"] for d in steps if _finite((d.get("stats") or {}).get("seconds"))]
    if seconds:  # the steps' own time: a run stopped and continued later does not count the pause
        rows.append(("duration", f"{duration_text(sum(seconds))} over {len(seconds)} steps"))
    if experiment.get("created"):
        rows.append(("started", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(experiment["created"]))))
    rows.append(("updated", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(experiment["updated"]))))
    if provenance:
        rows.append(("master", ", ".join(f"{k} {provenance[k]}" for k in ("evoarena", "torch", "master_device")
                                         if k in provenance)))
    return rows


def duration_text(seconds: float) -> str:
    """41 s, 12 min 5 s, 3 h 20 min."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"


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
        page = build_page(store, args.name, settings, args.store or settings.store)
    path = Path(args.out) / f"{args.name}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    print(f"{args.name}: report written to {path}")
    return 0
