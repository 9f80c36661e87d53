"""The GAN arena against a single GAN and the best of 4 restarts, at equal gradient steps.

For each data set and each of `--seeds` seeds s = 0, 1, ...:

  arena      experiments/arena-ring.yaml (8 Gaussians on a ring) or experiments/arena-digits.yaml
             (8x8 digits, MLPs; the arena itself gives image generators a tanh output), with
             `seed: s` (and `--rounds` rounds), on a fresh SQLite store, run by a LocalExecutor
             with `--workers` processes. Its gradient steps are counted from its stored result
             documents, one per trace entry: a train_pair step is one discriminator and one
             generator update, a cross_train step (one network against a frozen one) counts as
             one step too. The arena spreads these steps over all its pairs and members.
  single     ONE pair (the arena's founding architectures and meta-parameters) trained for ALL of
             the arena's steps, in chunks of the arena's train chunk with fresh optimizers per
             chunk, as the arena trains (problems/gan_baselines.single_gan)
  best of 4  four independent pairs of steps // 4 steps each (the seed project's brute-force
             comparator, problems/gan_baselines.best_of_restarts), the one with the best quality
             on check samples kept: it picks with the quality metric

Which arena generator is scored:

  arena (fitness pick)  the generator with the highest arena fitness in the final state: the
                        arena's own choice, made without the quality metric
  arena (oracle pick)   the final generator with the best quality on check samples: knowledge the
                        arena does not have, shown for reference

Every generator is scored by problems/gan_metrics.quality on the problem's `metric_samples` (2,500)
samples drawn from the same seed for every method (the report samples); the picks above use other
samples (the check samples). Ring: modes covered, then high-quality share; digits: -Fréchet.
The arena's final generators (its last round ends at its match) are rebuilt from their
checkpoints and scored afresh on the report samples, like every other method's.

Bar (exit 1 when missed): on the ring, the arena's fitness-picked generator covers at least as
many modes on average over the seeds as the single GAN.

Wall time: the arena runs on `--workers` processes; the single GAN and the best of 4 each run in
one process of one thread (the two side by side): a baseline's wall time is about its CPU time.

    python bench/arena_vs_single.py                 # 5 seeds, the specs' rounds (ring 8, digits 6): not timed here (~10 min idle, by extrapolation)
    python bench/arena_vs_single.py --rounds 3      # 4 minutes on 2 idle cores (same steps for every method)
    python bench/arena_vs_single.py --datasets ring --seeds 1 --rounds 1   # a smoke run, under a minute
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
from evoarena.arena_worker import models_dir
from evoarena.evolve.arena import Arena, quality_text
from evoarena.fleet.executor import LocalExecutor
from evoarena.genome import Genome
from evoarena.problems import gan, gan_baselines, gan_metrics
from evoarena.problems.gan_data import make_data
from evoarena.settings import Settings
from evoarena.spec import ExperimentSpec, parse_spec
from evoarena.store import open_store
from evoarena.worker import Worker, WorkerConfig

ROOT = Path(__file__).resolve().parent.parent
SPECS = {"ring": ROOT / "experiments" / "arena-ring.yaml", "digits": ROOT / "experiments" / "arena-digits.yaml"}
METHODS = ("arena (fitness pick)", "arena (oracle pick)", "single GAN", "best of {n} restarts")
CHECK, REPORT = "check", "report"  # the two sample streams: picking, and the figures in the table


# --- the specs -------------------------------------------------------------------------------------


def arena_spec(dataset: str, seed: int, rounds: int | None) -> ExperimentSpec:
    """The data set's experiment file with `seed`, and `rounds` rounds when given."""
    path = SPECS[dataset]
    doc = yaml.safe_load(path.read_text())
    doc["seed"] = seed
    if rounds is not None:
        doc["arena"]["rounds"] = rounds
    return parse_spec(doc, str(path))


# --- quality ---------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _data(data_json: str):
    return make_data(json.loads(data_json))


def quality(problem: dict, cache_dir: str, arch: dict, flat: torch.Tensor, seed: int, stream: str) -> dict:
    """gan_metrics.quality of `metric_samples` samples drawn from (seed, stream)."""
    rng = torch.Generator().manual_seed(gan_baselines.sub_seed(seed, "samples", stream))
    samples = gan.generate(arch, flat, problem["metric_samples"], rng)
    return gan_metrics.quality(samples, _data(json.dumps(problem["data"], sort_keys=True)), cache_dir)


