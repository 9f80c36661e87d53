"""Evaluations per second: one network at a time against a batched group of siblings (batched.py).

For groups of 1, 4, 16 and 64 siblings (a parent, then one sigma-0.02 Gaussian perturbation of
it per child) of two networks:

  memorize  experiments/memorize.yaml's: seed 003's convnet (conv 32 8x8 s4, conv 64 4x4 s2,
            conv 64 3x3 s1, dense 512, 10 classes) on 3x64x64 images, 606K parameters, scored as
            the GA scores it: its 512 training and 64 validation images, cross-entropy and accuracy
  atari     the DQN network of Such et al. 2017 (Mnih et al. 2015): the same convolutions on
            4x84x84 frames, dense 512, 18 actions, 1.7M parameters, 32 environment steps of a
            child's one episode: at each step each network acts on its own random frame, as
            atari.play steps the GA's children (one episode each) in lockstep

  one by one  memorize.evaluate (atari: nets.forward on its frame, per step) for each child in turn
  batched     memorize.evaluate_many (atari: the pass atari.play runs, batched.runner with own
              batches, laid out once per group and called once per step) on the stacked group

Both modes run in the same process, interleaved. A first batched pass is the warm-up, in which
the process chooses its path for the group on this CPU (batched.PATHS, `fastest`: the group's one
pass, each network's own blocked pass, or one network at a time; the `path` column says which,
and a choice already on disk for this CPU, torch and arithmetic is reused: delete
~/.cache/evoarena/batched-paths.json to choose again). Then a pass of each is profiled to count
conv and linear layer calls (batched.layer_calls, its profiler's own lines kept out of the
output), and their outputs are compared ("difference": memorize, the largest |fitness batched - fitness one by one|, bar
batched.FITNESS_ATOL; atari, the share of the 32 actions that differ, printed only). Then each
repetition times three runs in a rotating order: one by one, batched, and one by one again (the
A/A control). `ratio` is the median over repetitions of (one by one's seconds / batched's) in the
same repetition, so a neighbour's load on one repetition cancels; `A/A` is the same median for
one by one against itself: how far a ratio strays from 1 when nothing differs, the noise of this
run. Smaller groups are cheaper and get more repetitions (`repetitions`). The evaluations/s are
group / the median seconds. On a CPU the bench runs one torch thread (--threads), as each worker
of a 2-worker local run on 2 cores does, keeps freed memory as a worker does
(batched.retain_freed_memory), and times the process's CPU time (time.process_time): on a
machine shared with other jobs, wall time swung 8x between identical repetitions, CPU time by a
few percent. On a GPU it times wall time, synchronised. It computes in `fast` arithmetic, the
default, unless --arithmetic says `reproducible` (arithmetic.py; oneDNN off: the group's one pass,
on every CPU).

It also prints the size of a group message (tasks.py) for 64 siblings against the 64
single tasks it replaces: task JSON, as bench/message.py counts it (len(json.dumps(task))), from
the GA's own tasks for experiments/memorize.yaml with 64 children per parent.

Bars, on a CPU:
  - batched is no slower than one by one at every group size: ratio >= 1.0, with no allowance
    for noise. The A/A column shows the noise of the same run; where it strays as far from 1 as
    a ratio's margin, a run can fail by noise alone: run it again, or with more --repeats. A row
    whose path is `one` (this CPU found no batched pass faster) runs one by one on both sides:
    its ratio is a second A/A, printed and not held to the bar. An atari row whose path is
    `apart: ...` plays the group one network after another (batched.plays_apart: this CPU found
    lockstep slower, as atari.play then does), each network on its own pass (after the colon);
    it is held to the bar;
  - at group 64, the group's one pass (path `grouped`) makes at most 1/8 of the layer calls one
    by one makes. A CPU gains little from larger kernels, so a "batched" path that looped over
    the children in Python could reach ratio 1.0 by noise; it cannot pass this bar. A row that
    took another path for some of its batches (`each+grouped`: memorize's 64 validation images
    may take another path than its 128-image training passes) says so in its path column, and
    is held to the ratio bar only.
On a GPU (when torch.cuda.is_available()), also: batched at group 64 >= 10x one by one.
Message (on a CPU run only: the bytes do not depend on the device): the group message is at
most 1/8 of the bytes of the 64 single tasks.
Prints the table and PASS, or the failed bars and exits 1.

    python bench/batched.py                # 10 timed repetitions at group 64, ~9 min on 2 busy cores
    python bench/batched.py --repeats 3    # ~3 min, and noisier
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

from evoarena.encoding import arithmetic, batched, nets
from evoarena.problems import memorize

GROUPS = (1, 4, 16, 64)
SIGMA = 0.02
MIN_CPU_RATIO = 1.0  # batched / one by one evaluations per second, every group size
REPEATS = 10  # with 5, an atari row measured 0.99 once (A/A 0.94-1.06): its dense layer is bound by reading weights
MAX_CALL_SHARE = 1 / 8  # batched layer calls / one by one's, at group 64
MIN_GPU_RATIO = 10.0  # batched / one by one evaluations per second at group 64, on a GPU
MAX_MESSAGE_SHARE = 1 / 8  # a group message's bytes / those of the single tasks it replaces
DQN_CONVS = [{"channels": 32, "kernel": 8, "stride": 4}, {"channels": 64, "kernel": 4, "stride": 2},
             {"channels": 64, "kernel": 3, "stride": 1}]
ATARI_STEPS, ATARI_ACTIONS = 32, 18


def memorize_case(device: str) -> tuple[dict, Callable, Callable, Callable]:
    """experiments/memorize.yaml's network and data; (arch, a group's evaluations one by one, the
    group's batched, the largest fitness difference between the two)."""
    from evoarena.spec.experiment import load_spec
    from pathlib import Path

    spec = load_spec(Path(__file__).resolve().parent.parent / "experiments" / "memorize.yaml")
    problem, network = spec.problem.model_dump(mode="json"), spec.network.model_dump(mode="json")
    arch = memorize.architecture(problem, network)
    data = memorize.make_data(problem, device)
    return (arch, lambda stacked: [memorize.evaluate(arch, flat, data) for flat in stacked],
            lambda stacked: memorize.evaluate_many(arch, stacked, data),
            lambda alone, together: max(abs(a["fitness"] - b["fitness"]) for a, b in zip(alone, together)))


