"""Why the arena loses to one GAN: the arena as it was before issue 19, then one part removed or changed at a time.

"Today's arena" is experiments/arena-ring.yaml's arena section (2 players x (2 generators + 2
discriminators), 8 rounds of 500 train-pair steps and 20 cross-train steps, selection of half, with
architecture, meta-parameter and crossover variation, seed001 fitness) on the data set's file
(`--dataset grid`: experiments/arena-grid.yaml; `mnist`: experiments/arena-mnist.yaml), whose problem
and networks it keeps. Every variant runs it with `seed: s` for s = 0 .. `--seeds`-1, through
bench/arena_vs_single.py's `run_arena` (a fresh SQLite store, a LocalExecutor with `--workers`
processes; outputs scored on the report samples). The variants keep the TOTAL gradient steps within a
few per cent: "no cross-train", the topologies and "pairs" move the steps between pairs by scaling
`train_steps`.

    as filed              today's arena
    no arch mutation      variation.arch_rate 0
    no meta mutation      variation.meta_rate 0
    no cross-train        cross_train_steps 0 (its steps go to train-pair instead)
    no selection          survivors 1: every member survives, nothing reproduces
    fitness <kind>        each other fitness kind (seed001, host_pathogen, elo) and generators ranked by mmd
    topology <t>          players, torus, round_robin (one generator and discriminator per player)
    <n> pairs             the steps shared between n pairs instead (players n, one pair each, no selection)

It prints one row per variant: the mixture's and the fitness pick's quality, mean ± std over the
seeds, and each variant's steps. There is no bar: it explains, it does not guard.

    python bench/arena_ablation.py --dataset grid --seeds 5            # the whole ablation on the grid
    python bench/arena_ablation.py --dataset grid --seeds 2 --rounds 2 --variants "as filed" "no selection"   # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import yaml
from arena_vs_single import EXPERIMENTS, arena_spec, columns, run_arena  # the arena run and its scoring, shared

from evoarena.worker.arena_ops import models_dir
from evoarena.evolve.population import quality_text
from evoarena.settings import Settings


TODAY = ("rounds", "players", "generators", "discriminators", "train_steps", "chunk_steps", "cross_train_steps",
         "fitness", "survivors", "variation", "topology", "selection", "speciation")


def today(rounds: int | None) -> dict:
    """arena-ring.yaml's arena fields of TODAY: the arena before issue 19."""
    arena = yaml.safe_load((EXPERIMENTS / "arena-ring.yaml").read_text())["arena"]
    out = {k: arena[k] for k in TODAY if k in arena}
    out.setdefault("topology", "players")
    out["fitness"] = {**out.get("fitness", {}), "generators": "arena"}
    out["survivors"] = out.get("survivors", 0.5)
    if rounds is not None:
        out["rounds"] = rounds
    return out


def variants(dataset: str, rounds: int | None) -> dict[str, dict]:
    """{name: arena fields to set} for each variant of the module docstring (today's fields, then the change)."""
    base = today(rounds)
    a = arena_spec(dataset, 0, None, base).arena
    pairs_now = a.players * min(a.generators, a.discriminators)
    per_round = pairs_now * a.train_steps + a.cross_train_steps * a.players * (a.generators + a.discriminators)
    out = {"as filed": {}, "no arch mutation": {"variation.arch_rate": 0.0},
           "no meta mutation": {"variation.meta_rate": 0.0},
           "no cross-train": {"cross_train_steps": 0, "train_steps": per_round // pairs_now},
           "no selection": {"survivors": 1.0}}
    for kind in ("seed001", "host_pathogen", "elo"):
        if kind != a.fitness.kind:
            out[f"fitness {kind}"] = {"fitness.kind": kind}
    out["generators ranked by " + ("arena" if a.fitness.generators == "mmd" else "mmd")] = {
        "fitness.generators": "arena" if a.fitness.generators == "mmd" else "mmd"}
    one_each = {"generators": 1, "discriminators": 1, "schedule": [], "cross_train_steps": 0}
    for topology in ("players", "torus", "round_robin"):
        if topology != a.topology:
            out[f"topology {topology}"] = {**one_each, "topology": topology, "players": 4,
                                           "train_steps": per_round // 4}
    for n in (1, 2, 4, 8):
        out[f"{n} pairs"] = {**one_each, "topology": "players", "players": n, "survivors": 1.0,
                             "train_steps": per_round // n}
    return {name: {**base, **fields} for name, fields in out.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="grid", choices=["grid", "mnist"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=None, help="arena rounds (default: the file's)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--variants", nargs="*", help="run only these (names as printed)")
    args = parser.parse_args()
    noise_dir = str(Settings.from_env().noise_dir)
    cache_dir = str(models_dir(noise_dir))
    chosen = variants(args.dataset, args.rounds)
    if args.variants:
        unknown = sorted(set(args.variants) - set(chosen))
        if unknown:
            parser.error(f"unknown variants {unknown}; known: {list(chosen)}")
        chosen = {k: v for k, v in chosen.items() if k in args.variants}
    keys = columns(args.dataset)
    started = time.perf_counter()
    rows = []
    for name, fields in chosen.items():
        runs = []
        for seed in range(args.seeds):
            spec = arena_spec(args.dataset, seed, None, fields)
            run = run_arena(spec, args.workers, noise_dir, cache_dir)
            runs.append(run)
            print(f"  {name:<28} seed {seed}: {run['steps']:,} steps | mixture {quality_text(run.get('mixture', {}))} | "
                  f"best {quality_text(run['fitness'])} [{time.perf_counter() - started:.0f}s]", flush=True)
        rows.append((name, fields, runs))

    print(f"\n### Ablation on {args.dataset}: mean ± std over {args.seeds} seeds (mixture output | fitness pick)\n")
    head = ["variant", "steps", *(f"{label} ({who})" for label, _, _ in keys for who in ("mixture", "best"))]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for name, fields, runs in rows:
        cells = [name, f"{statistics.fmean(r['steps'] for r in runs):,.0f}"]
        for _, key, digits in keys:
            mix = [r["mixture"][key] for r in runs if "mixture" in r]
            best = [r["fitness"][key] for r in runs]
            cells += [_mean_sd(mix, digits), _mean_sd(best, digits)]
        print("| " + " | ".join(cells) + " |")
    print(f"\nTotal {time.perf_counter() - started:.0f}s.")
    return 0


def _mean_sd(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
