"""The GA against particle swarm optimisation at an equal number of evaluations (issue 12 part 4).

Row format (shared with bench/ga_vs_pso_ring.py, whose `run_ring_meta(seeds)` returns rows of
this form for the ring arena's meta-parameters): one plain dict per (problem, algorithm):

    {
      "problem": "memorize-64",          # or "ring-meta"
      "algorithm": "ga",                 # or "pso"
      "fitness": "points memorized",     # what the fitness figures below are (higher is better)
      "evaluations": 2048,               # evaluations per run; equal for both algorithms of a problem
      "curve": {256: [f_seed0, f_seed1, ...], 512: [...], ...},
                                         # best fitness found so far after that many evaluations,
                                         # one value per seed (same seeds, same order, every count)
      "wall_s": [s_seed0, s_seed1, ...], # wall time of each seed's run, seconds
      "message_bytes": [b, ...],         # bytes of the JSON of every task payload sent (or a sample)
    }

(bench/ga_vs_pso_ring.py gives "evaluations" as one count per seed; both forms are read.) The
table prints, per row, the median and [min, max] over seeds at each evaluation count (about every
quarter of the run where a curve has more than six), the median wall time and the median and
largest message per task; the plot draws every count.

The memorize half: experiments/memorize-64.yaml's problem, network and fitness (64 random images,
narrow network, fitness memorized_margin) for the GA with that file's setting (8 parents x 4
children + 1 elite: 33 evaluations a generation), and experiments/pso-memorize-64.yaml's swarm
with 33 particles, so a generation and a swarm step cost the same 33 evaluations and both run
`--steps` of them. For each seed s both run with `seed` and `problem.data_seed` = s (the same data
for both) on a fresh SQLite store, in this process (InlineExecutor), one network at a time (no
batched evaluation for either: PSO has none). Fitness in the table: points memorized (of 64), the
most over every evaluation so far. Message bytes: `task_bytes` of every task payload the master
sent (json.dumps as Celery's JSON serializer writes it).

Bar (exit 1 when missed): for every problem, both algorithms ran the same evaluations on every seed
and the table printed; PSO's largest message per task is under 4096 bytes.

    python bench/ga_vs_pso.py                              # memorize half, 5 seeds x 80 steps (about 6 min on 2 cores)
    python bench/ga_vs_pso.py --plot docs/ga_vs_pso.png --ring   # and the ring half (other file)
    python bench/ga_vs_pso.py --seeds 1 --steps 3          # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from evoarena import scheduler
from evoarena.worker.inline import InlineExecutor
from evoarena.settings import Settings
from evoarena.spec.experiment import ExperimentSpec, parse_spec
from evoarena.store import open_store
from evoarena.worker.worker import WorkerConfig

ROOT = Path(__file__).resolve().parent.parent
GA_FILE = ROOT / "experiments" / "memorize-64.yaml"
PSO_FILE = ROOT / "experiments" / "pso-memorize-64.yaml"
PER_STEP = 33  # the GA's 8 x 4 children + 1 elite; the swarm gets as many particles
MESSAGE_BAR = 4096  # bytes of one task's JSON: issue 12's bar for PSO


def task_bytes(task: dict) -> int:
    """What one task costs on the wire, in bytes: its JSON as Celery's JSON serializer writes it. That
    serializer is kombu.utils.json.dumps (kombu 5.7), json.dumps with no separators given, so Python's
    defaults ", " and ": "; bench/message.py counts the same. Both GA-vs-PSO benches (this file and
    bench/ga_vs_pso_ring.py) and bench/pso_encoding.py measure with this function."""
    return len(json.dumps(task).encode())


class Measured:
    """An executor that records the size of every task payload it is given to send."""

    def __init__(self, inner):
        self.inner, self.sizes = inner, []

    def map(self, op, tasks):
        self.sizes += [task_bytes(t) for t in tasks]
        return self.inner.map(op, tasks)

    def close(self):
        self.inner.close()


def memorize_spec(algorithm: str, seed: int, steps: int) -> ExperimentSpec:
    doc = yaml.safe_load((GA_FILE if algorithm == "ga" else PSO_FILE).read_text())
    doc["name"] = f"ga-vs-pso-{algorithm}-{seed}"
    doc["seed"] = doc["problem"]["data_seed"] = seed
    if algorithm == "ga":
        doc["ga"]["generations"] = steps
    else:
        doc["pso"].update(steps=steps, particles=PER_STEP)
    return parse_spec(doc, f"{doc['name']}")


def run_memorize(algorithm: str, seed: int, steps: int) -> dict:
    """One run on a fresh store in this process: points memorized (best so far) after each step,
    evaluations per step, wall time and every task's message size."""
    spec = memorize_spec(algorithm, seed, steps)
    with tempfile.TemporaryDirectory() as tmp:
        config = WorkerConfig(f"sqlite:///{tmp}/bench.db", f"{tmp}/artifacts", str(Settings.from_env().noise_dir),
                              spec.executor.cache_mb << 20, threads=1)
        store, executor = open_store(config.store_url), Measured(InlineExecutor(config))
        started = time.perf_counter()
        try:
            scheduler.run(spec, store, executor)
            wall = time.perf_counter() - started
            best, memorized, evaluations = 0, [], []
            for index in range(steps):
                docs = store.find_results(spec.name, generation=index, op="evaluate")
                best = max([best] + [d["metrics"]["memorized"] for d in docs if d.get("metrics")])
                memorized.append(best)
                evaluations.append(len(docs))
        finally:
            executor.close()
            store.close()
    return {"memorized": memorized, "evaluations": evaluations, "wall_s": wall, "message_bytes": executor.sizes}