def atari_case(device: str) -> tuple[dict, Callable, Callable, Callable]:
    """The DQN network, ATARI_STEPS steps of each child on its own random frame; (arch, a group's
    actions one by one, the group's batched, the share of actions that differ between the two)."""
    arch = nets.convnet([4, 84, 84], DQN_CONVS, [512], ATARI_ACTIONS)
    frames = torch.rand(GROUPS[-1], ATARI_STEPS, 4, 84, 84, generator=torch.Generator().manual_seed(0)).to(device)

    def one_by_one(stacked: torch.Tensor) -> list[torch.Tensor]:
        return [torch.cat([nets.forward(arch, flat, x[t : t + 1]).argmax(1) for t in range(ATARI_STEPS)])
                for flat, x in zip(stacked, frames)]

    def lockstep(stacked: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        step = batched.runner(arch, stacked, own=True)
        return torch.cat([step(own[:, t : t + 1]).argmax(2) for t in range(ATARI_STEPS)], dim=1)

    def together(stacked: torch.Tensor) -> torch.Tensor:
        own = frames[: len(stacked)]
        if batched.plays_apart(arch, stacked, own[:, :1]):  # as atari.play: one network after another
            return torch.cat([lockstep(stacked[i : i + 1], own[i : i + 1]) for i in range(len(stacked))])
        return lockstep(stacked, own)

    return arch, one_by_one, together, lambda alone, both: (torch.stack(alone) != both).double().mean().item()


def path_label(arch: dict, group: int) -> str:
    """How this process ran groups of `arch` of `group` networks: the paths it took (batched.PATHS,
    joined by +), or for a game played one network after another (batched.PLAYS), `apart` and the
    path of one network's own pass."""
    taken = batched.paths_taken(arch, group)
    if "apart" in taken:
        return "apart: " + "+".join(p for p in batched.paths_taken(arch, 1) if p in batched.PATHS)
    return "+".join(p for p in taken if p in batched.PATHS) or "grouped"


def siblings(arch: dict, group: int, device: str) -> torch.Tensor:
    """A parent (initialized as the GA initializes founders) and `group` Gaussian children, stacked."""
    lay = nets.layout(arch)
    parent = torch.empty(lay.size)
    nets.init_layers(arch, 7, parent)
    noise = torch.randn(group, lay.size, generator=torch.Generator().manual_seed(group))
    return (parent + SIGMA * noise).to(device)


def timed(run: Callable[[], object], device: str) -> float:
    """Seconds `run()` takes: wall time on a GPU (synchronised), this process's CPU time on a CPU."""
    gpu = device.startswith("cuda")
    clock = time.perf_counter if gpu else time.process_time
    if gpu:
        torch.cuda.synchronize()
    started = clock()
    with torch.no_grad():
        run()
    if gpu:
        torch.cuda.synchronize()
    return clock() - started


def repetitions(group: int, repeats: int) -> int:
    """Timed repetitions at `group`: `repeats` at the largest group, more for smaller (cheaper)
    groups, sqrt(64 / group) times as many, so that their medians are not left to fewer seconds."""
    return repeats * max(1, round(math.sqrt(GROUPS[-1] / group)))


def measure(case: Callable, device: str, repeats: int) -> list[dict]:
    arch, one, many, gap = case(device)
    rows = []
    for group in GROUPS:
        stacked = siblings(arch, group, device)
        modes = {"one by one": lambda: one(stacked), "batched": lambda: many(stacked)}
        outputs = {}
        with torch.no_grad():
            many(stacked)  # the warm-up: the path is chosen here, not in the profiled pass
            # the profiled passes give the outputs compared
            calls = {mode: batched.layer_calls(lambda: outputs.__setitem__(mode, run())) for mode, run in modes.items()}
        modes["one by one again"] = modes["one by one"]  # the A/A control: the same work, timed apart
        seconds: dict[str, list[float]] = {mode: [] for mode in modes}
        for r in range(repetitions(group, repeats)):  # each repetition times the three in another order
            order = list(modes)[r % 3:] + list(modes)[: r % 3]
            for mode in order:
                seconds[mode].append(timed(modes[mode], device))
        one_s, many_s, again_s = seconds["one by one"], seconds["batched"], seconds["one by one again"]
        rows.append({"group": group, "one": group / statistics.median(one_s), "batched": group / statistics.median(many_s),
                     "ratio": statistics.median(a / b for a, b in zip(one_s, many_s)),
                     "aa": statistics.median(a / b for a, b in zip(one_s, again_s)),
                     "calls_one": calls["one by one"], "calls_batched": calls["batched"],
                     "path": path_label(arch, group),
                     "gap": gap(outputs["one by one"], outputs["batched"])})
    return rows


def message_sizes() -> tuple[int, int]:
    """Task JSON bytes of one group of 64 siblings, and of their 64 single tasks (the GA's own
    tasks for experiments/memorize.yaml, 64 children per parent, at generation 1)."""
    from evoarena.evolve.ga import GA
    from evoarena.tasks import pack, is_group
    from evoarena.spec.experiment import load_spec
    from pathlib import Path

    spec = load_spec(Path(__file__).resolve().parent.parent / "experiments" / "memorize.yaml")
    spec = spec.model_copy(update={"ga": spec.ga.model_copy(update={"children_per_parent": GROUPS[-1],
                                                                   "eval_group": GROUPS[-1]})})
    algo = GA(spec)
    founders = algo.plan(0, None).about
    tasks = algo.plan(1, {"parents": [founders[0].to_json()], "checkpoints": []}).tasks
    children = [t for t in tasks if t["role"] == "child"]
    group = next(t for t in pack(children, "evaluate") if is_group(t))
    return len(json.dumps(group).encode()), sum(len(json.dumps(t).encode()) for t in children)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"timed repetitions (default {REPEATS})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on a CPU (default 1)")
    parser.add_argument("--arithmetic", choices=arithmetic.MODES, default="fast", help="CPU arithmetic (default fast)")
    args = parser.parse_args()
    arithmetic.apply(args.arithmetic)  # before torch computes anything
    torch.set_num_threads(args.threads)
    retained = batched.retain_freed_memory()  # as a worker does (Worker.__init__)
    precision = arithmetic.pin_gpu()["cudnn.conv"]  # likewise: a GPU computes in IEEE float32, not TF32
    repeats = args.repeats
    gpu = args.device.startswith("cuda")
    clock = "wall time" if args.device.startswith("cuda") else "CPU time"
    print(f"device: {device_name(args.device)}; torch {torch.__version__}; {clock}; {repeats} timed repetitions, "
          f"interleaved, after a warm-up; {args.arithmetic} arithmetic; freed memory retained: {retained}; "
          f"GPU float32: {precision}")
    print(f"{'network':<9} {'group':>5} {'one by one/s':>13} {'batched/s':>10} {'ratio':>6} {'A/A':>5} {'layer calls one/batched':>24} "
          f"{'difference':>10}  path")
    failures = []
    for name, case in (("memorize", memorize_case), ("atari", atari_case)):
        for row in measure(case, args.device, repeats):
            print(f"{name:<9} {row['group']:>5} {row['one']:>13.1f} {row['batched']:>10.1f} {row['ratio']:>6.2f} {row['aa']:>5.2f} "
                  f"{row['calls_one']:>12} / {row['calls_batched']:<10} {row['gap']:>10.2g}  {row['path']}", flush=True)
            if name == "memorize" and row["gap"] > batched.FITNESS_ATOL:
                failures.append(f"FAIL: memorize group {row['group']}: fitness differs by {row['gap']:.2g} "
                                f"(batched.FITNESS_ATOL {batched.FITNESS_ATOL})")
            if not gpu and row["ratio"] < MIN_CPU_RATIO and row["path"] != "one":
                failures.append(f"FAIL: {name} group {row['group']}: batched {row['ratio']:.2f}x one by one "
                                f"(bar: >= {MIN_CPU_RATIO})")
            if row["group"] == GROUPS[-1]:
                if row["calls_batched"] > MAX_CALL_SHARE * row["calls_one"] and row["path"] == "grouped":
                    failures.append(f"FAIL: {name} group {row['group']}: batched makes {row['calls_batched']} layer "
                                    f"calls, one by one {row['calls_one']} (bar: at most 1/{1 / MAX_CALL_SHARE:.0f})")
                if gpu and row["ratio"] < MIN_GPU_RATIO:
                    failures.append(f"FAIL: {name} group {row['group']} on the GPU: batched {row['ratio']:.1f}x one "
                                    f"by one (bar: >= {MIN_GPU_RATIO:.0f}x)")
    if not gpu:  # bytes are the same on any device; a GPU machine may lack the store's clients (scripts/gpu_check.sh)
        group_bytes, single_bytes = message_sizes()
        print(f"message: a group of {GROUPS[-1]} siblings {group_bytes:,} B of task JSON; the {GROUPS[-1]} single tasks "
              f"{single_bytes:,} B ({single_bytes / group_bytes:.1f}x)")
        if group_bytes > MAX_MESSAGE_SHARE * single_bytes:
            failures.append(f"FAIL: the group message is {group_bytes / single_bytes:.2f} of the single tasks' bytes "
                            f"(bar: at most 1/{1 / MAX_MESSAGE_SHARE:.0f})")
        print(f"GPU bar (batched >= {MIN_GPU_RATIO:.0f}x one by one at group {GROUPS[-1]}): not measured, no GPU here")
    for failure in failures:
        print(failure)
    if failures:
        return 1
    print(f"PASS: batched >= {MIN_CPU_RATIO}x one by one at every group size it batches" if not gpu else
          f"PASS: batched >= {MIN_GPU_RATIO:.0f}x one by one at group {GROUPS[-1]}",
          f"and <= 1/{1 / MAX_CALL_SHARE:.0f} of its layer calls at group {GROUPS[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
