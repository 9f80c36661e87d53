"""Atari as in Such et al. 2017: emulator frames/s per worker, and the GA's score against frames.

1. Frames per second of one worker (one process, one torch thread) playing the paper's network
   on Frostbite, episodes capped at `--cap` frames, counted as the paper counts them (every
   emulator frame, skipped ones and no-ops included):
     one by one        each episode alone: one forward pass per step for one observation
     batched episodes  each network's episodes in lockstep: one forward pass per step for all of them
     batched networks  every episode of every network in lockstep: one forward pass per step for
                       all of them, each network on its own episodes' frames (batched.runner, own)
   Each is given as frames per wall second and per CPU second of the process; the second is what
   the bars use, because the wall clock of a machine shared with other work says more about the
   others than about the code. `--repeats` repetitions each play the three ways in a rotating
   order; a way's ratio is the median over repetitions of its frames per CPU second over one by
   one's in the same repetition, so a neighbour's load on one repetition cancels.
2. A small GA run: experiments/atari-frostbite.yaml (2 workers) with its frame budget set to
   `--frames`, printing per generation the frames played and the elite's mean return over its
   re-evaluation episodes; then a random policy (uniform random actions) on the same capped
   episodes; then the paper's figure for its own budget of 1 billion frames, labelled as such.
   `--frames 2000000` is the experiment file's own budget (the full run).

Bars (exit 1 when one is missed):
- batched episodes and batched networks are each no slower than one by one (frames per CPU
  second, ratio >= 1.0). One network's episodes share a forward pass, so its weights are read
  once per step for all of them; several networks' convolutions run as one grouped convolution in
  oneDNN's blocked layout, their kernels laid out once per set of live networks (batched.py).
  The dense layer gains nothing on a CPU (a matrix-vector product per network, bound by reading
  its 6.4 MB of weights); the larger gain is a GPU's, which this bench does not measure;
- the GA's last elite scores more than the random policy's mean over the same capped episodes.

    python bench/atari.py                    # ~5 min on 2 busy cores: throughput, 150k frames of GA, random policy
    python bench/atari.py --frames 2000000   # the whole experiments/atari-frostbite.yaml (~15 min on 2 cores)
    python bench/atari.py --throughput-only --device cuda --networks 16   # part 1 on a GPU (scripts/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from evoarena.encoding import arithmetic, nets
from evoarena.problems import atari
from evoarena.spec.experiment import load_spec

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = ROOT / "experiments" / "atari-frostbite.yaml"
NETWORKS, EPISODES = 4, 2  # throughput: 4 networks x 2 episodes each
REPEATS = 3  # throughput repetitions, each playing the three ways
MIN_RATIO = 1.0  # batched episodes, and batched networks, over one by one: frames per CPU second
PAPER_FIGURE = "paper figure: see Table 1 of Such et al. 2017 (GA, 1 billion frames)"
"""The paper's GA score on Frostbite. Not a number: the search tool found no copy of Table 1 to
check one against, and a figure quoted from memory is not a figure."""


def throughput(problem: dict, repeats: int, device: str = "cpu", networks: int = NETWORKS) -> dict[str, tuple[float, float, float]]:
    """(frames per wall second, frames per CPU second, ratio to one by one) of each way of
    playing `networks` networks x EPISODES episodes on `device`: medians over `repeats`
    interleaved repetitions. The ratio is of frames per CPU second on a CPU, per wall second on
    a GPU (whose work the process's CPU time does not count)."""
    torch.set_num_threads(1)
    arithmetic.pin_gpu()  # as a worker does (Worker.__init__): IEEE float32 on a GPU, not TF32
    arch = atari.architecture(problem, load_spec(EXPERIMENT).network.model_dump(mode="json"))
    flats = []
    for seed in range(networks):
        flat = torch.empty(nets.layout(arch).size)
        nets.init_layers(arch, seed, flat)
        flats.append(flat.to(device))
    seeds = [[100 * n + e for e in range(EPISODES)] for n in range(networks)]
    data = atari.make_data(problem, device)
    data.take(networks * EPISODES)  # the environments exist before any clock starts
    by = 0 if device.startswith("cuda") else 1  # the rate a ratio compares: wall on a GPU, CPU time on a CPU
    ways = {
        "one by one": lambda: [atari.play(arch, [f], [[s]], data) for f, own in zip(flats, seeds) for s in own],
        "batched episodes": lambda: [atari.play(arch, [f], [own], data) for f, own in zip(flats, seeds)],
        "batched networks": lambda: [atari.play(arch, flats, seeds, data)],
    }
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for r in range(repeats):
        for name in list(ways)[r % 3:] + list(ways)[: r % 3]:
            wall, cpu = time.perf_counter(), time.process_time()
            played = ways[name]()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            frames = sum(e.frames for call in played for per_net in call for e in per_net)
            rates[name].append((frames / wall, frames / cpu))
    out = {}
    for name, rows in rates.items():
        ratio = statistics.median(row[by] / one[by] for row, one in zip(rows, rates["one by one"]))
        out[name] = (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows), ratio)
        print(f"  {name:<17} {out[name][0]:8.0f} frames/s wall  {out[name][1]:8.0f} frames/CPU-s  {ratio:5.2f}x one by one  "
              f"({frames} frames a repetition)", flush=True)
    return out


def random_policy(problem: dict, episodes: int) -> list[float]:
    """Returns of uniformly random actions on `episodes` capped episodes (seeds as a task's)."""
    env = atari.make_env(problem)
    returns = []
    for seed in atari.episode_seeds(problem, 0, "random-policy", episodes):
        rng = np.random.default_rng(seed)
        env.reset(seed=seed)
        total, over = 0.0, False
        while not over:
            _, reward, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
            total, over = total + float(reward), terminated or truncated
        returns.append(total)
    env.close()
    return returns


