"""How long it takes to build a child genome: from its cached parent, and from scratch.

DESIGN invariant 3: a child whose parent is cached costs one delta, whatever the generation.
For two networks (seed 003's memorization net, ~606K parameters, and the same with a 4096-wide
hidden layer, ~4.3M) and lineages 1, 10, 100 and 500 generations deep, this measures:

  cached      Materializer.build(child) with the parent in the ParentCache: copy the parent,
              apply one Gaussian delta (each repetition builds a new child of the same parent)
  full chain  the same child on an empty cache: initialize from the seed, replay every delta
  copy        one plain copy of the parameters, flat.clone(): the floor for any build

on one CPU thread, as the median of several repetitions after warm-up calls, all within one run.
Before each timed repetition the CPU caches are flushed (a 128 MiB buffer is written), as they are
on a worker that evaluates networks between builds: otherwise the copy reads a parent that sits in
L3 while the child must also read a slice of the 64 MiB noise table at a random offset, which no
cache holds. The last column repeats the cached/copy ratio with warm caches, for reference.

The bars, at depth 500 for both networks, on the cache-flushed figures: a cached child is at
least 100x faster than the full chain, and costs at most 3x one plain copy. Exits 1 naming the
bar that failed, else prints PASS.

    python bench/materialize.py            # ~20 s
    python bench/materialize.py --quick    # fewer repetitions, ~10 s

The noise table (seed 1234, 2**24 samples, 64 MiB) is built once into $EVOARENA_NOISE_DIR
(default ~/.cache/evoarena/noise) and reused.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from evoarena.encoding import nets
from evoarena.encoding.genome import Genome, founder, mutate, sample_delta
from evoarena.encoding.materialize import Materializer, ParentCache
from evoarena.encoding.noise import NoiseTable, open_noise
from evoarena.settings import Settings

CONVS = [{"channels": 32, "kernel": 8, "stride": 4}, {"channels": 64, "kernel": 4, "stride": 2}, {"channels": 64, "kernel": 3, "stride": 1}]
NETWORKS = {
    "memorize (606K)": nets.convnet([3, 64, 64], CONVS, [512], 10),
    "wide (4.3M)": nets.convnet([3, 64, 64], CONVS, [4096], 10),
}
DEPTHS = (1, 10, 100, 500)
SIGMA = 0.02
BAR_DEPTH, MIN_SPEEDUP, MAX_OVER_COPY = 500, 100.0, 3.0


_FLUSH = torch.zeros(32 * 2**20)  # 128 MiB, more than the last-level cache one core sees


def median_ms(fn, repeats: int, cold: bool = True, warmups: int = 3) -> float:
    """Median wall time of `fn` over `repeats` calls after `warmups` untimed ones; `cold` flushes the CPU caches first.

    The warm-ups let the allocator settle: the first large allocations of a process are fresh pages
    (about 1 ms of page faults per 2.4 MB), later ones reuse freed memory, as on a running worker."""
    for _ in range(warmups):
        fn()
    times = []
    for _ in range(repeats):
        if cold:
            _FLUSH.add_(1.0)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def lineage(arch: dict, depth: int, noise: NoiseTable, rng: np.random.Generator) -> list[Genome]:
    lay = nets.layout(arch)
    genomes = [founder(arch, 0)]
    for _ in range(depth):
        genomes.append(mutate(genomes[-1], sample_delta(rng, "gaussian", SIGMA, 0.0, lay, noise.size)))
    return genomes


def bench_network(arch: dict, noise: NoiseTable, quick: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    lay = nets.layout(arch)
    genomes = lineage(arch, max(DEPTHS) - 1, noise, rng)
    walker = Materializer(noise, ParentCache(4 * lay.size * 4))  # builds each parent from the previous one
    rows = []
    for depth in DEPTHS:
        parent = genomes[depth - 1]
        parent_weights = walker.build(parent)

        # Cached: the parent and one child fit; each build evicts the previous child (LRU), as on a worker.
        def cached_child(repeats: int, cold: bool) -> float:
            m = Materializer(noise, ParentCache(2 * parent_weights.nbytes))
            m.cache.put(parent.id, parent_weights.clone())
            children = iter([mutate(parent, sample_delta(rng, "gaussian", SIGMA, 0.0, lay, noise.size)) for _ in range(repeats + 3)])
            ms = median_ms(lambda: m.build(next(children)), repeats, cold)
            assert m.stats.from_parent == m.stats.builds and m.stats.deltas_applied == m.stats.builds
            return ms

        repeats = 8 if quick else 30
        cached_ms, hot_cached_ms = cached_child(repeats, cold=True), cached_child(repeats, cold=False)
        flat = parent_weights.flat
        copy_ms, hot_copy_ms = median_ms(flat.clone, repeats, cold=True), median_ms(flat.clone, repeats, cold=False)

        child = mutate(parent, sample_delta(rng, "gaussian", SIGMA, 0.0, lay, noise.size))
        full_repeats = (1 if depth >= 100 else 3) if quick else (3 if depth >= 500 else 5)
        full_ms = median_ms(lambda: Materializer(noise, ParentCache(0)).build(child), full_repeats, warmups=1)

        # The two paths must agree bit for bit (DESIGN invariant 2), or the timing means nothing.
        via_parent = Materializer(noise, ParentCache(2 * parent_weights.nbytes))
        via_parent.cache.put(parent.id, parent_weights)
        if not torch.equal(via_parent.build(child).flat, Materializer(noise, ParentCache(0)).build(child).flat):
            sys.exit(f"FAIL: depth {depth}: the cached and the full-chain builds of one child differ")
        rows.append({"depth": depth, "cached": cached_ms, "full": full_ms, "copy": copy_ms, "hot": hot_cached_ms / hot_copy_ms})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (one full chain per deep lineage)")
    parser.add_argument("--noise-dir", type=Path, default=Settings.from_env().noise_dir,
                        help="where the noise table is cached (default: $EVOARENA_NOISE_DIR or ~/.cache/evoarena/noise)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    noise = open_noise(1234, 2**24, args.noise_dir)
    float(noise.tensor().sum())  # fault the whole table into memory, as on a worker that has been running

    header = f"{'network':<18} {'params':>9} {'depth':>5} {'cached ms':>10} {'full-chain ms':>14} {'speedup':>8} {'copy ms':>8} {'cached/copy':>11} {'warm caches':>11}"
    print(f"torch {torch.__version__}, 1 thread, {'quick' if args.quick else 'full'} run; times are medians, caches flushed")
    print(header)
    print("-" * len(header))
    failures = []
    for name, arch in NETWORKS.items():
        size = nets.layout(arch).size
        for row in bench_network(arch, noise, args.quick):
            speedup, over_copy = row["full"] / row["cached"], row["cached"] / row["copy"]
            print(
                f"{name:<18} {size:>9,} {row['depth']:>5} {row['cached']:>10.3f} {row['full']:>14.1f}"
                f" {speedup:>7.0f}x {row['copy']:>8.3f} {over_copy:>10.2f}x {row['hot']:>10.2f}x",
                flush=True,
            )
            if row["depth"] == BAR_DEPTH:
                if speedup < MIN_SPEEDUP:
                    failures.append(f"FAIL: {name} depth {BAR_DEPTH}: cached child only {speedup:.0f}x faster than the full chain (bar: {MIN_SPEEDUP:.0f}x)")
                if over_copy > MAX_OVER_COPY:
                    failures.append(f"FAIL: {name} depth {BAR_DEPTH}: cached child costs {over_copy:.2f}x one plain copy (bar: {MAX_OVER_COPY:.0f}x)")
    print()
    for line in failures:
        print(line)
    if failures:
        return 1
    print(f"PASS: at depth {BAR_DEPTH}, a cached child is >= {MIN_SPEEDUP:.0f}x faster than the full chain and <= {MAX_OVER_COPY:.0f}x one copy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
