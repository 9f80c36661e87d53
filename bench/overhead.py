"""What evoarena costs over plain PyTorch doing the same computation, in each CPU arithmetic.

Two pairs, each timed interleaved in one process per arithmetic (arithmetic.py: a mode needs a
fresh process, so each mode runs in its own subprocess of this script):

  evaluate    experiments/memorize.yaml's network (seed 003's convnet, 606K parameters) on its
              512 training and 64 validation images
      raw         the network as a plain torch.nn module (nets.to_module), a forward pass over the
                  same images in the same chunks, cross-entropy and accuracy of each set
      evoarena    a whole `evaluate` task of the GA's generation 1 on one Worker: admitting it
                  (the store's plan), building the child from the cached parent (one Gaussian
                  delta from the noise table), scoring it (memorize.evaluate) and writing its
                  result document to the SQLite store; each repetition a child not built before
  train_pair  experiments/arena-ring.yaml's founder pair (generator and discriminator, MLPs of
              64 and 64 units, latent 8, Adam lr 0.001, non-saturating loss, batch 64) on its ring
      raw         a plain PyTorch GAN loop over the same modules and data: per step latents and a
                  real batch from one seeded generator, a discriminator step on detached fakes,
                  a generator step through it (each backward to its own network's parameters
                  only, as train_pair's), no logging
      evoarena    the arena's round-0 `train_pair` task on one Worker, a seed of its own each time (arena_worker.train_pair:
                  building the pair, gan.train_pair with its trace, the progress hook, the
                  safetensors checkpoints, the result document), the same number of steps

Each repetition times raw and evoarena in alternating order, in CPU time (time.process_time)
on one torch thread; `ratio` is the median over repetitions of raw's seconds / evoarena's in the
same repetition (evoarena's rate as a share of raw's), so a neighbour's load on one repetition
cancels. The rates are evaluations (or training steps) per CPU second, from the median seconds.

Bars, in `fast` arithmetic (the default): evaluate ratio >= 0.95 and train_pair ratio >= 0.95.
The `reproducible` rows are printed beside, as information (torch's own convolutions on MKL:
slower for both sides alike). Prints the table and PASS, or the failed bars and exits 1.

    python bench/overhead.py                # ~3 minutes on 2 cores
    python bench/overhead.py --repeats 5    # quicker, noisier
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIN_RATIO = 0.95  # evoarena's rate / raw's, each pair, in fast arithmetic
REPEATS = 25


def child(mode: str, repeats: int) -> dict:
    """Both pairs in this process, computing in `mode`; their rows as JSON-able dicts."""
    from evoarena.encoding import arithmetic

    arithmetic.apply(mode)  # before torch computes anything here
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [evaluate_pair(Path(tmp), mode, repeats), train_pair_pair(Path(tmp), mode, repeats)]
    return {"mode": mode, "rows": rows, "threads": torch.get_num_threads(), "torch": torch.__version__}


def interleaved(raw, ours, repeats: int, per: int) -> dict:
    """Time raw(r) and ours(r) `repeats` times each, alternating which goes first; `per`: evaluations
    (or steps) in one call."""
    seconds = {"raw": [], "evoarena": []}
    for r in range(repeats):
        order = (("raw", raw), ("evoarena", ours)) if r % 2 == 0 else (("evoarena", ours), ("raw", raw))
        for name, run in order:
            started = time.process_time()
            run(r)
            seconds[name].append(time.process_time() - started)
    return {"raw": per / statistics.median(seconds["raw"]), "evoarena": per / statistics.median(seconds["evoarena"]),
            "ratio": statistics.median(a / b for a, b in zip(seconds["raw"], seconds["evoarena"]))}


def evaluate_pair(tmp: Path, mode: str, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    from evoarena.encoding import nets
    from evoarena import scheduler
    from evoarena.evolve.ga import GA
    from evoarena.encoding.genome import Genome
    from evoarena.problems import memorize
    from evoarena.spec.experiment import load_spec
    from evoarena.store import open_store
    from evoarena.worker.worker import Worker, WorkerConfig, run_on

    spec = load_spec(ROOT / "experiments" / "memorize.yaml")
    spec = spec.model_copy(update={"arithmetic": mode, "ga": spec.ga.model_copy(update={"children_per_parent": repeats + 1})})
    config = WorkerConfig(f"sqlite:///{tmp / 'ga.db'}", str(tmp / "artifacts"), str(tmp / "noise"), threads=1)
    store = open_store(config.store_url)
    scheduler.register(spec, store)
    algo = GA(spec)
    founder = algo.plan(0, None).about[0]
    children = [t for t in algo.plan(1, {"parents": [founder.to_json()], "checkpoints": []}).tasks if t["role"] == "child"]
    scheduler.plan(store, "evaluate", children)
    worker = Worker(config)
    assert run_on(worker, "evaluate", children[-1])["error"] is None  # warm-up: builds and caches the parent

    arch = founder.arch
    module = nets.to_module(arch, worker.materializer(children[0]["noise"]).build(Genome.from_json(founder.to_json())).flat)
    module.eval()
    data = memorize.make_data(spec.problem.model_dump(mode="json"))

    @torch.no_grad()
    def raw(_: int) -> None:
        for x, y in ((data.train_x, data.train_y), (data.val_x, data.val_y)):
            for i in range(0, len(x), memorize.EVAL_CHUNK):
                logits = module(x[i : i + memorize.EVAL_CHUNK])
                F.cross_entropy(logits, y[i : i + memorize.EVAL_CHUNK]).item()
                (logits.argmax(1) == y[i : i + memorize.EVAL_CHUNK]).float().mean().item()

    def ours(r: int) -> None:
        summary = run_on(worker, "evaluate", children[r])
        assert summary["error"] is None, summary["error"]

    raw(0)
    return {"pair": "evaluate", "unit": "evaluations", **interleaved(raw, ours, repeats, 1)}


def train_pair_pair(tmp: Path, mode: str, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    from evoarena.encoding import nets
    from evoarena import scheduler
    from evoarena.encoding.genome import Genome
    from evoarena.spec.experiment import load_spec
    from evoarena.store import open_store
    from evoarena.worker.worker import Worker, WorkerConfig, run_on

    spec = load_spec(ROOT / "experiments" / "arena-ring.yaml")
    spec = spec.model_copy(update={"arithmetic": mode})
    config = WorkerConfig(f"sqlite:///{tmp / 'arena.db'}", str(tmp / "arena-artifacts"), str(tmp / "noise"), threads=1)
    store = open_store(config.store_url)
    scheduler.register(spec, store)
    task = scheduler.algorithm(spec).plan(0, None).tasks[0]  # the first player's founder pair
    # each repetition its own seed: a new result each time, as the arena's tasks are
    tasks = [{**task, "seed": task["seed"] + r} for r in range(repeats + 1)]
    scheduler.plan(store, "train_pair", tasks)
    worker = Worker(config)
    assert run_on(worker, "train_pair", tasks[-1])["error"] is None  # warm-up: the data, the founders' builds

    m = worker.materializer(task["noise"])
    (g_arch, g_flat), (d_arch, d_flat) = ((Genome.from_json(task[side]["genome"]).arch,
                                          m.build(Genome.from_json(task[side]["genome"])).flat) for side in ("gen", "disc"))
    real = worker.gan_data(task["problem"]).train
    steps, batch, latent = task["steps"], task["batch_size"], g_arch["input"]
    for side in ("gen", "disc"):  # what the raw loop hard-codes
        meta = task[side]["meta"]
        assert (meta["optimizer"], meta["lr"], meta.get("loss", "ns")) == ("adam", 0.001, "ns"), meta

    def raw(r: int) -> None:
        g, d = nets.to_module(g_arch, g_flat), nets.to_module(d_arch, d_flat)
        g_params, d_params = list(g.parameters()), list(d.parameters())
        g_opt = torch.optim.Adam(g_params, lr=0.001, betas=(0.5, 0.999))
        d_opt = torch.optim.Adam(d_params, lr=0.001, betas=(0.5, 0.999))
        rng = torch.Generator().manual_seed(tasks[r]["seed"])
        for _ in range(steps):
            fake = g(torch.randn(batch, *latent, generator=rng))
            x = real[torch.randint(len(real), (batch,), generator=rng)]
            d_loss = F.softplus(-d(x)).mean() + F.softplus(d(fake.detach())).mean()
            d_opt.zero_grad()
            d_loss.backward(inputs=d_params)
            d_opt.step()
            g_loss = F.softplus(-d(fake)).mean()
            g_opt.zero_grad()
            g_loss.backward(inputs=g_params)
            g_opt.step()

    def ours(r: int) -> None:
        summary = run_on(worker, "train_pair", tasks[r])
        assert summary["error"] is None, summary["error"]

    raw(0)
    return {"pair": "train_pair", "unit": f"steps ({steps} a task)", **interleaved(raw, ours, repeats, steps)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"timed repetitions of each pair (default {REPEATS})")
    parser.add_argument("--child", choices=("fast", "reproducible"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeats)))
        return 0
    from evoarena.encoding import arithmetic

    results = {}
    for mode in arithmetic.MODES:  # each in a fresh process: the libraries read the mode once
        env = {**arithmetic.environment(mode, os.environ), "EVOARENA_ARITHMETIC": mode}
        done = subprocess.run([sys.executable, __file__, "--child", mode, "--repeats", str(args.repeats)],
                              env=env, capture_output=True, text=True)
        if done.returncode:
            print(done.stdout + done.stderr, file=sys.stderr)
            return 1
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    import platform

    fast = results["fast"]
    print(f"CPU: {_cpu()} ({platform.machine()}); torch {fast['torch']}; {fast['threads']} torch thread; CPU time; "
          f"{args.repeats} repetitions per pair, interleaved; each arithmetic in its own process")
    print(f"{'pair':<11} {'unit':<20} {'fast: raw/s':>11} {'evoarena/s':>10} {'ratio':>6}   "
          f"{'reproducible: raw/s':>19} {'evoarena/s':>10} {'ratio':>6}")
    failures = []
    for row, other in zip(fast["rows"], results["reproducible"]["rows"]):
        print(f"{row['pair']:<11} {row['unit']:<20} {row['raw']:>11.1f} {row['evoarena']:>10.1f} {row['ratio']:>6.3f}   "
              f"{other['raw']:>19.1f} {other['evoarena']:>10.1f} {other['ratio']:>6.3f}")
        if row["ratio"] < MIN_RATIO:
            failures.append(f"FAIL: {row['pair']} in fast arithmetic: evoarena at {row['ratio']:.3f} of raw PyTorch's "
                            f"{row['unit'].split()[0]} per CPU second (bar: >= {MIN_RATIO})")
    for failure in failures:
        print(failure)
    if failures:
        return 1
    print(f"PASS: in fast arithmetic evoarena's evaluate and train_pair reach >= {MIN_RATIO} of raw PyTorch's rate "
          "(reproducible: information)")
    return 0


def _cpu() -> str:
    from evoarena.encoding.batched import cpu_model

    return cpu_model()


if __name__ == "__main__":
    sys.exit(main())
