"""Seed 003's questions on the memorization GA: do mutations overwrite what was learned; do several
parents let robustness to mutation evolve?

Each file experiments/questions/ga-*.yaml is one of seed 003's settings (1 parent x 16 children,
8 x 4, 8 x 32; sigma 0.02) on a memorization problem cut to two cores (64 random images, a narrow
network). For each file and each of `--seeds` seeds s = 0, 1, ... this runs the GA with `seed: s`
and `data_seed: s` on a fresh SQLite store with the in-process executor, then rebuilds individuals
from the genomes the store keeps (materialize.Materializer) and scores every training point.
The settings share their seeds and their 16 founders, so generation 0 is the same network in all.

Q1, what a mutation destroys. For each generation g >= 1, `--pairs` children drawn at random and
their parents (rebuilt from the child's genome):
  forgotten   training points the parent classifies correctly and the child does not
  learned     points the parent gets wrong and the child gets right
  rates       forgotten / points the parent knows; learned / points it does not
  delta       child's fitness minus its parent's (fitness = -training cross-entropy), from the
              store, over every child: median, 10th and 90th percentiles, share above 0
  elite churn the best individual of g against the best of g-1: points forgotten and learned
              each time the best changes, summed over the run
"Overwrite" reads: a child forgets far more than it learns, and even the elites' line loses
much of what it had while it learns new points.

Q2, robustness to mutation: the damage a fresh mutation does to the best individual, the rise of
its training cross-entropy (its fitness loss), mean over `--probes` mutations whose noise offsets
are the SAME for every run (drawn once from PROBE_SEED; sigma is the runs'). Measured at
generation 0, every `--every` generations, at the end, and at matched fitness: the first
generation at which each run's best reaches the worst final best cross-entropy among the seed's
settings, so that networks are compared at the same fitness. Control, no selection: the founder
that was best at generation 0 mutated generations-1 times in a row at random (the GA's mutation
with nothing selected), measured at the same generations.

There is no bar: this bench answers questions. It exits 1 only on a real failure: a run that
raises, or an individual whose rebuilt fitness differs from the one the store holds.

    python bench/questions_ga.py --seeds 3                                  # 3 seeds: ~22 min on two shared cores
    python bench/questions_ga.py --seeds 3 --plot docs/questions --markdown docs/questions/seed003.md --questions-md docs/QUESTIONS.md
    python bench/questions_ga.py --settings ga-1x16 --seeds 1 --generations 30   # a smoke run, seconds
    python bench/questions_ga.py --block-from docs/questions/seed003.md --questions-md docs/QUESTIONS.md  # no run
    python bench/questions_ga.py --seeds 1 --reports docs/questions/reports  # seed 0's report page of each setting
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from evoarena.encoding import nets
from evoarena import scheduler
from evoarena.worker.inline import InlineExecutor
from evoarena.encoding.genome import Delta, Genome, ancestor, mutate, sample_delta
from evoarena.encoding.materialize import Materializer, ParentCache, apply_delta
from evoarena.encoding.noise import open_noise
from evoarena.problems import memorize
from evoarena.settings import Settings
from evoarena.spec.experiment import ExperimentSpec, parse_spec
from evoarena.store import open_store
from evoarena.worker.worker import WorkerConfig

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ROOT / "experiments" / "questions"
SETTINGS = ("ga-1x16", "ga-8x4", "ga-8x32")
PROBE_SEED = 3003  # the fresh mutations of Q2: the same offsets for every run
WALK_SEED = 3004  # the no-selection control's mutations
FITNESS_TOLERANCE = 1e-4  # rebuilt vs stored training cross-entropy
START, END = "<!-- seed003:start -->", "<!-- seed003:end -->"
REPORTS = ROOT / "docs" / "questions" / "reports"  # where --reports pages go and the documents link them from
ASKED = ("Seed 003: \"test the hypothesis that GA mutations interfere with previous knowledge by memorizing some "
         "random dataset\" and \"try to falsify our hypothesis that multiple parents allow multi-generation selection "
         "effects where chromosomes that are robust to mutation with respect to the current fitness level are more "
         "likely to survive and propogate\".")


# --- measuring functions (tests/test_questions_ga.py) -------------------------------------------------


@dataclass(frozen=True)
class Churn:
    """What one network (the child) kept and changed of another's (the parent's) correct set."""

    points: int  # training points
    known: int  # points the parent classifies correctly
    forgotten: int  # of those, points the child gets wrong
    learned: int  # points the parent gets wrong and the child right

    @property
    def forget_rate(self) -> float:
        return self.forgotten / self.known if self.known else math.nan

    @property
    def learn_rate(self) -> float:
        unknown = self.points - self.known
        return self.learned / unknown if unknown else math.nan


def churn(parent_correct: torch.Tensor, child_correct: torch.Tensor) -> Churn:
    """Compare two per-point correctness vectors (bool, one entry per training point)."""
    if parent_correct.shape != child_correct.shape or parent_correct.dim() != 1:
        raise ValueError(f"correctness vectors must be 1-d and of one length, got {tuple(parent_correct.shape)} "
                         f"and {tuple(child_correct.shape)}")
    p, c = parent_correct.bool(), child_correct.bool()
    return Churn(points=len(p), known=int(p.sum()), forgotten=int((p & ~c).sum()), learned=int((~p & c).sum()))


@dataclass(frozen=True)
class Damage:
    """What fresh mutations do to one network: its fitness loss (rise of training cross-entropy)
    and the share of its correct points they forget."""

    loss: float  # the network's own training cross-entropy
    mean_rise: float  # mean over the mutations of (mutant's cross-entropy - the network's)
    median_rise: float
    forget_rate: float  # mean over the mutations of churn(network, mutant).forget_rate

    @classmethod
    def of(cls, loss: float, correct: torch.Tensor, mutant_losses: list[float], mutant_correct: list[torch.Tensor]) -> Damage:
        if not mutant_losses or len(mutant_losses) != len(mutant_correct):
            raise ValueError(f"need one correctness vector per mutant loss and at least one; got "
                             f"{len(mutant_losses)} losses and {len(mutant_correct)} vectors")
        rises = [m - loss for m in mutant_losses]
        rates = [churn(correct, c).forget_rate for c in mutant_correct]
        return cls(loss, statistics.fmean(rises), statistics.median(rises), statistics.fmean(rates))


def first_reaching(best_loss: list[float], target: float) -> int | None:
    """The first generation whose best training cross-entropy is at or below `target`, or None."""
    return next((g for g, loss in enumerate(best_loss) if loss <= target), None)


def summary(xs: list[float], digits: int) -> str:
    """median [min, max] over the seeds; a dash when there is nothing."""
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return "-"
    return f"{statistics.median(xs):.{digits}f} [{min(xs):.{digits}f}, {max(xs):.{digits}f}]"


def apart(a: list[float], b: list[float]) -> bool:
    """Whether the two ranges over the seeds do not overlap."""
    return bool(a and b) and (max(a) < min(b) or max(b) < min(a))


def replace_block(text: str, block: str) -> str:
    """`text` with the part between the seed-003 markers (markers included) replaced by `block`
    between the markers; appended at the end when the markers are absent."""
    marked = f"{START}\n{block.strip()}\n{END}\n"
    head, start, rest = text.partition(START)
    if start:
        _, end, tail = rest.partition(END)
        if not end:
            raise ValueError(f"found {START} without {END}: refusing to guess where the seed-003 block ends")
        return head + marked + tail.lstrip("\n")
    return text.rstrip("\n") + ("\n\n" if text.strip() else "") + marked


def relink(text: str, from_dir: Path, to_dir: Path) -> str:
    """`text` (markdown written in `from_dir`) with its relative image and page links made relative to `to_dir`."""
    def move(m: re.Match) -> str:
        target = m.group(2)
        if "://" in target or target.startswith("/"):
            return m.group(0)
        moved = os.path.relpath(os.path.normpath(os.path.join(from_dir, target)), to_dir)
        return f"{m.group(1)}({Path(moved).as_posix()})"

    return re.sub(r"(!?\[[^\]]*\])\(([^)\s]+)\)", move, text)


def write_report(path: Path, store, name: str, settings: Settings | None = None, store_url: str = "") -> None:
    """The `evoarena report` page of experiment `name` in `store` (service/evoarena/report.py), to `path`;
    with `settings` and `store_url`, an arena's page also draws its generators' samples from the artifacts.
    bench/questions.py writes its arena pages with it too."""
    from evoarena.report.build import build_page  # matplotlib only when a page is written

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build_page(store, name, settings, store_url), encoding="utf-8")
    print(f"  report: {path} ({path.stat().st_size / 1e6:.2f} MB)", flush=True)


def report_links(stems: list[str], reports: Path, out: Path) -> list[str]:
    """The line that links a section of a document in `out` to seed 0's report pages STEM.html in `reports`
    (written by --reports; bench/questions.py links its sections with it too), and a blank line; only the
    pages that exist, and nothing when none does."""
    pages = [(reports / f"{stem}.html").resolve() for stem in stems]
    links = [f"[{page.name}]({Path(os.path.relpath(page, out.resolve())).as_posix()})" for page in pages if page.exists()]
    return [f"Report (seed 0): {', '.join(links)}", ""] if links else []


# --- scoring rebuilt individuals ------------------------------------------------------------------


@dataclass
class Probe:
    """Everything needed to rebuild and score individuals of one run's problem."""

    arch: dict
    data: memorize.MemorizeData
    materializer: Materializer
    sigma: float
    offsets: list[int]  # Q2's fresh mutations

    def score(self, flat: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Training cross-entropy and per-point correctness of the weights `flat`."""
        with torch.no_grad():
            logits = nets.forward(self.arch, flat, self.data.train_x)
        return F.cross_entropy(logits, self.data.train_y).item(), logits.argmax(1) == self.data.train_y

    def genome(self, genome: Genome) -> tuple[float, torch.Tensor]:
        return self.score(self.materializer.build(genome).flat)

    def damage(self, genome: Genome) -> Damage:
        """Q2: the fresh mutations (same offsets in every run) of `genome`, scored."""
        weights = self.materializer.build(genome)
        loss, correct = self.score(weights.flat)
        losses, corrects = [], []
        for offset in self.offsets:
            mutant = weights.clone()  # built beside the cache: probes are never anyone's parent
            apply_delta(Delta("gaussian", offset, self.sigma), mutant, genome.arch, self.materializer.noise, _no_load)
            m_loss, m_correct = self.score(mutant.flat)
            losses.append(m_loss)
            corrects.append(m_correct)
        return Damage.of(loss, correct, losses, corrects)


def _no_load(*_):
    raise AssertionError("a Gaussian probe mutation loads nothing")


def probe_for(spec: ExperimentSpec, probes: int) -> Probe:
    """The probe of `spec`'s problem; its `probes` fresh mutations depend only on PROBE_SEED, the
    network's layout and the noise table's size, so every run with this network gets the same."""
    problem = spec.problem.model_dump(mode="json")
    arch = memorize.architecture(problem, spec.network.model_dump(mode="json"))
    rng = np.random.default_rng(PROBE_SEED)
    lay = nets.layout(arch)
    offsets = [sample_delta(rng, "gaussian", spec.ga.mutation.sigma, 0.0, lay, spec.noise.size).offset
               for _ in range(probes)]
    noise = open_noise(spec.noise.seed, spec.noise.size, Settings.from_env().noise_dir)
    return Probe(arch, memorize.make_data(problem), Materializer(noise, ParentCache(256 << 20)),
                 spec.ga.mutation.sigma, offsets)


def same_problem(spec: ExperimentSpec) -> str:
    """What the settings must share for their runs to be compared point by point."""
    return repr((spec.problem, spec.network, spec.noise, spec.ga.mutation, spec.ga.initial_population))


# --- one run ------------------------------------------------------------------------------------------


@dataclass
class Run:
    """What one GA run did, measured."""

    setting: str
    seed: int
    best_loss: list[float]  # best training cross-entropy per generation
    best_accuracy: list[float]
    elites: list[Genome]  # the best individual of each generation
    pairs: list[dict]  # per generation g >= 1: Q1's measures
    elite_churn: list[tuple[int, Churn]]  # (generation, churn) each time the best changed
    damage: dict[int, Damage]  # generation -> Q2 damage of that generation's best
    matched: tuple[int, Damage] | None = None  # (generation, damage) at the seed's matched fitness
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def generations(self) -> int:
        return len(self.best_loss)


def load(setting: str, seed: int, generations: int | None) -> ExperimentSpec:
    path = QUESTIONS / f"{setting}.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["seed"] = seed
    doc["problem"]["data_seed"] = seed
    if generations is not None:
        doc["ga"]["generations"] = generations
    return parse_spec(doc, str(path))


def run_ga(spec: ExperimentSpec, tmp: str):
    """Run `spec` on a fresh SQLite store in `tmp` with the in-process executor; return the open store."""
    config = WorkerConfig(f"sqlite:///{tmp}/bench.db", f"{tmp}/artifacts", str(Settings.from_env().noise_dir),
                          spec.executor.cache_mb << 20, threads=1)
    store, executor = open_store(config.store_url), InlineExecutor(config)
    try:
        scheduler.run(spec, store, executor)
    except BaseException:
        store.close()
        raise
    finally:
        executor.close()
    return store


def measure(setting: str, spec: ExperimentSpec, store, probe: Probe, pairs: int, every: int) -> Run:
    """Q1 and Q2 measures of the run `spec` that `store` holds."""
    name, seed = spec.name, spec.seed
    gens = store.list_generations(name)
    by_gen = [store.find_results(name, generation=g["generation"], op="evaluate") for g in gens]
    run = Run(setting, seed, [], [], [], [], [], {})
    previous: dict[str, float] = {}
    for g, docs in enumerate(by_gen):
        best_id = gens[g]["best"]["genome_id"]
        best_doc = next(d for d in docs if d["genome_id"] == best_id)
        elite = Genome.from_json(best_doc["genome"])
        loss, correct = probe.genome(elite)
        if abs(loss - best_doc["metrics"]["train_loss"]) > FITNESS_TOLERANCE:
            run.failures.append(f"{setting} seed {seed} gen {g}: best {best_id} rebuilds to training CE {loss:.6f}, "
                                f"the store holds {best_doc['metrics']['train_loss']:.6f}")
        run.best_loss.append(loss)
        run.best_accuracy.append(float(correct.float().mean()))
        if g > 0 and run.elites[-1].id != elite.id:
            run.elite_churn.append((g, churn(probe.genome(run.elites[-1])[1], correct)))
        run.elites.append(elite)
        fitness = {d["genome_id"]: d["fitness"] for d in docs if d.get("fitness") is not None}
        if g > 0:
            run.pairs.append(pair_measures(docs, previous, probe, pairs, np.random.default_rng([seed, g, PROBE_SEED])))
        previous = fitness
    for g in sorted({*range(0, run.generations, every), run.generations - 1}):
        run.damage[g] = probe.damage(run.elites[g])
    return run


def pair_measures(docs: list[dict], parent_fitness: dict[str, float], probe: Probe, pairs: int,
                  rng: np.random.Generator) -> dict:
    """Q1 for one generation: churn of `pairs` random children against their parents, and the
    child-minus-parent fitness of every child."""
    children = [d for d in docs if d.get("role") == "child" and d.get("fitness") is not None]
    deltas = [d["fitness"] - parent_fitness[d["parents"][0]] for d in children]
    picked = rng.choice(len(children), size=min(pairs, len(children)), replace=False)
    churns = []
    for i in picked:
        child = Genome.from_json(children[int(i)]["genome"])
        parent = ancestor(child, child.parents[0])
        churns.append(churn(probe.genome(parent)[1], probe.genome(child)[1]))
    q10, q50, q90 = np.quantile(deltas, [0.1, 0.5, 0.9])
    return {
        "forgotten": statistics.fmean(c.forgotten for c in churns),
        "learned": statistics.fmean(c.learned for c in churns),
        "known": statistics.fmean(c.known for c in churns),
        "forget_rate": _nanmean([c.forget_rate for c in churns]),
        "learn_rate": _nanmean([c.learn_rate for c in churns]),
        "delta_q10": float(q10), "delta_median": float(q50), "delta_q90": float(q90),
        "improved": sum(d > 0 for d in deltas) / len(deltas),
    }


def _nanmean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.fmean(xs) if xs else math.nan


def walk(founder: Genome, seed: int, steps: int, probe: Probe, at: list[int]) -> dict[int, Damage]:
    """The no-selection control: `founder` mutated `steps` times at random (the GA's mutation,
    nothing selected); Q2's damage at the generations `at`."""
    rng = np.random.default_rng([seed, WALK_SEED])
    lay = nets.layout(founder.arch)
    genome, out = founder, {}
    for g in range(steps + 1):
        if g > 0:
            genome = mutate(genome, sample_delta(rng, "gaussian", probe.sigma, 0.0, lay, probe.materializer.noise.size))
        if g in at:
            out[g] = probe.damage(genome)
    return out


# --- reading the numbers ---------------------------------------------------------------------------


def late(run: Run, key: str) -> float:
    """Mean of a Q1 per-generation measure over the second half of the run."""
    half = run.pairs[len(run.pairs) // 2 :]
    return _nanmean([p[key] for p in half])


def elite_totals(run: Run) -> tuple[int, int]:
    return sum(c.forgotten for _, c in run.elite_churn), sum(c.learned for _, c in run.elite_churn)


def q1_rows(runs: dict[str, list[Run]]) -> list[tuple[str, dict[str, str]]]:
    def each(fn, digits):
        return {s: summary([fn(r) for r in rs], digits) for s, rs in runs.items()}

    return [
        ("final best train CE", each(lambda r: r.best_loss[-1], 3)),
        ("final best train accuracy", each(lambda r: r.best_accuracy[-1], 3)),
        ("2nd half, random child: points forgotten (of 64)", each(lambda r: late(r, "forgotten"), 2)),
        ("2nd half, random child: points learned (of 64)", each(lambda r: late(r, "learned"), 2)),
        ("2nd half: points its parent knows", each(lambda r: late(r, "known"), 1)),
        ("2nd half: forget rate (of the parent's known points)", each(lambda r: late(r, "forget_rate"), 3)),
        ("2nd half: learn rate (of the parent's unknown points)", each(lambda r: late(r, "learn_rate"), 3)),
        ("2nd half: median child - parent fitness", each(lambda r: late(r, "delta_median"), 4)),
        ("2nd half: share of children fitter than their parent", each(lambda r: late(r, "improved"), 3)),
        ("best's line over the run: points forgotten", each(lambda r: elite_totals(r)[0], 0)),
        ("best's line over the run: points learned", each(lambda r: elite_totals(r)[1], 0)),
        ("best's line: forgotten / learned", each(lambda r: _ratio(*elite_totals(r)), 2)),
    ]


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def q2_rows(runs: dict[str, list[Run]], control: list[dict[int, Damage]]) -> list[tuple[str, dict[str, str]]]:
    def each(fn, digits):
        return {s: summary([fn(r) for r in rs], digits) for s, rs in runs.items()}

    last = lambda r: r.damage[r.generations - 1]  # noqa: E731
    rows = [
        ("gen 0: CE rise of a fresh mutation of the best (mean)", each(lambda r: r.damage[0].mean_rise, 4)),
        ("end: CE rise of a fresh mutation (mean)", each(lambda r: last(r).mean_rise, 4)),
        ("end: CE rise (median)", each(lambda r: last(r).median_rise, 4)),
        ("end: share of the best's correct points a fresh mutation forgets", each(lambda r: last(r).forget_rate, 3)),
        ("end - gen 0: change of the mean CE rise", each(lambda r: last(r).mean_rise - r.damage[0].mean_rise, 4)),
        ("matched fitness: generation reached", each(lambda r: r.matched[0] if r.matched else math.nan, 0)),
        ("matched fitness: best's train CE there", each(lambda r: r.matched[1].loss if r.matched else math.nan, 3)),
        ("matched fitness: CE rise of a fresh mutation (mean)", each(lambda r: r.matched[1].mean_rise if r.matched else math.nan, 4)),
        ("matched fitness: share of correct points forgotten", each(lambda r: r.matched[1].forget_rate if r.matched else math.nan, 3)),
    ]
    if control:
        end = max(control[0])
        rows.append((f"no-selection control after {end} random mutations: train CE",
                     {s: summary([c[end].loss for c in control], 3) for s in runs}))
        rows.append(("no-selection control: CE rise of a fresh mutation (mean; gen 0 as above)",
                     {s: summary([c[end].mean_rise for c in control], 4) for s in runs}))
    return rows


def table(rows: list[tuple[str, dict[str, str]]], settings: list[str]) -> str:
    lines = ["| measure | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for label, cells in rows:
        lines.append(f"| {label} | " + " | ".join(cells.get(s, "-") for s in settings) + " |")
    return "\n".join(lines)


def answer_q1(runs: dict[str, list[Run]]) -> str:
    """Two sentences, made from the numbers alone, so that a rerun rewrites them truthfully."""
    n = min(len(rs) for rs in runs.values())
    parts, separate, overlapping = [], [], []
    for s, rs in runs.items():
        f, l = [late(r, "forgotten") for r in rs], [late(r, "learned") for r in rs]
        parts.append(f"{s} {statistics.median(f):.1f} forgotten vs {statistics.median(l):.1f} learned")
        (separate if apart(f, l) else overlapping).append(s)
    more = [s for s, rs in runs.items()
            if statistics.median([late(r, "forgotten") for r in rs]) > statistics.median([late(r, "learned") for r in rs])]
    verdict = ("Yes: in every setting" if len(more) == len(runs) else
               f"Only in {', '.join(more)}:" if more else "No: in no setting")
    if not overlapping:
        sure = "the seeds' ranges of the two are apart in every setting"
    elif separate:
        sure = f"the seeds' ranges of the two are apart in {', '.join(separate)} and overlap in {', '.join(overlapping)}"
    else:
        sure = "the seeds' ranges of the two overlap in every setting"
    first = (f"{verdict} a random child in the second half of the run forgets more of its parent's correct training "
             f"points than it learns new ones ({'; '.join(parts)}, of 64, median over {n} seeds); {sure}.")
    ratios = [_ratio(*elite_totals(r)) for rs in runs.values() for r in rs]
    share = "most" if min(ratios) > 0.5 else "a part"
    gens = next(iter(runs.values()))[0].generations
    second = (f"Selection keeps only the net gains: over the run the best individual's line forgets "
              f"{min(ratios):.2f}-{max(ratios):.2f} points for every point it learns (the range over every setting "
              f"and all {n} seeds), so {share} of what it learned is overwritten and learned again on the way; this "
              f"holds for a 23k-weight network over {gens} generations, not yet shown for the seed's network.")
    return f"{first} {second}"


def answer_q2(runs: dict[str, list[Run]], control: list[dict[int, Damage]]) -> str:
    """Two sentences, made from the numbers alone."""
    n = min(len(rs) for rs in runs.values())
    one = next(s for s in runs if s.startswith("ga-1x"))
    start = statistics.median([r.damage[0].mean_rise for r in runs[one]])
    end = [f"{s} {statistics.median([r.damage[r.generations - 1].mean_rise for r in rs]):.4f}" for s, rs in runs.items()]
    walk_end = (f", and {statistics.median([c[max(c)].mean_rise for c in control]):.4f} for the no-selection control "
                f"(train CE {statistics.median([c[max(c)].loss for c in control]):.2f})") if control else ""
    first = (f"The damage of a fresh mutation to the best (mean rise of its training cross-entropy, the same probe "
             f"mutations in every run) goes from {start:.4f} at generation 0, where the best founder is near chance "
             f"and has nothing to lose, to " + "; ".join(end) + f" at the end (median over {n} seeds){walk_end}: "
             + ("damage grows with what the best has learned" if all(r.damage[r.generations - 1].mean_rise > start
                                                                        for rs in runs.values() for r in rs)
                else "damage does not grow in every run") + ", so the settings are compared at matched fitness.")
    matched = {s: [r.matched[1].mean_rise for r in rs if r.matched] for s, rs in runs.items()}
    verdicts, lower_all, apart_all = [], True, True
    for s in runs:
        if s == one:
            continue
        pairs = list(zip(matched[s], matched[one]))
        lower = sum(a < b for a, b in pairs)
        lower_all &= lower == len(pairs)
        apart_all &= apart(matched[s], matched[one])
        verdicts.append(f"{s} {statistics.median(matched[s]):.4f} against {one}'s {statistics.median(matched[one]):.4f}, "
                        f"lower in {lower} of {len(pairs)} seeds with the ranges "
                        f"{'apart' if apart(matched[s], matched[one]) else 'overlapping'}")
    verdict = ("Yes" if lower_all and apart_all else "A hint of yes, not more" if lower_all else "No clear sign")
    second = (f"{verdict}: at matched fitness the damage with several parents is " + "; ".join(verdicts)
              + f" ({n} seeds, a 23k-weight network, {'weak' if n < 5 else 'moderate'} evidence).")
    return f"{first} {second}"


# --- the document -----------------------------------------------------------------------------------


def section(runs, control, args, plots: dict[str, Path], relative_to: Path, command: str) -> str:
    settings = list(runs)
    n = min(len(rs) for rs in runs.values())
    gens = next(iter(runs.values()))[0].generations
    link = lambda key: Path(os.path.relpath(plots[key].resolve(), relative_to.resolve())).as_posix()  # noqa: E731
    lines = [
        "## Seed 003: do mutations overwrite what was learned; do several parents let robustness to mutation evolve?",
        "",
        ASKED,
        "",
        *report_links(settings, args.reports or REPORTS, relative_to),
        "Generated by `bench/questions_ga.py`; every figure below was printed by the command",
        "",
        f"    {command}",
        "",
        f"The settings are `experiments/questions/{'.yaml`, `experiments/questions/'.join(settings)}.yaml`: seed 003's "
        f"1 parent x 16 children and 8 parents (8 x 4 = the 32 children of experiments/memorize-8x4.yaml, and 8 x 32, "
        f"the other reading of the seed's \"8(32)\"), sigma 0.02, one elite, {gens} generations, on seeds "
        f"0..{n - 1} (data_seed = seed). The problem is cut to two cores: 64 random 3x64x64 images with 10 random "
        "labels (the seed's \"memorize 64 datapoints\"), the seed's kernels and strides with channels 8/16/16 and a "
        "64-wide hidden layer, 23k weights. All settings start from the same 16 founders. Individuals are rebuilt "
        f"from the genomes the store keeps: {args.pairs} random children and their parents per generation for Q1, "
        f"{args.probes} fresh mutations with the same noise offsets in every run for Q2. Cells are median [min, max] "
        "over the seeds. There is no bar: the bench answers questions.",
        "",
        "### Q1: do mutations overwrite what was learned?",
        "",
    ]
    if "overwrite" in plots:
        lines += [f"![Q1: points forgotten and learned per child, child-parent fitness, the best's correct set]({link('overwrite')})", ""]
    lines += [table(q1_rows(runs), settings), "", f"**Answer.** {answer_q1(runs)}", "",
              "### Q2: do several parents let robustness to mutation evolve?", ""]
    if "robustness" in plots:
        lines += [f"![Q2: damage of a fresh mutation of the best, over generations and against fitness]({link('robustness')})", ""]
    lines += [
        "Damage = the rise of the best individual's training cross-entropy under a fresh mutation (its fitness "
        "loss). Matched fitness: the first generation at which each run's best reaches the worst final best "
        "cross-entropy among the seed's settings, so that damage is compared between networks equally fit. "
        "The no-selection control is the generation-0 best mutated at random once per generation; with nothing "
        "selected its cross-entropy runs far up (see the table), so it shows what mutations alone do to a network, "
        "not a robustness to set beside the selected runs'.",
        "",
        table(q2_rows(runs, control), settings), "", f"**Answer.** {answer_q2(runs, control)}", "",
        "### What a fleet run would add", "",
        "The seed's own setting: its full network (channels 32/64/64, hidden 512, 606k weights) on 512 points for "
        "500 generations, 10 or more seeds per setting, and the no-grad \"tilldeath\" loss under which the seed saw "
        "1 x 16 stall. The 8 x 32 setting evaluates 257 individuals a generation, which the fleet spreads over "
        "workers; on two cores only this cut-down problem fits. More seeds would turn the matched-fitness "
        "comparison into an interval on the difference, which a handful of seeds cannot give.",
        "",
    ]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), help="files in experiments/questions/ (ga-*)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for every setting (default 3)")
    parser.add_argument("--generations", type=int, default=None, help="generations of every run (default: the files')")
    parser.add_argument("--pairs", type=int, default=8, help="random children (and their parents) measured per generation")
    parser.add_argument("--probes", type=int, default=64, help="fresh mutations per robustness measurement")
    parser.add_argument("--every", type=int, default=25, help="measure robustness every N generations")
    parser.add_argument("--plot", type=Path, default=None, help="folder for ga-overwrite.png and ga-robustness.png")
    parser.add_argument("--reports", type=Path, default=None,
                        help="write seed 0's report page of each setting there as SETTING.html (docs/questions/reports)")
    parser.add_argument("--markdown", type=Path, default=None, help="write the section there (docs/questions/seed003.md)")
    parser.add_argument("--questions-md", type=Path, default=None,
                        help="replace the seed-003 block at the end of this file (docs/QUESTIONS.md)")
    parser.add_argument("--block-from", type=Path, default=None,
                        help="run nothing: put this section (written by --markdown) into --questions-md's block")
    args = parser.parse_args()
    if args.block_from:  # e.g. after bench/questions.py rewrote docs/QUESTIONS.md without the block
        if not args.questions_md:
            parser.error("--block-from needs --questions-md: the file whose seed-003 block to replace")
        if not args.block_from.exists():
            parser.error(f"--block-from: {args.block_from} does not exist; write it first with --markdown")
        block = relink(args.block_from.read_text(), args.block_from.parent, args.questions_md.parent)
        text = args.questions_md.read_text() if args.questions_md.exists() else ""
        args.questions_md.write_text(replace_block(text, block))
        print(f"block of {args.questions_md} replaced by {args.block_from}")
        return 0
    for s in args.settings:
        if not (QUESTIONS / f"{s}.yaml").exists():
            parser.error(f"--settings: no experiments/questions/{s}.yaml; known: "
                         + ", ".join(sorted(p.stem for p in QUESTIONS.glob("ga-*.yaml"))))
    if not any(s.startswith("ga-1x") for s in args.settings):
        parser.error("--settings must include a one-parent setting (ga-1x...): the other settings are compared with it")
    torch.set_num_threads(1)
    started = time.perf_counter()
    print(f"Seed 003's questions: settings {', '.join(args.settings)}; seeds 0..{args.seeds - 1}; "
          f"{args.pairs} pairs per generation, {args.probes} probe mutations. No bar.\n", flush=True)

    runs: dict[str, list[Run]] = {s: [] for s in args.settings}
    control: list[dict[int, Damage]] = []
    failures: list[str] = []
    for seed in range(args.seeds):
        seed_runs: list[Run] = []
        specs = {s: load(s, seed, args.generations) for s in args.settings}
        shared = {same_problem(spec) for spec in specs.values()}
        if len(shared) != 1:
            print(f"FAIL: the settings {', '.join(specs)} differ in problem, network, noise, mutation or founders")
            return 1
        probe = probe_for(next(iter(specs.values())), args.probes)
        for setting, spec in specs.items():
            t0 = time.perf_counter()
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    store = run_ga(spec, tmp)
                    ran = time.perf_counter() - t0
                    try:
                        if args.reports and seed == 0:
                            write_report(args.reports / f"{setting}.html", store, spec.name)
                        run = measure(setting, spec, store, probe, args.pairs, args.every)
                    finally:
                        store.close()
            except Exception:  # one failed run should not cost the others
                traceback.print_exc()
                failures.append(f"{setting} seed {seed}: the run raised")
                continue
            run.seconds = time.perf_counter() - t0
            failures += run.failures
            seed_runs.append(run)
            runs[setting].append(run)
            print(f"  {setting} seed {seed}: best CE {run.best_loss[0]:.3f} -> {run.best_loss[-1]:.3f} "
                  f"(accuracy {run.best_accuracy[-1]:.2f}), GA {ran:.0f}s + measures {run.seconds - ran:.0f}s; "
                  f"late child forgets {late(run, 'forgotten'):.2f} / learns {late(run, 'learned'):.2f} points; "
                  f"damage gen0 {run.damage[0].mean_rise:.4f} end {run.damage[run.generations - 1].mean_rise:.4f}",
                  flush=True)
        if not seed_runs:
            continue
        target = max(r.best_loss[-1] for r in seed_runs)  # the worst final best: every run reaches it
        for r in seed_runs:
            g = first_reaching(r.best_loss, target)
            r.matched = (g, probe.damage(r.elites[g]))
        first = seed_runs[0]
        if any(r.elites[0].id != first.elites[0].id for r in seed_runs):
            failures.append(f"seed {seed}: the settings' generation-0 bests differ; they should share their founders")
        control.append(walk(first.elites[0], seed, first.generations - 1, probe, sorted(first.damage)))
        print(f"  seed {seed}: matched at train CE {target:.3f}: "
              + ", ".join(f"{r.setting} gen {r.matched[0]} damage {r.matched[1].mean_rise:.4f}" for r in seed_runs)
              + f"; no-selection control end damage {control[-1][max(control[-1])].mean_rise:.4f} "
                f"(CE {control[-1][max(control[-1])].loss:.3f}) [{time.perf_counter() - started:.0f}s]\n", flush=True)

    runs = {s: rs for s, rs in runs.items() if rs}
    if not runs or not any(s.startswith("ga-1x") for s in runs):
        print("No one-parent run finished: nothing to answer.")
        for f in failures:
            print("FAIL:", f)
        return 1
    settings = list(runs)
    print("### Q1: do mutations overwrite what was learned? (median [min, max] over seeds)\n")
    print(table(q1_rows(runs), settings))
    print(f"\n{answer_q1(runs)}\n")
    print("### Q2: do several parents let robustness to mutation evolve?\n")
    print(table(q2_rows(runs, control), settings))
    print(f"\n{answer_q2(runs, control)}\n")

    plots: dict[str, Path] = {}
    if args.plot:
        from questions_ga_plots import plot_overwrite, plot_robustness  # matplotlib only when plotting
        plots = {"overwrite": args.plot / "ga-overwrite.png", "robustness": args.plot / "ga-robustness.png"}
        plot_overwrite(runs, plots["overwrite"])
        plot_robustness(runs, control, plots["robustness"])
        print("plots:", ", ".join(str(p) for p in plots.values()))
    command = "python bench/questions_ga.py " + " ".join(sys.argv[1:])
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(section(runs, control, args, plots, args.markdown.parent, command))
        print("section:", args.markdown)
    if args.questions_md:
        text = args.questions_md.read_text() if args.questions_md.exists() else ""
        args.questions_md.write_text(replace_block(text, section(runs, control, args, plots, args.questions_md.parent, command)))
        print("block replaced in:", args.questions_md)

    print(f"\nTotal {time.perf_counter() - started:.0f}s.")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
