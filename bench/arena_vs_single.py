"""The GAN arena against one GAN and the best of 4 restarts: at equal total compute, and at equal wall time.

For each data set and each of `--seeds` seeds s = 0, 1, ...:

  arena      the data set's experiment file (experiments/arena-grid.yaml, arena-ring.yaml with the
             VEEGAN or PacGAN preset, arena-mnist.yaml) with `seed: s` (`--rounds`, `--set` override
             its fields), on a fresh SQLite store, run by a LocalExecutor with `--workers` processes.
             Its gradient steps are counted from its stored result documents, one per trace entry:
             a train_pair step is one discriminator and one generator update, a cross_train step
             (one network against a frozen one) counts as one step too. That sum over all its
             pairs and members is the arena's TOTAL COMPUTE.
  single     ONE pair (the arena's founding architectures and meta-parameters) trained for ALL of
             the arena's steps, in chunks of the arena's train chunk with fresh optimizers per chunk
             (problems/gan_baselines.single_gan_by_round); its quality is also printed at ten
             points along the way (`curve`), which shows whether the budget is past its plateau
  best of 4  four independent pairs of steps // 4 steps each (the seed project's brute-force
             comparator, problems/gan_baselines), the one best on check samples of the quality
             metric kept: it picks with the evaluation metric, which the arena never sees

What the arena outputs, both chosen without the evaluation metric:

  arena mixture  its final generators as a mixture whose weights a (1+1)-ES evolved against the
                 training data's kernel embedding (problems/embedding.py; the final state's `mixture`)
  arena best     the generator with the highest arena fitness in the final state
  arena oracle   the final generator best on check samples of the quality metric (for reference only)

Every output is scored by problems/gan_metrics.quality on the problem's `metric_samples` (2,500)
samples drawn from one seed for every method (the report stream); the picks use other samples (the
check stream). A mixture's samples follow samples.mixture_samples' rule.

Equal wall time (`--wall`, the fleet user's choice): the arena's wall time T on its `--workers`
processes, then in the same wall time: best of N (N = `--workers` independent pairs, one per
process, each trained until T has passed, the best on check samples kept) and a single GAN on one
process for T.

Bars (exit 1 when one is missed), each over the seeds, the arena's output being its mixture, a
difference counting only when it exceeds one standard error of the paired differences:
  grid   arena's mean modes@20 and mean high-quality share higher than the single GAN's and than
         best of 4's (equal total compute)
  mnist  arena's mean Fréchet distance (problems/mnist.py's classifier) lower than both
  rings  arena's mean modes (>= 1 rule) and mean high-quality share no worse than (not below) the
         single GAN's

    python bench/arena_vs_single.py                              # grid, both rings and mnist, 5 seeds
    python bench/arena_vs_single.py --datasets grid --seeds 5    # the grid bar alone
    python bench/arena_vs_single.py --datasets grid --seeds 1 --rounds 1   # a smoke run
    python bench/arena_vs_single.py --datasets grid --wall       # equal wall time on the same workers
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch
import yaml

from evoarena import scheduler
from evoarena.worker.arena_ops import models_dir
from evoarena.evolve.arena import Arena
from evoarena.evolve.population import quality_text
from evoarena.fleet.executor import LocalExecutor
from evoarena.encoding.genome import Genome
from evoarena.problems import gan, gan_baselines, gan_metrics
from evoarena.problems.gan_data import make_data
from evoarena.cli.samples import mixture_samples
from evoarena.settings import Settings
from evoarena.spec.experiment import ExperimentSpec, parse_spec
from evoarena.store import open_store
from evoarena.worker.worker import Worker, WorkerConfig

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
DATASETS = {  # name: (experiment file, the data that replaces its own; {}: the file's data)
    "grid": (EXPERIMENTS / "arena-grid.yaml", {}),
    "ring-veegan": (EXPERIMENTS / "arena-ring.yaml", {"kind": "ring", "preset": "veegan"}),
    "ring-pacgan": (EXPERIMENTS / "arena-ring.yaml", {"kind": "ring", "preset": "pacgan"}),
    "mnist": (EXPERIMENTS / "arena-mnist.yaml", {}),
}
SPECS = {"ring": EXPERIMENTS / "arena-ring.yaml"}  # bench/questions.py's baseline file
CHECK, REPORT = "check", "report"  # the two sample streams: picking, and the figures in the tables
CURVE_POINTS = 10

# The published rows, with their budgets (mode counts use the >= 1 rule; HQ within 3 std).
PUBLISHED = {
    "ring": ["VEEGAN Table 1 (ring, 8 modes, radius 2, std 0.02; its own budget): GAN 1 mode / 99.3% HQ, "
             "Unrolled GAN 7.6 / 35.6%, VEEGAN 8 / 52.9%",
             "PacGAN Table 1 (ring, 8 modes, radius 1, std 0.01; 10 trials, 400 epochs of 100k points): "
             "GAN 6.3 modes / 98.2% HQ, PacGAN4 7.8 / 95.9%"],
    "grid": ["VEEGAN Table 1 (grid 5x5, spacing 2, std 0.05; its own budget): GAN 3.3 modes / 0.5% HQ, "
             "VEEGAN 24.6 / 40%",
             "PacGAN Table 1 (grid 5x5; 10 trials, 400 epochs of 100k points): GAN 17.3 modes / 94.8% HQ, "
             "PacGAN4 24.8 / 93.6%"],
}


# --- the specs -------------------------------------------------------------------------------------


def arena_spec(dataset: str, seed: int, rounds: int | None = None, overrides: dict | None = None) -> ExperimentSpec:
    """The data set's experiment file with `seed`, `rounds` rounds when given, and `overrides`
    (dotted paths under arena:, e.g. {"fitness.generators": "arena"})."""
    path, data = DATASETS[dataset] if dataset in DATASETS else (SPECS[dataset], {})
    doc = yaml.safe_load(path.read_text())
    doc["seed"] = seed
    if data:  # the whole data section: a preset fills only the fields a file leaves out
        doc["problem"]["data"] = dict(data)
        doc["name"] = f"{doc['name']}-{dataset}"
    if rounds is not None:
        doc["arena"]["rounds"] = rounds
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = doc["arena"]
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return parse_spec(doc, str(path))


# --- quality ---------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _data(data_json: str):
    return make_data(json.loads(data_json))


def _stream(seed: int, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(gan_baselines.sub_seed(seed, "samples", stream))


def score_samples(problem: dict, cache_dir: str, samples: torch.Tensor) -> dict:
    return gan_metrics.quality(samples, _data(json.dumps(problem["data"], sort_keys=True)), cache_dir)


def quality(problem: dict, cache_dir: str, arch: dict, flat: torch.Tensor, seed: int, stream: str) -> dict:
    """gan_metrics.quality of `metric_samples` samples of one generator drawn from (seed, stream)."""
    return score_samples(problem, cache_dir, gan.generate(arch, flat, problem["metric_samples"], _stream(seed, stream)))


def rank(q: dict) -> float:
    """Higher is better: modes@20 then high-quality share (mixtures); -Fréchet (images)."""
    return q["modes_covered@20"] + 0.5 * q["high_quality"] if "modes_covered@20" in q else -q["frechet"]


def check_score(problem: dict, cache_dir: str, seed: int, arch: dict, flat: torch.Tensor) -> float:
    """best_of_restarts' score: the rank of the quality on the check samples."""
    return rank(quality(problem, cache_dir, arch, flat, seed, CHECK))


