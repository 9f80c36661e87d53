"""What the span encoding of a particle costs (issue 12 part 2): the task message and the build.

A particle is the founder plus one span delta (genome.py): K coefficients and one direction seed.
On the network of experiments/pso-memorize-64.yaml (the narrow memorize-64 network, 23k weights)
this prints, for K = 16, 64 and 256 directions:

  message     bytes of the evaluate task the master sends for each particle of step 0
              (`bench/ga_vs_pso.py: task_bytes`, json.dumps as Celery writes it): median and largest
  build       time to build a particle from the cached founder (one span delta: K reads of the
              noise table, summed in float64), against a GA child from its cached parent (one
              whole-network gaussian delta), median over `--repeat` builds of distinct genomes
  evaluate    for scale, the median time of a whole evaluate task of a particle in this process
              (build + 64 images forward + scoring)

Bar (exit 1 when missed): the task message at the file's K (64) is under 4096 bytes.

    python bench/pso_encoding.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from evoarena import scheduler
from evoarena.evolve.pso import PSO
from evoarena.worker.inline import InlineExecutor
from evoarena.encoding.genome import Delta, mutate
from evoarena.encoding.materialize import Materializer, ParentCache
from evoarena.encoding.nets import layout
from evoarena.encoding.noise import open_noise
from evoarena.settings import Settings
from evoarena.spec.experiment import parse_spec
from evoarena.store import open_store
from evoarena.worker.worker import WorkerConfig
from ga_vs_pso import MESSAGE_BAR, task_bytes

ROOT = Path(__file__).resolve().parent.parent
PSO_FILE = ROOT / "experiments" / "pso-memorize-64.yaml"


def spec_with(directions: int):
    doc = yaml.safe_load(PSO_FILE.read_text())
    doc["name"] = f"pso-encoding-{directions}"
    doc["pso"]["directions"] = directions
    return parse_spec(doc, f"{PSO_FILE} (K = {directions})")


def median_ms(seconds: list[float]) -> float:
    return 1000 * statistics.median(seconds)


def build_times(algo: PSO, materializer: Materializer, repeat: int) -> tuple[list[float], list[float]]:
    """Seconds to build `repeat` distinct particles, and `repeat` distinct gaussian children, from the cached founder."""
    materializer.build(algo.founder)
    rng = np.random.default_rng(0)
    k, n = algo.spec.pso.directions, layout(algo.founder.arch).size
    span_s, gaussian_s = [], []
    for _ in range(repeat):
        particle = algo.particle(rng.uniform(-1, 1, k))
        child = mutate(algo.founder, Delta("gaussian", int(rng.integers(0, materializer.noise.size - n)), 0.02))
        for genome, into in ((particle, span_s), (child, gaussian_s)):
            started = time.perf_counter()
            _, how = materializer.build_how(genome)
            into.append(time.perf_counter() - started)
            assert how == "from_parent", how
    return span_s, gaussian_s


def evaluate_times(spec, tmp: str) -> list[float]:
    """Seconds of each whole evaluate task of step 0's particles, in this process."""
    config = WorkerConfig(f"sqlite:///{tmp}/bench.db", f"{tmp}/artifacts", str(Settings.from_env().noise_dir),
                          spec.executor.cache_mb << 20, threads=1)
    store, executor = open_store(config.store_url), InlineExecutor(config)
    scheduler.register(spec, store)
    tasks = PSO(spec).plan(0, None).tasks
    seconds, started = [], time.perf_counter()
    for _ in executor.map("evaluate", tasks):
        seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
    store.close()
    return seconds[1:]  # the first also builds the founder and loads the data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200, help="builds of each kind (default 200)")
    args = parser.parse_args()
    noise_dir = Settings.from_env().noise_dir
    print(f"span encoding on {PSO_FILE.name}'s network; builds: median over {args.repeat} distinct genomes, "
          "from the cached founder or parent")
    print(f"{'K':>5}{'msg median':>12}{'msg max':>9}{'span build ms':>15}{'gaussian ms':>13}{'ratio':>7}"
          f"{'evaluate ms':>13}")
    sizes = {}
    for k in (16, 64, 256):
        spec = spec_with(k)
        algo = PSO(spec)
        messages = [task_bytes(t) for t in algo.plan(0, None).tasks]
        sizes[k] = max(messages)
        noise = open_noise(spec.noise.seed, spec.noise.size, noise_dir)
        span_s, gaussian_s = build_times(algo, Materializer(noise, ParentCache(1 << 28)), args.repeat)
        with tempfile.TemporaryDirectory() as tmp:
            evaluate_s = evaluate_times(spec, tmp)
        print(f"{k:>5}{statistics.median(messages):>12.0f}{max(messages):>9}{median_ms(span_s):>15.3f}"
              f"{median_ms(gaussian_s):>13.3f}{statistics.median(span_s) / statistics.median(gaussian_s):>7.1f}"
              f"{median_ms(evaluate_s):>13.2f}", flush=True)
    n = layout(PSO(spec_with(64)).founder.arch).size
    print(f"({n} weights; a span delta reads K slices of {n} noise samples, a gaussian delta one)")
    if sizes[64] >= MESSAGE_BAR:
        print(f"FAIL: a K = 64 particle's task is {sizes[64]} bytes (bar: < {MESSAGE_BAR})")
        return 1
    print(f"PASS: a K = 64 particle's task is at most {sizes[64]} bytes (< {MESSAGE_BAR})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