def shown(counts: list[int]) -> list[int]:
    """The evaluation counts the table shows: all of up to six, else about every quarter and the last."""
    counts = sorted(counts)
    if len(counts) <= 6:
        return counts
    return sorted({counts[max(0, round(len(counts) * q / 4) - 1)] for q in (1, 2, 3, 4)})


def memorize_rows(seeds: list[int], steps: int, progress=print) -> list[dict]:
    """The memorize half: one row per algorithm, in the module docstring's format."""
    rows = []
    for algorithm in ("ga", "pso"):
        row = {"problem": "memorize-64", "algorithm": algorithm, "fitness": "points memorized (of 64)",
               "evaluations": [], "curve": {}, "wall_s": [], "message_bytes": []}
        for seed in seeds:
            run = run_memorize(algorithm, seed, steps)
            for k in range(1, steps + 1):  # after every step
                row["curve"].setdefault(sum(run["evaluations"][:k]), []).append(run["memorized"][k - 1])
            row["evaluations"].append(sum(run["evaluations"]))
            row["wall_s"].append(run["wall_s"])
            row["message_bytes"] += run["message_bytes"]
            progress(f"  {algorithm} seed {seed}: {run['memorized'][-1]} points memorized after "
                     f"{sum(run['evaluations'])} evaluations, {run['wall_s']:.0f}s", flush=True)
        rows.append(row)
    return rows


def per_seed(row: dict) -> list[int]:
    """Evaluations of each seed's run (a row may give one count for all)."""
    e = row["evaluations"]
    return list(e) if isinstance(e, list) else [e] * len(row["wall_s"])


def spread(values: list[float], form: str = ".4g") -> str:
    return f"{statistics.median(values):{form}} [{min(values):{form}}, {max(values):{form}}]"