# --- the arena -------------------------------------------------------------------------------------


def run_arena(spec: ExperimentSpec, workers: int, noise_dir: str, cache_dir: str, after=None) -> dict:
    """Run the arena on a fresh store; its step count, its outputs' report quality, its wall time.
    `after(store, config)`, when given, is called once the run is done, while the temporary store and
    its artifacts still exist (bench/questions.py writes the run's report page there)."""
    problem = spec.problem.model_dump(mode="json")
    with tempfile.TemporaryDirectory() as tmp:
        config = WorkerConfig(f"sqlite:///{tmp}/arena.db", f"{tmp}/artifacts", noise_dir, spec.executor.cache_mb << 20)
        store, executor = open_store(config.store_url), LocalExecutor(config, workers)
        try:
            started = time.perf_counter()
            scheduler.run(spec, store, executor)
            seconds = time.perf_counter() - started
            steps = {op: sum(len(r["trace"]) for r in store.find_results(spec.name, op=op) if not r.get("error"))
                     for op in ("train_pair", "cross_train")}
            final = store.get_generation(spec.name, store.last_generation(spec.name))
            gens = [m for m in final["members"] if m["side"] == "gen" and not m.get("failed")]
            # the weights of the final generators, rebuilt from their checkpoints before tmp goes
            builder = Worker(config).materializer(spec.noise.model_dump(mode="json"))
            flats = {m["id"]: builder.build(Genome.from_json(m["genome"])).flat.clone() for m in gens}
            if after is not None:
                after(store, config)
        finally:
            executor.close()
            store.close()
    judged = [m for m in gens if m.get("fitness") is not None and not math.isnan(m["fitness"])]
    # the arena's own tie rule; a lone player's generators meet no foreign discriminator and get no fitness
    by_fitness = min(judged, key=lambda m: (-m["fitness"], m["id"])) if judged else min(gens, key=lambda m: m["id"])
    by_check = max(gens, key=lambda m: rank(quality(problem, cache_dir, _arch(m), flats[m["id"]], spec.seed, CHECK)))
    score = {m["id"]: quality(problem, cache_dir, _arch(m), flats[m["id"]], spec.seed, REPORT) for m in (by_fitness, by_check)}
    out = {"steps": steps["train_pair"] + steps["cross_train"], "pair_steps": steps["train_pair"],
           "cross_steps": steps["cross_train"], "seconds": seconds, "generators": len(gens),
           "fitness": score[by_fitness["id"]], "oracle": score[by_check["id"]],
           "lineage_steps": by_fitness.get("steps", 0)}
    if mix := final.get("mixture"):
        members = {m["id"]: m for m in gens}
        nets = [(_arch(members[i]), flats[i]) for i in mix["members"]]
        samples, _ = mixture_samples(nets, mix["weights"], problem["metric_samples"],
                                     gan_baselines.sub_seed(spec.seed, "samples", REPORT))
        out["mixture"] = score_samples(problem, cache_dir, samples)
        out["mixture_size"] = sum(w > 0 for w in mix["weights"])
        out["mixture_steps"] = mix.get("lineage_steps")
    return out


