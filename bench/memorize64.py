"""Seed 003's open question: can the GA memorize 64 random points without gradients?

The problem is experiments/memorize-64.yaml (64 random 3x64x64 images, 10 random labels). Each
setting below runs the GA on it for `--generations` generations (generation 0 included) on a
fresh SQLite store with the in-process executor, all from the same seed and data, and this prints
the points memorized against the generation and the wall time.

Points memorized at generation g: the most training points whose argmax is their label, over
every individual evaluated in generation g (the elite is re-evaluated each generation, so with a
count fitness the line never falls).

Settings (SETTINGS; each a problem.fitness and ga overrides):
  seed-1x16          seed 003's first: 1 parent x 16 children, sigma 0.02 ("barely progresses")
  seed-1x16-sigma    the same with sigma raised to 0.05 (seed 003: "halts at around 21")
  seed-8x4           8 parents x 4 children (32 children), sigma 0.02 (seed 003: "continues")
  paper              Such et al. 2017's GA: each child's parent uniform from the top T = 10,
                     99 children + 1 elite, sigma 0.002
  best               what this bench found best (see docs/BENCHMARKS.md): seed-8x4 with the margin
                     tie-break fitness and per-layer self-adaptive sigmas
One change at a time from seed-8x4, with the margin tie-break (run with --settings): margin (the
tie-break alone), cross-entropy (fitness cross_entropy instead), momentum (w 0.5), self-adapt (one
sigma, tau' 0.2), layer (one random layer, sigma 0.05), largest-sigma (the layer with the largest
of the per-layer self-adaptive sigmas).
Seed 003's settings and the paper's use fitness `memorized` (the count: seed 003's "no-grad"
task); `best` uses `memorized_margin`. `--fitness` overrides them all.

Bar (exit 1 when missed): `best` memorizes strictly more points at the last generation than
seed-8x4.

The default run uses a narrow network (the kernels and strides of seed 003, channels 8/16/16,
hidden 64: 23k weights instead of 606k), about 13 minutes on two shared cores; `--full` runs seed
003's network itself, about 25 (docs/BENCHMARKS.md has both tables). The 64 images are few enough that
the larger network costs only about twice as much.

    python bench/memorize64.py                          # narrow network, 500 generations (~13 min)
    python bench/memorize64.py --full                   # seed 003's network, 500 generations (~25 min on 2 cores)
    python bench/memorize64.py --settings seed-8x4 best --generations 50   # a smoke run
    python bench/memorize64.py --plot docs/memorize64.png
    python bench/memorize64.py --generations 150 --settings seed-8x4 margin cross-entropy momentum self-adapt layer largest-sigma best
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from evoarena import scheduler
from evoarena.worker.inline import InlineExecutor
from evoarena.settings import Settings
from evoarena.spec.experiment import ExperimentSpec, GASpec, parse_spec
from evoarena.store import open_store
from evoarena.worker.worker import WorkerConfig

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = ROOT / "experiments" / "memorize-64.yaml"
NARROW = {"convs": [{"channels": 8, "kernel": 8, "stride": 4}, {"channels": 16, "kernel": 4, "stride": 2},
                    {"channels": 16, "kernel": 3, "stride": 1}], "hidden": [64]}
SEED_GA = {"parents": 1, "children_per_parent": 16, "elites": 1, "mutation": {"kind": "gaussian", "sigma": 0.02}}
SETTINGS: dict[str, tuple[str, dict]] = {
    "seed-1x16": ("memorized", SEED_GA),
    "seed-1x16-sigma": ("memorized", {**SEED_GA, "mutation": {"kind": "gaussian", "sigma": 0.05}}),
    "seed-8x4": ("memorized", {**SEED_GA, "parents": 8, "children_per_parent": 4}),
    "paper": ("memorized", {"parents": 10, "selection": "uniform", "children": 99, "elites": 1,
                            "mutation": {"kind": "gaussian", "sigma": 0.002}}),
    "best": ("memorized_margin", {**SEED_GA, "parents": 8, "children_per_parent": 4,
                                  "mutation": {"kind": "gaussian", "sigma": 0.02, "self_adapt": 0.2, "per_layer": True}}),
}
EIGHT_BY_FOUR = {**SEED_GA, "parents": 8, "children_per_parent": 4}
SETTINGS.update({  # one change at a time from seed-8x4, for --settings (not run by default)
    "margin": ("memorized_margin", EIGHT_BY_FOUR),
    "cross-entropy": ("cross_entropy", EIGHT_BY_FOUR),
    "momentum": ("memorized_margin", {**EIGHT_BY_FOUR, "mutation": {"kind": "gaussian", "sigma": 0.02, "momentum": 0.5}}),
    "self-adapt": ("memorized_margin", {**EIGHT_BY_FOUR, "mutation": {"kind": "gaussian", "sigma": 0.02, "self_adapt": 0.2}}),
    "layer": ("memorized_margin", {**EIGHT_BY_FOUR, "mutation": {"kind": "layer", "sigma": 0.05}}),
    "largest-sigma": ("memorized_margin", {**EIGHT_BY_FOUR, "mutation": {"kind": "layer", "sigma": 0.02, "self_adapt": 0.2,
                                                                          "per_layer": True, "layer_choice": "largest_sigma"}}),
})
DEFAULT_SETTINGS = ["seed-1x16", "seed-1x16-sigma", "seed-8x4", "paper", "best"]
BASELINE, BEST = "seed-8x4", "best"


@dataclass
class Run:
    memorized: list[int]  # points memorized at each generation
    wall: float  # seconds
    evaluations: int


def setting_spec(name: str, generations: int, full: bool, fitness: str | None, eval_group: bool, seed: int = 0) -> ExperimentSpec:
    doc = yaml.safe_load(EXPERIMENT.read_text())
    kind, ga = SETTINGS[name]
    doc["name"] = f"memorize-64-{name}"
    doc["seed"] = doc["problem"]["data_seed"] = seed
    doc["problem"]["fitness"] = fitness or kind
    doc["ga"] = {"generations": generations, **ga}
    doc["network"] = {} if full else NARROW  # {}: spec/experiment.py's defaults, seed 003's network
    if eval_group and "eval_group" in GASpec.model_fields:  # batched evaluation: siblings in one pass
        doc["ga"]["eval_group"] = ga.get("children_per_parent", 16) if ga.get("selection") != "uniform" else 64
    return parse_spec(doc, f"{EXPERIMENT} ({name})")


def run_ga(spec: ExperimentSpec, every: int) -> Run:
    """Run `spec` on a fresh store in this process; points memorized per generation from the store."""
    with tempfile.TemporaryDirectory() as tmp:
        config = WorkerConfig(f"sqlite:///{tmp}/bench.db", f"{tmp}/artifacts", str(Settings.from_env().noise_dir),
                              spec.executor.cache_mb << 20, threads=1)
        store, executor = open_store(config.store_url), InlineExecutor(config)
        started = time.perf_counter()

        def show(p: scheduler.Progress) -> None:
            if every and (p.generation % every == 0 or p.generation + 1 == p.generations):
                print(f"  gen {p.generation:>4}  best fitness {p.best:9.4f}  evals/s {p.evals_per_s:6.1f}  "
                      f"({time.perf_counter() - started:.0f}s)", flush=True)

        try:
            scheduler.run(spec, store, executor, on_progress=show)
            wall = time.perf_counter() - started
            memorized, evaluations = [], 0
            for g in store.list_generations(spec.name):
                docs = store.find_results(spec.name, generation=g["generation"], op="evaluate")
                memorized.append(max(d["metrics"]["memorized"] for d in docs if d.get("metrics")))
                evaluations += len(docs)
        finally:
            executor.close()
            store.close()
    return Run(memorized, wall, evaluations)


def marks(generations: int) -> list[int]:
    """The generations the table shows: 0, about every tenth, and the last."""
    step = max(1, (generations - 1) // 10)
    return sorted({*range(0, generations, step), generations - 1})


def plot(runs: dict[str, Run], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, run in runs.items():
        ax.plot(range(len(run.memorized)), run.memorized, label=f"{name} ({run.wall:.0f}s)")
    ax.axhline(64, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("generation")
    ax.set_ylabel("points memorized (of 64)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="seed 003's network (606k weights) instead of the narrow one")
    parser.add_argument("--generations", type=int, default=500, help="generations, 0 included (default 500)")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=DEFAULT_SETTINGS)
    parser.add_argument("--fitness", choices=["cross_entropy", "memorized", "memorized_margin"],
                        help="one fitness kind for every setting (default: each setting's own)")
    parser.add_argument("--one-by-one", action="store_true", help="no batched evaluation (ga.eval_group = 1)")
    parser.add_argument("--seed", type=int, default=0, help="the GA's seed and the data's (default 0)")
    parser.add_argument("--plot", type=Path, help="write points memorized against generation to this PNG")
    args = parser.parse_args()
    generations = args.generations
    batched = not args.one_by_one and "eval_group" in GASpec.model_fields
    network = "seed 003's network (606k weights)" if args.full else "a narrow network (convs 8/16/16, hidden 64)"
    print(f"memorize-64: seed {args.seed}, {generations} generations, {network}, "
          f"{'batched evaluation (ga.eval_group)' if batched else 'evaluation one by one'}")

    runs: dict[str, Run] = {}
    for name in args.settings:
        spec = setting_spec(name, generations, args.full, args.fitness, batched, args.seed)
        ga = spec.ga
        m = ga.mutation
        options = ", ".join(f"{k} {v}" for k, v in m.model_dump().items()
                            if k in ("momentum", "self_adapt", "per_layer") and v or k == "layer_choice" and v != "random")
        print(f"{name}: fitness {spec.problem.fitness}, {ga.population} per generation "
              f"({ga.selection}, T = {ga.parents}), mutation {m.kind}, sigma {m.sigma}{', ' + options if options else ''}", flush=True)
        runs[name] = run_ga(spec, every=max(1, generations // 5))
        run = runs[name]
        print(f"  => {run.memorized[0]} -> {run.memorized[-1]} points memorized, {run.evaluations} evaluations "
              f"in {run.wall:.0f}s", flush=True)

    shown = marks(generations)
    print("\npoints memorized (of 64) by generation")
    print(f"{'setting':<18}" + "".join(f"{g:>6}" for g in shown) + f"{'wall s':>9}")
    for name, run in runs.items():
        print(f"{name:<18}" + "".join(f"{run.memorized[g]:>6}" for g in shown) + f"{run.wall:>9.0f}")
    everything = [name for name, run in runs.items() if run.memorized[-1] == 64]
    print(f"memorized all 64: {', '.join(everything) if everything else 'none'}")
    if args.plot:
        plot(runs, args.plot, f"memorize-64, {network}, {generations} generations")

    if BASELINE in runs and BEST in runs:
        best, base = runs[BEST].memorized[-1], runs[BASELINE].memorized[-1]
        if best <= base:
            print(f"FAIL: {BEST} memorizes {best} points at generation {generations - 1}, not more than {BASELINE}'s {base}")
            return 1
        print(f"PASS: {BEST} memorizes {best} points at generation {generations - 1}, {BASELINE} {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
