"""Seed 000's and 001's questions on the ring arena: each question's file against the baseline.

Every file in experiments/questions/ is experiments/arena-ring.yaml with one switch thrown (a
fitness, a schedule, a mutation size...). For the baseline and each chosen question, and each of
`--seeds` seeds s = 0, 1, ..., this runs the file with `seed: s` (and `--rounds` rounds when given)
on a fresh SQLite store in a temporary directory, with the project's LocalExecutor, exactly as
bench/arena_vs_single.py runs its arena (its `run_arena` is imported and reused): the final
generators are rebuilt from their checkpoints and scored by problems/gan_metrics.quality on the
report samples. The baseline and a question share their seeds, so seed s of both starts from the
same draw.

It prints, per question, a table of what the arena records, median [min, max] over the seeds,
question next to baseline:

  fitness pick   the generator the arena itself ranks first: modes covered (of 8) with >= 1 and
                 with >= 20 high-quality samples (gan_metrics.py), high-quality share, reverse KL
  oracle pick    the final generator best on check samples (knowledge the arena lacks): both
                 mode counts, high-quality share
  steps          gradient steps (train-pair + cross-train) from the stored result documents
  wall s         the arena's wall time on its workers

There is no bar: this bench answers questions, it does not guard anything. It exits 1 only when a
run fails (the failure is printed and the other runs go on).

    python bench/questions.py --questions host-pathogen elo --seeds 3
    python bench/questions.py --seeds 2 --rounds 4 --plot docs/questions --markdown docs/QUESTIONS.md
    python bench/questions.py --questions bottleneck --seeds 1 --rounds 1   # a smoke run, about a minute
    python bench/questions.py --seeds 1 --reports docs/questions/reports  # seed 0's report page of each

With `--reports DIR`, seed 0's run of the baseline and of each question also leaves its `evoarena
report` page (service/evoarena/report.py) in DIR as arena-ring.html and QUESTION.html, written while
the run's temporary store and artifacts still exist, so its generator samples are drawn.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import yaml

from arena_vs_single import run_arena  # the arena run and its scoring, shared with that bench
from questions_ga import REPORTS, report_links  # the report pages' folder and links, shared with that bench

from evoarena.worker.arena_ops import models_dir
from evoarena.encoding.arithmetic import PIN
from evoarena.evolve.population import quality_text
from evoarena.settings import Settings
from evoarena.spec.experiment import ExperimentSpec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "experiments" / "arena-ring.yaml"
QUESTIONS = ROOT / "experiments" / "questions"

# The seed documents' own words for each question (seed 000 lists them; 001 asks for the async
# fight). A file not listed here is described by its own `description`.
WORDING = {
    "byzantine": ("000", "Lying discriminators (Byzantine discriminators)"),
    "mixing-within": ("000", "Role of sexes - Papadimitriou's mixability"),
    "mixing-between": ("000", "Role of sexes - Papadimitriou's mixability"),
    "no-speciation": ("000", "Speciation (players having a pool of GANs and discriminators that report "
                             "other's GANs, but not their own)"),
    "small-mutations": ("000", "Small mutations vs large (aneuploidization)"),
    "large-mutations": ("000", "Small mutations vs large (aneuploidization)"),
    "low-performers": ("000", "Tolerance to low performers (importance of variability)"),
    "bottleneck": ("000", "Spread - bottleneck - spread - bottleneck (soft swipes)"),
    "rac-weighting": ("000", "RAC curves weighting effect - letting some fakes through vs blocking the true ones."),
    "fool-one": ("000", "Optimization to induce into error a single discriminator rather than a cluster of them."),
    "standing-variation": ("000", "importance of the standing variation vs the one emerging under immediate selection"),
    "new-mutation": ("000", "importance of the standing variation vs the one emerging under immediate selection"),
    "host-pathogen": ("000", "co-linearity of the viral infection estimated by the random keys from which they "
                             "were generated (Host-pathogen gans angle)"),
    "async-fight": ("001", "Ideally, once finished training, every new algo will pull all available opponnents "
                           "and decide from whom he will be inheriting next. => Asynchronius fight"),
}

# (label, pick, key, digits): the rows of every table; higher is better except reverse KL
METRICS = [
    ("fitness pick: modes covered, >= 1 HQ sample (of 8)", "fitness", "modes_covered", 1),
    ("fitness pick: modes covered, >= 20 HQ samples (of 8)", "fitness", "modes_covered@20", 1),
    ("fitness pick: high-quality share", "fitness", "high_quality", 3),
    ("fitness pick: reverse KL", "fitness", "reverse_kl", 3),
    ("oracle pick: modes covered, >= 1 HQ sample (of 8)", "oracle", "modes_covered", 1),
    ("oracle pick: modes covered, >= 20 HQ samples (of 8)", "oracle", "modes_covered@20", 1),
    ("oracle pick: high-quality share", "oracle", "high_quality", 3),
]
PLOTTED = [m for m in METRICS if m[1] == "fitness"]  # the arena's own choice: what a user of the arena would get


def arena_questions() -> list[str]:
    """The names of the files in experiments/questions/ whose spec is an arena: the GA files there
    (seed 003's ga-*.yaml) are bench/questions_ga.py's, which the arena runner cannot run."""
    return sorted(p.stem for p in QUESTIONS.glob("*.yaml") if load(p, 0, None).algorithm == "arena")


# --- one run ---------------------------------------------------------------------------------------


def load(path: Path, seed: int, rounds: int | None) -> ExperimentSpec:
    """The experiment file with `seed`, and `rounds` rounds when given."""
    doc = yaml.safe_load(path.read_text())
    doc["seed"] = seed
    if rounds is not None:
        doc["arena"]["rounds"] = rounds
    return parse_spec(doc, str(path))


def report_writer(path: Path, name: str, noise_dir: str):
    """run_arena's `after`: write the run's `evoarena report` page to `path`, from its temporary store,
    with its artifact store reachable so that the generators' samples are drawn."""
    from questions_ga import write_report  # the page writer, shared with the GA bench

    def write(store, config) -> None:
        settings = dataclasses.replace(Settings.from_env(), store=config.store_url, artifacts=config.artifacts_url,
                                       noise_dir=Path(noise_dir))
        write_report(path, store, name, settings, config.store_url)
    return write


def run_seeds(path: Path, seeds: int, rounds: int | None, noise_dir: str, cache_dir: str,
              reports: Path | None = None) -> list[dict | None]:
    """run_arena for seeds 0..seeds-1; None for a run that failed (its traceback printed). With
    `reports`, seed 0's report page goes to reports/STEM.html."""
    runs: list[dict | None] = []
    for seed in range(seeds):
        spec = load(path, seed, rounds)
        after = report_writer(reports / f"{path.stem}.html", spec.name, noise_dir) if reports and seed == 0 else None
        try:
            run = run_arena(spec, spec.executor.workers, noise_dir, cache_dir, after)
        except Exception:  # one failed run should not cost the others
            print(f"  {path.stem} seed {seed}: FAILED", flush=True)
            traceback.print_exc()
            runs.append(None)
            continue
        print(f"  {path.stem} seed {seed}: {run['steps']:,} steps, {run['seconds']:.0f}s | fitness pick "
              f"{quality_text(run['fitness'])} | oracle pick {quality_text(run['oracle'])}", flush=True)
        runs.append(run)
    return runs


def arithmetic() -> dict[str, str]:
    """The CPU arithmetic variables in effect (arithmetic.apply sets them for the runs' arithmetic)."""
    import os

    return {name: os.environ.get(name, "unset") for name in PIN}


# --- the figures -----------------------------------------------------------------------------------


def values(runs: list[dict | None], pick: str, key: str) -> list[float]:
    return [r[pick][key] for r in runs if r is not None]


def summary(xs: list[float], digits: int) -> str:
    """median [min, max]; a dash when no run finished."""
    if not xs:
        return "-"
    return f"{statistics.median(xs):.{digits}f} [{min(xs):.{digits}f}, {max(xs):.{digits}f}]"


def table(name: str, runs: list[dict | None], base: list[dict | None]) -> str:
    """Markdown: one row per measure, the baseline's and the question's median [min, max]."""
    lines = [f"| measure | baseline (arena-ring) | {name} |", "|---|---|---|"]
    for label, pick, key, digits in METRICS:
        lines.append(f"| {label} | {summary(values(base, pick, key), digits)} | {summary(values(runs, pick, key), digits)} |")
    for label, key, digits in (("gradient steps", "steps", 0), ("wall s", "seconds", 0)):
        b = [float(r[key]) for r in base if r is not None]
        q = [float(r[key]) for r in runs if r is not None]
        lines.append(f"| {label} | {summary(b, digits)} | {summary(q, digits)} |")
    return "\n".join(lines)


def answer(name: str, runs: list[dict | None], base: list[dict | None]) -> str:
    """Two sentences, made from the numbers alone, so that a rerun rewrites them truthfully."""
    done = sum(r is not None for r in runs)
    parts, apart = [], []
    for label, pick, key, digits in PLOTTED:
        q, b = values(runs, pick, key), values(base, pick, key)
        if not q or not b:
            continue
        parts.append(f"{label.split(': ')[1]} {statistics.median(q):.{digits}f} against {statistics.median(b):.{digits}f}")
        if min(q) > max(b) or max(q) < min(b):
            apart.append(label.split(": ")[1])
    if not parts:
        return f"No run of {name} finished, so there is no answer yet."
    first = f"Over {done} seed{'s' if done != 1 else ''}, the arena's own pick under {name} has median " + "; ".join(parts) + " for the baseline."
    if apart:
        second = (f"The seeds' ranges do not overlap on {', '.join(apart)}, but with {done} seed{'s' if done != 1 else ''} "
                  f"{'this is weak evidence, a hint to test on more seeds' if done < 5 else 'this is only moderate evidence'}.")
    else:
        second = (f"The seeds' ranges overlap on every measure, so with {done} seed{'s' if done != 1 else ''} the "
                  f"difference cannot be told from seed-to-seed spread{': weak evidence either way' if done < 5 else ''}.")
    return f"{first} {second}"


def plot(name: str, runs: list[dict | None], base: list[dict | None], path: Path) -> None:
    """One PNG: per seed, each plotted measure, question vs baseline."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3.2))
    for ax, (label, pick, key, _) in zip(axes, PLOTTED):
        for rs, text, marker in ((base, "baseline", "o"), (runs, name, "s")):
            seeds = [s for s, r in enumerate(rs) if r is not None]
            ax.plot(seeds, [rs[s][pick][key] for s in seeds], marker, label=text, alpha=0.8, markersize=8)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("seed")
        ax.set_xticks(range(len(runs)))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- the document ----------------------------------------------------------------------------------


def kept(path: Path) -> str:
    """The end of `path` from bench/questions_ga.py's seed-003 block on (its start marker, then its
    "## Seed 003" sections), or ''; this bench rewrites only what comes before it."""
    from questions_ga import START  # the other bench's marker, defined once there

    text = path.read_text() if path.exists() else ""
    at = text.find(START)
    return "" if at < 0 else text[at:]


def markdown(done: dict, base: list[dict | None], args: argparse.Namespace, rounds_text: str, plots: dict,
             seconds: float) -> str:
    out = Path(args.markdown).resolve().parent
    reports = args.reports or REPORTS  # the pages of an earlier --reports run are linked too
    command = "python bench/questions.py " + " ".join(sys.argv[1:])
    lines = [
        "# The seed questions on the ring arena",
        "",
        "Generated by `bench/questions.py`; every figure below was printed by the command",
        "",
        f"    {command}",
        "",
        f"Each question file in `experiments/questions/` is `experiments/arena-ring.yaml` with one switch; both ran "
        f"for seeds 0..{args.seeds - 1} ({rounds_text}), each on a fresh SQLite store with the local executor. "
        "Cells are median [min, max] over the seeds. \"Fitness pick\" is the generator the arena ranks first "
        "(its own choice); \"oracle pick\" the best final generator on check samples (reference only). "
        "There is no bar: the bench answers questions.",
        "",
        f"What ran is cut to two shared cores: {args.seeds} seed{'s' if args.seeds != 1 else ''} per question on the "
        "8-mode ring with two players of small MLPs; a fleet run would add 10-20 seeds per question (the last section), "
        "more rounds, larger pools and the digits data (experiments/arena-digits.yaml). Each section links the `evoarena "
        "report` page of its seed-0 run (`--reports`), with its encounter matrices, lineages and generator samples.",
        "",
        f"Every run computed with the CPU arithmetic variables {', '.join(f'{k}={v}' for k, v in arithmetic().items())} "
        "(service/evoarena/arithmetic.py): the same seed gives the same bits on the same machine, whatever its load "
        "(tests/test_arena_determinism.py). Before evoarena pinned its arithmetic, MKL took the machine's own path, and the baseline's seed 2 "
        "covered 0 of 8 modes on an AVX-512 machine and 8 of 8 on one where MKL took its AVX2 path: that was the "
        "reproducibility doubt of the first run of this bench, not the machine's load. "
        f"{sum(r is not None for rs in [base, *done.values()] for r in rs)} runs "
        f"finished in {seconds:,.0f} s of wall time on this machine.",
        "",
        "## Baseline: experiments/arena-ring.yaml",
        "",
        *report_links([BASELINE.stem], reports, out),
        "| measure | baseline |", "|---|---|",
    ]
    for label, pick, key, digits in METRICS:
        lines.append(f"| {label} | {summary(values(base, pick, key), digits)} |")
    for name, runs in done.items():
        seed, words = WORDING.get(name, (None, None))
        asked = (f"Seed {seed}: \"{words}\"" if words else
                 "Not worded in seeds 000/001; the file says") + f" — the switch: *{load(QUESTIONS / f'{name}.yaml', 0, None).description}*"
        lines += ["", f"## {name}", "", *report_links([name], reports, out), asked, ""]
        if name in plots:
            lines += [f"![{name}: per seed, question vs baseline]({plots[name].relative_to(out).as_posix()})", ""]
        lines += [table(name, runs, base), "", f"**Answer.** {answer(name, runs, base)}"]
    rest = [name for name in arena_questions() if name not in done]
    lines += ["", "## Not run yet", ""]
    if rest:
        lines += [f"{', '.join(rest)}. To run them with the same settings:", "",
                  f"    python bench/questions.py --questions {' '.join(rest)} --seeds {args.seeds}"
                  + (f" --rounds {args.rounds}" if args.rounds else "") + " --plot docs/questions", ""]
    else:
        lines += ["None: every question file ran.", ""]
    lines += [
        "## What a fleet run would add",
        "",
        "A handful of seeds on one shared machine only shows whether a switch changes the outcome grossly; the "
        "baseline's own [min, max] over its seeds is the yardstick for any difference above. Each seed's arena is "
        "independent, so a fleet run (the Celery executor, as bench/arena_fleet.py drives the arena on workers) "
        "could run the seeds side by side and give each question 10-20 seeds at the files' own rounds: enough for "
        "a paired comparison per seed and an interval on each difference, which two or three seeds cannot give.",
        "",
    ]
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", nargs="+", default=None,
                        help="names of files in experiments/questions/ (default: all)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for the baseline and every question")
    parser.add_argument("--rounds", type=int, default=None, help="arena rounds for every run (default: each file's)")
    parser.add_argument("--plot", type=Path, default=None, help="folder for one PNG per question")
    parser.add_argument("--reports", type=Path, default=None,
                        help="write seed 0's report page of each run there as QUESTION.html (docs/questions/reports)")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="write the results there (e.g. docs/QUESTIONS.md), rewritten after each question")
    args = parser.parse_args()
    known = arena_questions()
    names = args.questions or known
    for name in names:
        if name not in known:
            parser.error(f"--questions: {name!r} is not an arena file in experiments/questions/ "
                         f"(the ga-*.yaml files are bench/questions_ga.py's); known: {', '.join(known)}")
    noise_dir = str(Settings.from_env().noise_dir)
    cache_dir = str(models_dir(noise_dir))
    torch.set_num_threads(1)  # the bench process only draws samples and scores them
    rounds_text = f"{args.rounds} rounds instead of the files' own, to shorten the runs" if args.rounds else "each file's own rounds"
    started = time.perf_counter()
    print(f"Seed questions vs the baseline arena-ring.yaml: {args.seeds} seeds each, {rounds_text}; "
          f"questions: {', '.join(names)}. No bar.\n", flush=True)

    base = run_seeds(BASELINE, args.seeds, args.rounds, noise_dir, cache_dir, args.reports)
    failed = sum(r is None for r in base)
    done: dict[str, list[dict | None]] = {}
    plots: dict[str, Path] = {}
    for name in names:
        runs = run_seeds(QUESTIONS / f"{name}.yaml", args.seeds, args.rounds, noise_dir, cache_dir, args.reports)
        failed += sum(r is None for r in runs)
        done[name] = runs
        print(f"\n### {name}: median [min, max] over {args.seeds} seeds ({rounds_text})\n")
        print(table(name, runs, base))
        print(f"\n{answer(name, runs, base)}")
        if args.plot:
            plots[name] = (args.plot / f"{name}.png").resolve()
            plot(name, runs, base, plots[name])
            print(f"plot: {args.plot / f'{name}.png'}")
        if args.markdown:  # rewritten after each question, so a cut-short run keeps what finished
            args.markdown.parent.mkdir(parents=True, exist_ok=True)
            text = markdown(done, base, args, rounds_text, plots, time.perf_counter() - started)
            tail = kept(args.markdown)  # read just before writing: the other bench may have added to it
            args.markdown.write_text(text + ("\n" + tail if tail else ""))
        print(f"[{time.perf_counter() - started:.0f}s]\n", flush=True)

    print(f"Total {time.perf_counter() - started:.0f}s; {failed} failed run{'s' if failed != 1 else ''}.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