def _arch(member: dict) -> dict:
    return member["genome"]["arch"]


# --- the baselines (each in a process of the pool) -------------------------------------------------


def _one_thread() -> None:
    torch.set_num_threads(1)


def founders(spec: ExperimentSpec) -> tuple[dict, dict, dict, int]:
    """(generator arch, discriminator arch, meta, chunk) of the arena's founders."""
    arena = Arena(spec)
    return arena.founding_arch("gen"), arena.founding_arch("disc"), arena.founding_meta("gen"), arena.chunks[0]


def run_single(spec: ExperimentSpec, steps: int, cache_dir: str, points: int = CURVE_POINTS) -> dict:
    """One pair for `steps` steps; its report quality at the end and at `points` evenly spaced stops."""
    problem, (g_arch, d_arch, meta, chunk) = spec.problem.model_dump(mode="json"), founders(spec)
    chunks = [min(chunk, steps - start) for start in range(0, steps, chunk)]
    per = math.ceil(len(chunks) / points)
    rounds = [chunks[i : i + per] for i in range(0, len(chunks), per)]
    started, curve = time.perf_counter(), []
    for done, flat in gan_baselines.single_gan_by_round(problem, g_arch, d_arch, meta, rounds, spec.arena.batch_size,
                                                         spec.seed):
        curve.append((done, quality(problem, cache_dir, g_arch, flat, spec.seed, REPORT)))
    return {"steps": steps, "seconds": time.perf_counter() - started, "quality": curve[-1][1], "curve": curve}