def run_ga(frames: int, workers: int) -> tuple[list[dict], float]:
    """experiments/atari-frostbite.yaml with frame budget `frames`, on a fresh store: its generation
    docs and the wall seconds it took."""
    # imported here: part 1 alone (--throughput-only) needs no store, broker or S3 client, so it
    # runs where only torch, gymnasium, ale-py and pydantic are installed (a GPU machine: scripts/gpu_check.sh)
    from evoarena import scheduler
    from evoarena.fleet.executor import LocalExecutor
    from evoarena.settings import Settings
    from evoarena.store import open_store
    from evoarena.worker.worker import WorkerConfig

    spec = load_spec(EXPERIMENT)
    spec = spec.model_copy(update={"ga": spec.ga.model_copy(update={"frame_budget": frames})})
    with tempfile.TemporaryDirectory() as tmp:
        config = WorkerConfig(f"sqlite:///{tmp}/bench.db", f"{tmp}/artifacts", str(Settings.from_env().noise_dir),
                              spec.executor.cache_mb << 20)
        store, executor = open_store(config.store_url), LocalExecutor(config, workers)
        started = time.perf_counter()

        def show(p: scheduler.Progress) -> None:
            s = store.get_generation(spec.name, p.generation)["stats"]
            elite = f"{s['elite']:7.1f}" if "elite" in s else "      -"
            print(f"  gen {p.generation:>3}  frames {s['frames_total']:>9,}  elite (mean of {spec.ga.elite_episodes}) {elite}  "
                  f"best single episode {s['best']:6.1f}  mean {s['mean']:6.1f}  ({time.perf_counter() - started:.0f}s)",
                  flush=True)

        try:
            scheduler.run(spec, store, executor, on_progress=show)
            docs = store.list_generations(spec.name)
        finally:
            executor.close()
            store.close()
    wall = time.perf_counter() - started
    print(f"  => {docs[-1]['stats']['frames_total']:,} frames in {len(docs)} generations, {wall:.0f}s wall")
    return docs, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150_000, help="the GA run's frame budget (default 150,000)")
    parser.add_argument("--cap", type=int, default=1500, help="throughput: episode cap in frames (default 1500)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--random-episodes", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"throughput repetitions (default {REPEATS})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the networks run: cpu or cuda (default: cuda when available)")
    parser.add_argument("--networks", type=int, default=NETWORKS, help=f"throughput: networks played (default {NETWORKS})")
    parser.add_argument("--throughput-only", action="store_true", help="only part 1: no GA run, no random policy")
    args = parser.parse_args()
    failures = []
    problem = load_spec(EXPERIMENT).problem.model_dump(mode="json")

    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU, 1 torch thread"
    unit = "wall second" if args.device.startswith("cuda") else "CPU second"
    print(f"Throughput of one worker: the paper's network on {problem['game']}, {args.networks} networks x {EPISODES} "
          f"episodes, capped at {args.cap} frames, on {where}, {args.repeats} interleaved repetitions")
    rates = throughput({**problem, "max_episode_frames": args.cap}, args.repeats, args.device, args.networks)
    one = rates["one by one"][1]
    for name in ("batched episodes", "batched networks"):
        ratio = rates[name][2]
        print(f"  {name} / one by one: {ratio:.2f}x frames per {unit}, median of the repetitions (bar: {MIN_RATIO:.1f}x)")
        if ratio < MIN_RATIO:
            failures.append(f"{name}: {ratio:.2f}x one by one's frames per {unit}; bar {MIN_RATIO:.1f}x")
    if args.throughput_only:
        return finish(failures)

    print(f"GA: {EXPERIMENT.name} with a budget of {args.frames:,} frames, {args.workers} workers")
    docs, wall = run_ga(args.frames, args.workers)
    elite = docs[-1]["stats"].get("elite", docs[-1]["stats"]["best"])
    budget, played = load_spec(EXPERIMENT).ga.frame_budget, docs[-1]["stats"]["frames_total"]
    if played < budget:  # extrapolations, labelled so: the full run was not measured here
        print(f"  the experiment's own budget of {budget:,} frames, extrapolated: ~{budget / played * wall / 60:.0f} min "
              f"at this run's pace; ~{budget / (args.workers * one) / 60:.0f} min of play on {args.workers} idle cores "
              f"at the one-by-one frames per CPU second above")

    print(f"Random policy: {args.random_episodes} episodes capped at {problem['max_episode_frames']} frames")
    returns = random_policy(problem, args.random_episodes)
    mean = statistics.fmean(returns)
    print(f"  => mean return {mean:.1f} (sd {statistics.stdev(returns):.1f}, best {max(returns):.0f})")

    print(f"Score against frames, {problem['game']}, episodes capped at {problem['max_episode_frames']} frames:")
    print(f"  GA elite after {docs[-1]['stats']['frames_total']:,} frames: {elite:.1f}")
    print(f"  random policy: {mean:.1f}")
    print(f"  {PAPER_FIGURE}: a budget {1e9 / docs[-1]['stats']['frames_total']:,.0f}x this run's, "
          f"and this run's episodes are capped at {problem['max_episode_frames']:,} frames")
    if not elite > mean:
        failures.append(f"the GA's elite ({elite:.1f}) does not beat the random policy ({mean:.1f})")

    return finish(failures)


def finish(failures: list[str]) -> int:
    for failure in failures:
        print("FAIL:", failure)
    if not failures:
        print("PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