def rank(q: dict) -> float:
    """Higher is better: modes covered then high-quality share (mixtures); -Fréchet (digits)."""
    return q["modes_covered"] + 0.5 * q["high_quality"] if "modes_covered" in q else -q["frechet"]


def check_score(problem: dict, cache_dir: str, seed: int, arch: dict, flat: torch.Tensor) -> float:
    """best_of_restarts' score: the rank of the quality on the check samples."""
    return rank(quality(problem, cache_dir, arch, flat, seed, CHECK))


# --- the arena -------------------------------------------------------------------------------------


def run_arena(spec: ExperimentSpec, workers: int, noise_dir: str, cache_dir: str, after=None) -> dict:
    """Run the arena on a fresh store; its step count, its two picks' report quality, wall time.
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
    by_fitness = min(judged, key=lambda m: (-m["fitness"], m["id"]))  # the arena's own tie rule
    by_check = max(gens, key=lambda m: rank(quality(problem, cache_dir, _arch(m), flats[m["id"]], spec.seed, CHECK)))
    score = {m["id"]: quality(problem, cache_dir, _arch(m), flats[m["id"]], spec.seed, REPORT) for m in (by_fitness, by_check)}
    return {"steps": steps["train_pair"] + steps["cross_train"], "pair_steps": steps["train_pair"],
            "cross_steps": steps["cross_train"], "seconds": seconds,
            "fitness": score[by_fitness["id"]], "oracle": score[by_check["id"]]}


def _arch(member: dict) -> dict:
    return member["genome"]["arch"]


# --- the baselines (each in a process of the pool) -------------------------------------------------


def _one_thread() -> None:
    torch.set_num_threads(1)


def run_single(problem: dict, g_arch: dict, d_arch: dict, meta: dict, steps: int, batch: int, seed: int,
               chunk: int) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    _, flat = gan_baselines.single_gan(problem, g_arch, d_arch, meta, steps, batch, seed, chunk)
    return flat.numpy(), time.perf_counter() - started


def run_restarts(problem: dict, g_arch: dict, d_arch: dict, meta: dict, steps: int, batch: int, seed: int,
                 chunk: int, n: int, cache_dir: str) -> tuple[np.ndarray, float, list[float]]:
    started = time.perf_counter()
    score = partial(check_score, problem, cache_dir, seed)
    _, flat, scores = gan_baselines.best_of_restarts(problem, g_arch, d_arch, meta, steps, batch, seed, n, score, chunk)
    return flat.numpy(), time.perf_counter() - started, scores


def run_baselines(pool: ProcessPoolExecutor, spec: ExperimentSpec, steps: int, n: int, cache_dir: str) -> dict:
    """The single GAN and the best of n restarts, side by side, with the arena's founders' settings."""
    problem, founders = spec.problem.model_dump(mode="json"), Arena(spec)
    g_arch, d_arch, meta = founders.founding_arch("gen"), founders.founding_arch("disc"), founders.founding_meta("gen")
    chunk, a = founders.chunks[0], spec.arena
    args = (problem, g_arch, d_arch, meta, steps, a.batch_size, spec.seed, chunk)
    single, restarts = pool.submit(run_single, *args), pool.submit(run_restarts, *args, n, cache_dir)
    (s_flat, s_seconds), (r_flat, r_seconds, scores) = single.result(), restarts.result()
    return {
        "single": {"steps": steps, "seconds": s_seconds,
                   "quality": quality(problem, cache_dir, g_arch, torch.from_numpy(s_flat), spec.seed, REPORT)},
        "restarts": {"steps": n * (steps // n), "seconds": r_seconds, "scores": scores,
                     "quality": quality(problem, cache_dir, g_arch, torch.from_numpy(r_flat), spec.seed, REPORT)},
    }


# --- the tables --------------------------------------------------------------------------------------


def spread(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(dataset: str, rows: dict[str, list[dict]]) -> str:
    """One markdown table: per method, mean ± std over seeds of each measure."""
    if dataset == "ring":
        columns = [("modes covered (of 8)", "modes_covered", 2), ("high-quality share", "high_quality", 3),
                   ("reverse KL", "reverse_kl", 3)]
    else:
        columns = [("Fréchet distance", "frechet", 1), ("classes covered (of 10)", "classes_covered", 2),
                   ("class TV", "class_tv", 3)]
    head = ["method", "gradient steps", *(c[0] for c in columns), "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, runs in rows.items():
        cells = [method, f"{statistics.fmean(r['steps'] for r in runs):,.0f}"]
        cells += [spread([r["quality"][key] for r in runs], digits) for _, key, digits in columns]
        cells.append(spread([r["seconds"] for r in runs], 0))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per data set")
    parser.add_argument("--rounds", type=int, default=None, help="arena rounds (default: the spec's)")
    parser.add_argument("--restarts", type=int, default=4, help="N of best of N restarts")
    parser.add_argument("--workers", type=int, default=2, help="arena worker processes")
    parser.add_argument("--datasets", nargs="+", default=["ring", "digits"], choices=["ring", "digits"])
    parser.add_argument("--ring", type=Path, default=SPECS["ring"],
                        help="the ring arena's file (default experiments/arena-ring.yaml); e.g. one of experiments/questions/")
    args = parser.parse_args()
    SPECS["ring"] = args.ring.resolve()
    noise_dir = str(Settings.from_env().noise_dir)
    cache_dir = str(models_dir(noise_dir))
    torch.set_num_threads(1)  # the bench process only draws samples and scores them
    started = time.perf_counter()

    print(f"Arena vs single GAN vs best of {args.restarts} restarts, at equal gradient steps; {args.seeds} seeds per data set")
    for dataset in args.datasets:
        a = arena_spec(dataset, 0, args.rounds).arena
        print(f"  {dataset}: {SPECS[dataset].name}, {a.rounds} rounds of {a.players} players x ({a.generators} gens + "
              f"{a.discriminators} discs), per round train-pair {a.train_steps} + cross-train {a.cross_train_steps} steps")
    print("The arena spreads its gradient steps over several pairs (every pair trains, every member cross-trains); "
          "the single GAN gets ALL of them for ONE pair; best of N gets steps // N for each of N pairs.\n", flush=True)

    tables, ring_modes = [], None
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread) as pool:
        for dataset in args.datasets:
            names = [m.format(n=args.restarts) for m in METHODS]
            rows: dict[str, list[dict]] = {name: [] for name in names}
            for seed in range(args.seeds):
                spec = arena_spec(dataset, seed, args.rounds)
                arena = run_arena(spec, args.workers, noise_dir, cache_dir)
                base = run_baselines(pool, spec, arena["steps"], args.restarts, cache_dir)
                rows[names[0]].append({"steps": arena["steps"], "seconds": arena["seconds"], "quality": arena["fitness"]})
                rows[names[1]].append({"steps": arena["steps"], "seconds": arena["seconds"], "quality": arena["oracle"]})
                rows[names[2]].append(base["single"])
                rows[names[3]].append(base["restarts"])
                print(f"  {dataset} seed {seed}: {arena['steps']:,} steps ({arena['pair_steps']:,} train-pair + "
                      f"{arena['cross_steps']:,} cross-train), arena {arena['seconds']:.0f}s | fitness pick "
                      f"{quality_text(arena['fitness'])} | oracle pick {quality_text(arena['oracle'])} | single "
                      f"{quality_text(base['single']['quality'])} ({base['single']['seconds']:.0f}s) | best of "
                      f"{args.restarts} {quality_text(base['restarts']['quality'])} ({base['restarts']['seconds']:.0f}s) "
                      f"[{time.perf_counter() - started:.0f}s]", flush=True)
            tables.append((dataset, table(dataset, rows)))
            if dataset == "ring":
                ring_modes = (statistics.fmean(r["quality"]["modes_covered"] for r in rows[names[0]]),
                              statistics.fmean(r["quality"]["modes_covered"] for r in rows[names[2]]))

    for dataset, text in tables:
        title = "8 Gaussians on a ring" if dataset == "ring" else "8x8 digits"
        print(f"\n### {title} ({SPECS[dataset].relative_to(ROOT)}): mean ± std over {args.seeds} seeds\n")
        print(text)
    print(f"\nArena (oracle pick) and best of {args.restarts} restarts pick their generator with the quality metric "
          "(on check samples, then scored on the report samples); arena (fitness pick) uses the arena's fitness only.")
    print(f"Total {time.perf_counter() - started:.0f}s.")
    if ring_modes is None:
        return 0
    arena_modes, single_modes = ring_modes
    met = arena_modes >= single_modes
    print(f"{'BAR MET' if met else 'BAR MISSED'}: on the ring the arena's fitness-picked generator covers "
          f"{arena_modes:.2f} modes on average, the single GAN {single_modes:.2f} (bar: arena >= single)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