def run_restarts(spec: ExperimentSpec, steps: int, n: int, cache_dir: str) -> dict:
    problem, (g_arch, d_arch, meta, chunk) = spec.problem.model_dump(mode="json"), founders(spec)
    started = time.perf_counter()
    score = partial(check_score, problem, cache_dir, spec.seed)
    _, flat, scores = gan_baselines.best_of_restarts(problem, g_arch, d_arch, meta, steps, spec.arena.batch_size,
                                                     spec.seed, n, score, chunk)
    return {"steps": n * (steps // n), "seconds": time.perf_counter() - started, "scores": scores,
            "quality": quality(problem, cache_dir, g_arch, flat, spec.seed, REPORT)}


def run_for(spec: ExperimentSpec, seconds: float, seed: int, cache_dir: str) -> dict:
    """One pair trained chunk after chunk until `seconds` of wall time have passed (equal wall time)."""
    problem, (g_arch, d_arch, meta, chunk) = spec.problem.model_dump(mode="json"), founders(spec)
    started, done, flat = time.perf_counter(), 0, None

    def chunks():
        while time.perf_counter() - started < seconds:
            yield [chunk]

    for done, flat in gan_baselines.single_gan_by_round(problem, g_arch, d_arch, meta, chunks(), spec.arena.batch_size,
                                                         seed):
        pass
    return {"steps": done, "flat": flat.numpy(), "check": check_score(problem, cache_dir, spec.seed, g_arch, flat),
            "quality": quality(problem, cache_dir, g_arch, flat, spec.seed, REPORT)}


# --- the tables and bars -----------------------------------------------------------------------------


def spread(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def columns(dataset: str) -> list[tuple[str, str, int]]:
    if dataset == "mnist":
        return [("Fréchet distance", "frechet", 2), ("classes covered (of 10)", "classes_covered", 2),
                ("class TV", "class_tv", 3)]
    return [("modes (>= 1)", "modes_covered", 2), ("modes@20", "modes_covered@20", 2),
            ("high-quality share", "high_quality", 3), ("reverse KL", "reverse_kl", 3)]


def table(dataset: str, rows: dict[str, list[dict]]) -> str:
    """One markdown table: per method, mean ± std over seeds of each measure."""
    head = ["method", "gradient steps", *(c[0] for c in columns(dataset)), "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, runs in rows.items():
        if not runs:
            continue
        cells = [method, f"{statistics.fmean(r['steps'] for r in runs):,.0f}"]
        cells += [spread([r["quality"][key] for r in runs], digits) for _, key, digits in columns(dataset)]
        cells.append(spread([r["seconds"] for r in runs], 0))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """(mean of a - b, its standard error) over paired seeds."""
    diff = [x - y for x, y in zip(a, b)]
    se = statistics.stdev(diff) / math.sqrt(len(diff)) if len(diff) > 1 else math.inf
    return statistics.fmean(diff), se


def bars(dataset: str, rows: dict[str, list[dict]], arena: str, single: str, best: str) -> list[tuple[str, bool]]:
    """(what, met) for each of the data set's bars (module docstring)."""
    out = []

    def values(method: str, key: str) -> list[float]:
        return [r["quality"][key] for r in rows[method]]

    if dataset == "grid" or dataset == "mnist":
        keys = [("modes_covered@20", 1), ("high_quality", 1)] if dataset == "grid" else [("frechet", -1)]
        for key, sign in keys:
            for other in (single, best):
                mean, se = paired(values(arena, key), values(other, key))
                met = sign * mean > se
                out.append((f"{dataset}: {arena} {key} {'-' if sign > 0 else 'lower than'} {other}: "
                            f"{mean:+.3f} (one s.e. {se:.3f}) -> {'better' if met else 'not better'} by > 1 s.e.", met))
    else:
        for key in ("modes_covered", "high_quality"):
            mean, se = paired(values(arena, key), values(single, key))
            met = mean >= 0  # no worse: the arena's mean is not below the single GAN's
            out.append((f"{dataset}: {arena} {key} - {single}: {mean:+.3f} (one s.e. {se:.3f}) -> "
                        f"{'no worse' if met else 'worse'}", met))
    return out


# --- main --------------------------------------------------------------------------------------------


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = yaml.safe_load(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per data set")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="start the seeds here (seeds F..F+N-1), to add seeds to an earlier run")
    parser.add_argument("--rounds", type=int, default=None, help="arena rounds (default: the file's)")
    parser.add_argument("--restarts", type=int, default=4, help="N of best of N restarts")
    parser.add_argument("--workers", type=int, default=2, help="arena worker processes")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--set", nargs="*", default=[], metavar="PATH=VALUE",
                        help="override arena fields, e.g. fitness.generators=arena survivors=1.0")
    parser.add_argument("--wall", action="store_true", help="also compare at equal wall time on --workers processes")
    args = parser.parse_args()
    overrides = parse_overrides(args.set)
    noise_dir = str(Settings.from_env().noise_dir)
    cache_dir = str(models_dir(noise_dir))
    torch.set_num_threads(1)  # the bench process only draws samples and scores them
    started = time.perf_counter()

    print(f"Arena vs single GAN vs best of {args.restarts} restarts, at equal total gradient steps; "
          f"{args.seeds} seeds per data set (from seed {args.first_seed}){'; and at equal wall time' if args.wall else ''}")
    if overrides:
        print(f"  arena fields set: {overrides}")
    names = {"mixture": "arena mixture", "fitness": "arena best (fitness pick)", "oracle": "arena oracle pick",
             "single": "single GAN", "restarts": f"best of {args.restarts} restarts"}
    failed = []
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread) as pool:
        for dataset in args.datasets:
            spec0 = arena_spec(dataset, 0, args.rounds, overrides)
            a = spec0.arena
            print(f"\n## {dataset}: {DATASETS[dataset][0].name} {spec0.problem.data.model_dump(mode='json')}\n"
                  f"  {a.rounds} rounds, topology {a.topology}, {a.players} players x ({a.generators} gens + "
                  f"{a.discriminators} discs), per round train-pair {a.train_steps} + cross-train {a.cross_train_steps} "
                  f"steps, generators ranked by {a.fitness.generators}", flush=True)
            rows: dict[str, list[dict]] = {name: [] for name in names.values()}
            wall_rows: dict[str, list[dict]] = {}
            curves = []
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                spec = arena_spec(dataset, seed, args.rounds, overrides)
                arena = run_arena(spec, args.workers, noise_dir, cache_dir)
                single = pool.submit(run_single, spec, arena["steps"], cache_dir)
                restarts = pool.submit(run_restarts, spec, arena["steps"], args.restarts, cache_dir)
                single, restarts = single.result(), restarts.result()
                for key in ("mixture", "fitness", "oracle"):
                    if key in arena:
                        rows[names[key]].append({"steps": arena["steps"], "seconds": arena["seconds"], "quality": arena[key]})
                rows[names["single"]].append(single)
                rows[names["restarts"]].append(restarts)
                curves.append(single["curve"])
                print(f"  seed {seed}: {arena['steps']:,} steps ({arena['pair_steps']:,} train-pair + "
                      f"{arena['cross_steps']:,} cross-train) over {arena['generators']} generators, {arena['seconds']:.0f}s"
                      f" | mixture of {arena.get('mixture_size')} {quality_text(arena.get('mixture', {}))}"
                      f" (lineage steps {arena.get('mixture_steps') or 0:,.0f})"
                      f" | best {quality_text(arena['fitness'])} (lineage {arena['lineage_steps']:,})"
                      f" | oracle {quality_text(arena['oracle'])}"
                      f" | single {quality_text(single['quality'])} ({single['seconds']:.0f}s)"
                      f" | best of {args.restarts} {quality_text(restarts['quality'])} ({restarts['seconds']:.0f}s)"
                      f" [{time.perf_counter() - started:.0f}s]", flush=True)
                if args.wall:
                    for key, row in run_wall(pool, spec, arena, args.workers, cache_dir).items():
                        wall_rows.setdefault(key, []).append(row)
            print(f"\n### {dataset}, equal total compute: mean ± std over {args.seeds} seeds\n")
            print(table(dataset, rows))
            print("\nThe single GAN's quality along its steps (mean over seeds; is the budget past its plateau?):")
            key = "frechet" if dataset == "mnist" else "modes_covered@20"
            for point in range(len(curves[0])):
                at = [c[point] for c in curves if point < len(c)]
                extra = "" if dataset == "mnist" else f"  hq {statistics.fmean(q['high_quality'] for _, q in at):.3f}"
                print(f"  {statistics.fmean(s for s, _ in at):>9,.0f} steps: {key} "
                      f"{statistics.fmean(q[key] for _, q in at):.2f}{extra}")
            for line in PUBLISHED.get(dataset.split("-")[0], []):
                print(f"  published: {line}")
            if wall_rows:
                print(f"\n### {dataset}, equal wall time ({args.workers} workers): mean ± std over {args.seeds} seeds\n")
                print(table(dataset, wall_rows))
            if args.seeds > 1:
                for what, met in bars(dataset, rows, names["mixture"], names["single"], names["restarts"]):
                    print(f"{'BAR MET   ' if met else 'BAR MISSED'} {what}")
                    failed += [] if met else [what]
    print(f"\nTotal {time.perf_counter() - started:.0f}s.")
    return 1 if failed else 0


def run_wall(pool: ProcessPoolExecutor, spec: ExperimentSpec, arena: dict, workers: int, cache_dir: str) -> dict:
    """Equal wall time: best of `workers` pairs, one per process, and one pair on one process, each for
    the arena's wall time."""
    seconds = arena["seconds"]
    runs = [pool.submit(run_for, spec, seconds, gan_baselines.restart_seed(spec.seed, i), cache_dir) for i in range(workers)]
    runs = [r.result() for r in runs]
    single = pool.submit(run_for, spec, seconds, spec.seed, cache_dir).result()
    best = max(runs, key=lambda r: r["check"])
    return {f"arena mixture ({workers} workers)": {"steps": arena["steps"], "seconds": seconds, "quality": arena["mixture"]},
            f"best of {workers} ({workers} workers)": {"steps": sum(r["steps"] for r in runs), "seconds": seconds,
                                                        "quality": best["quality"]},
            "single GAN (1 worker)": {"steps": single["steps"], "seconds": seconds, "quality": single["quality"]}}


if __name__ == "__main__":
    sys.exit(main())