def print_table(rows: list[dict]) -> None:
    for problem in dict.fromkeys(r["problem"] for r in rows):
        mine = [r for r in rows if r["problem"] == problem]
        counts = shown(list({int(c) for r in mine for c in r["curve"]}))
        print(f"\n{problem}: best {mine[0]['fitness']} after n evaluations, median [min, max] over "
              f"{len(mine[0]['wall_s'])} seeds")
        header = f"{'algorithm':<10}" + "".join(f"{'n = ' + str(c):>22}" for c in counts)
        print(header + f"{'wall s':>22}{'msg bytes median':>18}{'msg bytes max':>15}")
        for r in mine:
            curve = {int(c): v for c, v in r["curve"].items()}
            cells = "".join(f"{spread(curve[c]) if c in curve else '-':>22}" for c in counts)
            print(f"{r['algorithm']:<10}" + cells + f"{spread(r['wall_s'], '.1f'):>22}"
                  f"{statistics.median(r['message_bytes']):>18.0f}{max(r['message_bytes']):>15}")


def bar(rows: list[dict]) -> list[str]:
    """What misses the bar: unequal budgets within a problem, a PSO message of 4 KiB or more."""
    missed = []
    for problem in dict.fromkeys(r["problem"] for r in rows):
        budgets = {r["algorithm"]: per_seed(r) for r in rows if r["problem"] == problem}
        if len({tuple(b) for b in budgets.values()}) != 1 or len(budgets) < 2:
            missed.append(f"{problem}: the algorithms ran different budgets: {budgets}")
    for r in rows:
        if r["algorithm"] == "pso" and max(r["message_bytes"]) >= MESSAGE_BAR:
            missed.append(f"{r['problem']}: a PSO task message of {max(r['message_bytes'])} bytes (bar: < {MESSAGE_BAR})")
    return missed


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = list(dict.fromkeys(r["problem"] for r in rows))
    fig, axes = plt.subplots(1, len(problems), figsize=(6 * len(problems), 4), squeeze=False)
    for ax, problem in zip(axes[0], problems):
        for i, r in enumerate(r for r in rows if r["problem"] == problem):
            curve = sorted((int(c), v) for c, v in r["curve"].items())
            x = [c for c, _ in curve]
            ax.plot(x, [statistics.median(v) for _, v in curve], marker="o" if len(x) <= 10 else None, color=f"C{i}",
                    label=f"{r['algorithm']} (median of {len(r['wall_s'])} seeds)")
            ax.fill_between(x, [min(v) for _, v in curve], [max(v) for _, v in curve], color=f"C{i}", alpha=0.2)
        ax.set_xlabel("evaluations")
        ax.set_ylabel(next(r["fitness"] for r in rows if r["problem"] == problem), fontsize=8)
        ax.set_title(f"{problem}: GA vs PSO (band: min-max over seeds)", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per algorithm (default 5: seeds 0 .. 4)")
    parser.add_argument("--steps", type=int, default=80, help=f"generations or swarm steps of {PER_STEP} evaluations (default 80)")
    parser.add_argument("--ring", action="store_true", help="also run the ring arena's meta-parameters (bench/ga_vs_pso_ring.py)")
    parser.add_argument("--plot", type=Path, help="write best fitness against evaluations to this PNG")
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    print(f"memorize-64: GA ({GA_FILE.name}) vs PSO ({PSO_FILE.name}, {PER_STEP} particles), {args.steps} steps "
          f"of {PER_STEP} evaluations, seeds {seeds}", flush=True)
    started = time.perf_counter()
    rows = memorize_rows(seeds, args.steps)
    print(f"memorize half: {time.perf_counter() - started:.0f}s", flush=True)
    if args.ring:
        from ga_vs_pso_ring import run_ring_meta  # bench/ is on sys.path when this file runs as a script

        rows += run_ring_meta(seeds)
    print_table(rows)
    if args.plot:
        plot(rows, args.plot)
    missed = bar(rows)
    for line in missed:
        print(f"FAIL: {line}")
    if not missed:
        print(f"PASS: equal evaluations per seed for both algorithms on every problem; PSO's largest task message "
              f"{max(max(r['message_bytes']) for r in rows if r['algorithm'] == 'pso')} bytes (< {MESSAGE_BAR})")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

