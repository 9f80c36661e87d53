"""The memorization benchmark (seed 003): the GA next to random search and to Adam, on one network.

1. Each GA experiment runs `--generations` generations on a fresh store (local worker pool) with
   its mutation sigma set to `--sigma`, printing the best training cross-entropy as it goes, then
   one summary line: the best training cross-entropy of generation 0 and of the last generation,
   the wall time, evaluations per second (all evaluations over the generations' own seconds) and
   the parent-cache hit rate of generations 1.. (generation 0 builds founders: nothing to hit).
2. Random search: fresh networks drawn exactly as the GA draws its founders (the GA with a
   generation 0 of `initial_population` = N and nothing after it, so `evolve.ga.founders`), N =
   the most evaluations any GA run used. Each GA run is compared with n of them, n = its own
   number of evaluations (elites evaluated again included). `spread` is the standard deviation of
   the training cross-entropy over those n fresh networks.
3. Adam on the same network (`evoarena baseline`), its training loss per epoch.

Bars (exit 1 when one is missed):
- every GA run beats random search given the same evaluations, by a margin: its last generation's
  best training cross-entropy is at least MARGIN = 2 spreads below the best of the n fresh
  networks. The best of ~500 draws is itself a draw that varies by about 0.3 spread, so a GA no
  better than drawing networks does not pass by luck. A GA broken in any of these ways misses it
  (measured by running this benchmark with `evolve.ga` patched; spreads below random search,
  1x16 / 8x4, against 20.7 / 15.0 for the working GA):
    * selection that does not select (parents drawn at random): mutations pile up with nothing
      keeping the good ones, and the best ends above generation 0's (-4.1 / -5.0);
    * mutations drawn but of size 0: the GA keeps its best founder (-0.8 / -1.0);
    * mutations not inherited (a child is its founder plus one delta, not its parent plus one):
      the GA is a search among single mutations of founders, and one mutation at sigma 0.005
      moves the cross-entropy by a third of a spread (0.2 / 0.0). Each generation of the working
      GA starts from the last one's improvements, which is what the bar asks for.
  Why sigma 0.005 and not seed 003's 0.02: at 0.02 one mutation moves the cross-entropy by about
  two spreads, mostly up; the GA's best is a few lucky mutations that the elite keeps, and a GA
  that does not inherit mutations finds as many (1.9 / 3.3 spreads, the 8x4 one above the bar,
  against 3.8 / 6.0 for the working GA). docs/BENCHMARKS.md's figures at 0.02 come from `--sigma 0.02`.
- seed 003's claim about the baseline ("adam gets to 1e-5 within ~100 epochs"): Adam reaches a
  training cross-entropy of 1e-5 within `--epochs` epochs. The default is 200, twice the seed's
  figure: measured here it takes 138 (see docs/BENCHMARKS.md). `--epochs 0` skips Adam.

    python bench/memorize.py                            # 1x16 and 8x4 at sigma 0.005, 30 generations; random search; Adam, 200 epochs (~4 min)
    python bench/memorize.py --sigma 0.02 --epochs 0    # seed 003's sigma, without Adam (~3 min)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from evoarena import scheduler
from evoarena.fleet.executor import LocalExecutor
from evoarena.problems import memorize
from evoarena.settings import Settings
from evoarena.spec.experiment import ExperimentSpec, load_spec
from evoarena.store import open_store
from evoarena.worker.worker import WorkerConfig

ROOT = Path(__file__).resolve().parent.parent
SIGMA = 0.005  # the GA's mutation sigma unless --sigma says otherwise: see the docstring
MARGIN = 2.0  # spreads of a fresh network's training cross-entropy; see the docstring


@dataclass
class Run:
    """What one run of the GA left in its store."""

    best: list[float]  # best training cross-entropy of each generation
    losses: list[float]  # every evaluation's training cross-entropy
    wall: float  # seconds, worker start-up included
    busy: float  # the generations' own seconds
    hit_rates: list[float]  # parent-cache hit rate of generations 1..

    @property
    def evaluations(self) -> int:
        return len(self.losses)


def with_ga(spec: ExperimentSpec, **changes) -> ExperimentSpec:
    return spec.model_copy(update={"ga": spec.ga.model_copy(update=changes)})


def run_ga(spec: ExperimentSpec, workers: int, every: int) -> Run:
    """Run `spec` to its last generation on a fresh store, printing every `every`-th generation."""
    with tempfile.TemporaryDirectory() as tmp:
        config = WorkerConfig(f"sqlite:///{tmp}/bench.db", f"{tmp}/artifacts",
                              str(Settings.from_env().noise_dir), spec.executor.cache_mb << 20)
        store, executor = open_store(config.store_url), LocalExecutor(config, workers)
        best: list[float] = []
        hit_rates: list[float] = []
        started = time.perf_counter()

        def show(p: scheduler.Progress) -> None:
            best.append(-p.best)
            if p.generation > 0:
                hit_rates.append(p.hit_rate)
            if every and (p.generation % every == 0 or p.generation + 1 == p.generations):
                print(f"  gen {p.generation:>4}  best train CE {-p.best:.4f}  mean {-p.mean:.4f}  "
                      f"evals/s {p.evals_per_s:5.1f}  cache hits {p.hit_rate:.0%}  "
                      f"({time.perf_counter() - started:.0f}s)", flush=True)

        try:
            scheduler.run(spec, store, executor, on_progress=show)
            wall = time.perf_counter() - started
            # in result-id order: ids hash the genomes, so the first n of a random search are n random draws
            docs = sorted(store.find_results(spec.name, op="evaluate"), key=lambda d: d["_id"])
            losses = [d["metrics"]["train_loss"] for d in docs]
            busy = sum(g["stats"]["seconds"] for g in store.list_generations(spec.name))
        finally:
            executor.close()
            store.close()
    return Run(best, losses, wall, busy, hit_rates)


def network_of(spec: ExperimentSpec) -> str:
    return repr((spec.problem, spec.network))


def random_search(spec: ExperimentSpec, n: int, workers: int) -> list[float]:
    """Training cross-entropies of `n` fresh networks drawn as the GA draws its founders."""
    search = with_ga(spec, generations=1, initial_population=n)
    search = search.model_copy(update={"name": f"{spec.name}-random-search"})
    print(f"Random search: {n} fresh networks of {spec.name}'s network, drawn as the GA draws its founders")
    run = run_ga(search, workers, every=0)
    print(f"  => {n} evaluations in {run.wall:.0f}s ({n / run.busy:.1f} evals/s)")
    return run.losses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=30, help="GA generations, 0 included (default 30)")
    parser.add_argument("--sigma", type=float, default=SIGMA,
                        help=f"mutation sigma of every GA run (default {SIGMA}; seed 003's is 0.02)")
    parser.add_argument("--epochs", type=int, default=200, help="Adam epochs (default 200; 0 skips Adam)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--experiments", nargs="+", default=["memorize.yaml", "memorize-8x4.yaml"],
                        help="files in experiments/ (default: seed 003's two settings)")
    args = parser.parse_args()
    failures = []

    runs = []
    for name in args.experiments:
        spec = with_ga(load_spec(ROOT / "experiments" / name), generations=args.generations)
        spec = with_ga(spec, mutation=spec.ga.mutation.model_copy(update={"sigma": args.sigma}))
        ga = spec.ga
        print(f"GA {name}: {ga.parents} parent(s) x {ga.children_per_parent} children + {ga.elites} elite, "
              f"sigma {ga.mutation.sigma}, {args.generations} generations, {args.workers} workers")
        run = run_ga(spec, args.workers, every=max(1, args.generations // 10))
        hits = f"{min(run.hit_rates):.0%}-{max(run.hit_rates):.0%}" if run.hit_rates else "-"
        print(f"  => best train CE {run.best[0]:.4f} -> {run.best[-1]:.4f}, {run.evaluations} evaluations in "
              f"{run.wall:.0f}s, {run.evaluations / run.busy:.1f} evals/s, cache hits {hits} after gen 0")
        runs.append((name, spec, run))

    # one random search per problem and network (seed 003's two files share theirs), as long as the longest run
    longest: dict[str, tuple[ExperimentSpec, int]] = {}
    for _, spec, run in runs:
        longest[network_of(spec)] = (spec, max(run.evaluations, longest.get(network_of(spec), (spec, 0))[1]))
    searched = {key: random_search(spec, n, args.workers) for key, (spec, n) in longest.items()}
    for name, spec, run in runs:
        fresh = searched[network_of(spec)][: run.evaluations]
        spread, best = statistics.stdev(fresh), min(fresh)
        below = (best - run.best[-1]) / spread
        print(f"GA {name} (sigma {spec.ga.mutation.sigma}) against random search, {run.evaluations} evaluations each: "
              f"GA {run.best[-1]:.4f}, random search {best:.4f} (fresh networks: mean {statistics.fmean(fresh):.4f}, "
              f"spread {spread:.4f}); the GA is {below:.1f} spreads below (bar: {MARGIN:.0f})")
        if below < MARGIN:
            failures.append(f"GA {name} is {below:.1f} spreads below random search given the same "
                            f"{run.evaluations} evaluations ({run.best[-1]:.4f} vs {best:.4f}); bar: {MARGIN:.0f}")

    if args.epochs > 0:
        spec = load_spec(ROOT / "experiments" / "memorize.yaml")
        print(f"Adam baseline: lr {spec.baseline.lr}, {args.epochs} epochs")
        started = time.perf_counter()
        history = memorize.baseline(spec.problem.model_dump(mode="json"), spec.network.model_dump(mode="json"),
                                    args.epochs, spec.baseline.lr, spec.seed)
        for r in history:
            if r["epoch"] in (1, 5) or r["epoch"] % 10 == 0:
                print(f"  epoch {r['epoch']:>4}  train CE {r['train_loss']:.3e}  train acc {r['train_accuracy']:.1%}")
        reached = next((r["epoch"] for r in history if r["train_loss"] <= 1e-5), None)
        print(f"  => train CE {history[-1]['train_loss']:.3e} after {args.epochs} epochs "
              f"({time.perf_counter() - started:.0f}s); 1e-5 reached at epoch {reached}")
        if reached is None:
            failures.append(f"Adam did not reach a training CE of 1e-5 within {args.epochs} epochs")

    for failure in failures:
        print("FAIL:", failure)
    if not failures:
        print("PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
