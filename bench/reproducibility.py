"""Which CPU arithmetic gives the same bits where: the study behind `arithmetic: reproducible`.

torch computes on the CPU with three libraries, each of which picks its kernels by what the CPU
can do and reads an environment variable once, at its first computation:

    MKL     matrix products (torch.mm, F.linear)               MKL_CBWR (conditional numerical reproducibility)
    ATen    element-wise ops, reductions, random numbers        ATEN_CPU_CAPABILITY
    oneDNN  convolutions (NNPACK some, where oneDNN is off)    ONEDNN_MAX_CPU_ISA

For each candidate setting (SETTINGS) this runs, in a fresh interpreter, 13 small fixed
computations that each exercise one library (COMPUTATIONS; inputs from NumPy's PCG64, the same
bits on every machine) and two of evoarena's own (a ring-arena train_pair of two founders, a
memorize evaluation of a founder), at 1 and at 3 torch threads, and prints the first 16 hex
digits of the sha256 of each output's bytes and the seconds it took (with the machine's load:
indicative, not a cost measurement). Beside each setting it reports what the libraries say they
run: ATen's capability, MKL's CNR branch (MKL's own mkl_cbwr_get, where torch exports it).
`reproducible` and `fast` are evoarena's (arithmetic.apply, then the thread count a worker may be
given, then arithmetic.require, as a Worker does before a task).

What one machine can show: which library's bits a setting changes, whether a setting's bits depend
on the thread count, whether MKL runs the branch asked of it, and whether the bits survive an
emulated CPU without AVX-512 (`on avx2 machine`: MKL_ENABLE_INSTRUCTIONS=AVX2, ATen and oneDNN
capped at AVX2, as on such a CPU). What it cannot show: whether another vendor's CPU gives the
same bits. For that, run it there and compare with the hashes recorded here:

    python bench/reproducibility.py                  # 3-6 min on 2 cores: 36 fresh interpreters
    python bench/reproducibility.py --record bench/reproducibility_amd_epyc.json
    python bench/reproducibility.py --compare bench/reproducibility_amd_epyc.json   # on another CPU

Bars (exit 1, naming the one that failed): `reproducible` gives the same bits whatever the threads
asked for and on the emulated AVX2 CPU as at 1 thread here, MKL runs its COMPATIBLE branch, and,
with --compare, every `reproducible` hash equals the recorded one. The other settings are reported,
not judged. docs/ARCHITECTURE.md ("CPU arithmetic") states what was found and what it means.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

PINNED_VARIABLES = ("MKL_CBWR", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")

# name -> (environment, torch flags set before the first computation). Each runs in a fresh
# interpreter whose environment holds none of PINNED_VARIABLES but these.
SETTINGS: dict[str, tuple[dict[str, str], dict[str, bool]]] = {
    "none": ({}, {}),  # the libraries' own choice: the machine's fastest kernels (evoarena's `fast`)
    "avx2-pin": ({"MKL_CBWR": "AVX2,STRICT", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, {}),
    "mkl-avx2-strict": ({"MKL_CBWR": "AVX2,STRICT"}, {}),
    "mkl-compatible": ({"MKL_CBWR": "COMPATIBLE"}, {}),
    "mkl-compatible-strict": ({"MKL_CBWR": "COMPATIBLE,STRICT"}, {}),
    "aten-avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, {}),
    "aten-default": ({"ATEN_CPU_CAPABILITY": "default"}, {}),
    "onednn-avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, {}),
    "onednn-sse41": ({"ONEDNN_MAX_CPU_ISA": "SSE41"}, {}),
    "onednn-off": ({}, {"mkldnn": False}),  # convolutions to NNPACK where it takes them, else torch's own
    "own-conv": ({}, {"mkldnn": False, "nnpack": False}),  # torch's own convolution: im2col, then MKL's sgemm
    "deterministic": ({}, {"deterministic": True}),  # torch.use_deterministic_algorithms(True)
    "reproducible": ({}, {"evoarena": True}),  # evoarena.encoding.arithmetic.apply("reproducible"), whatever it pins
    "fast": ({}, {"evoarena_fast": True}),  # evoarena.encoding.arithmetic.apply("fast")
}

# What a CPU without AVX-512 runs: MKL told the CPU has AVX2 at most, ATen and oneDNN capped there.
AVX2_MACHINE = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
EMULATED = ("none", "avx2-pin", "mkl-compatible", "reproducible")  # settings also run on the emulated AVX2 machine
THREADS = (1, 3)  # 3 on a 2-core machine too: MKL's COMPATIBLE branch splits some products differently there

MKL_BRANCHES = {0: "OFF", 1: "BRANCH_OFF (CNR off)", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 8: "SSE4_2", 9: "AVX",
                10: "AVX2", 12: "AVX512", 14: "AVX512_E1", 15: "AVX512_E2", 16: "AVX512_E3", 17: "AVX512_E4"}
MKL_STRICT = 0x10000


# --- in the child: the computations ------------------------------------------------------------


def _x(seed: int, *shape: int):
    """A float32 tensor of N(0, 1) samples from NumPy's PCG64: the same bits on every machine."""
    import numpy as np
    import torch

    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def _adam_step():
    import torch

    p = torch.nn.Parameter(_x(20, 4096).clone())
    opt = torch.optim.Adam([p], lr=1e-3, betas=(0.5, 0.999))
    for seed in (21, 22, 23):
        p.grad = _x(seed, 4096)
        opt.step()
    return p.detach()


def _conv_grad():
    import torch
    import torch.nn.functional as F

    w = _x(13, 32, 3, 8, 8).requires_grad_(True)
    F.conv2d(_x(12, 8, 3, 64, 64), w, stride=4).square().sum().backward()
    return w.grad


def _train_pair():
    """A ring arena's founder pair (experiments/arena-ring.yaml's networks) trained 100 steps."""
    import torch

    from evoarena.encoding import arch, nets
    from evoarena.problems import gan, gan_data
    from evoarena.spec.arena import RingData

    g_arch, d_arch = arch.generator_arch(8, [64, 64], (2,)), arch.discriminator_arch((2,), [64, 64])
    flats = []
    for seed, a in ((11, g_arch), (12, d_arch)):
        flat = torch.zeros(nets.layout(a).size)
        nets.init_layers(a, seed, flat)
        flats.append(flat)
    data = gan_data.make_data(RingData(kind="ring", modes=8, radius=2.0, std=0.02).model_dump())
    meta = {"optimizer": "adam", "lr": 0.001, "loss": "ns"}
    g, d, trace = gan.train_pair(g_arch, flats[0], meta, d_arch, flats[1], meta, data.train, 100, 64, 2)
    return torch.cat([g, d, torch.tensor([[r[k] for k in sorted(r)] for r in trace], dtype=torch.float64).view(-1).float()])


def _memorize():
    """A founder of experiments/memorize.yaml's network (seed 003's convs) scored on 4 batches of 32."""
    import torch

    from evoarena.encoding import nets
    from evoarena.problems import memorize

    problem = {"image": [3, 64, 64], "classes": 10, "batch_size": 32, "train_batches": 4, "val_batches": 1,
               "data_seed": 0, "fitness": "cross_entropy"}
    network = {"convs": [{"channels": 32, "kernel": 8, "stride": 4}, {"channels": 64, "kernel": 4, "stride": 2},
                         {"channels": 64, "kernel": 3, "stride": 1}], "hidden": [512]}
    a = memorize.architecture(problem, network)
    flat = torch.zeros(nets.layout(a).size)
    nets.init_layers(a, 7, flat)
    data = memorize.make_data(problem)
    with torch.no_grad():
        return memorize.logits_over(lambda x: nets.forward(a, flat, x), data.train_x)


def computations() -> dict[str, tuple[str, object]]:
    """name -> (the library it exercises, a function returning its output tensor)."""
    import torch
    import torch.nn.functional as F

    return {
        "sgemm 256x384 @ 384x192": ("MKL", lambda: torch.mm(_x(1, 256, 384), _x(2, 384, 192))),
        "sgemm 16x200000 @ 200000x16": ("MKL", lambda: torch.mm(_x(14, 16, 200_000), _x(15, 200_000, 16))),
        "linear 64x512 -> 256": ("MKL", lambda: F.linear(_x(3, 64, 512), _x(4, 256, 512), _x(5, 256))),
        "tanh, 65536": ("ATen", lambda: torch.tanh(_x(6, 1 << 16))),
        "exp, 65536": ("ATen", lambda: torch.exp(_x(6, 1 << 16))),
        "sum, 4096": ("ATen", lambda: _x(7, 4096).sum()),
        "sum, 1048576": ("ATen", lambda: _x(8, 1 << 20).sum()),
        "add alpha (a delta)": ("ATen", lambda: _x(9, 1 << 16).add(_x(10, 1 << 16), alpha=0.02)),
        "randn, 4096 (latents)": ("ATen", lambda: torch.randn(4096, generator=torch.Generator().manual_seed(0))),
        "log_softmax 512x10": ("ATen", lambda: F.log_softmax(_x(11, 512, 10), dim=1)),
        "adam, 3 steps": ("ATen", _adam_step),
        "conv2d 8x3x64x64, 32x8x8/4": ("oneDNN", lambda: F.conv2d(_x(12, 8, 3, 64, 64), _x(13, 32, 3, 8, 8), stride=4)),
        "conv2d weight grad": ("oneDNN", _conv_grad),
        "train_pair, ring, 100 steps": ("evoarena", _train_pair),
        "memorize evaluation": ("evoarena", _memorize),
    }


def mkl_branch() -> str:
    """MKL's CNR branch in effect, as `mkl_cbwr_get(MKL_CBWR_ALL)` says (torch's static MKL exports
    it as mkl_serv_cbwr_get); "unknown" where this torch does not."""
    import torch

    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        value = lib.mkl_serv_cbwr_get(-1) & 0xFFFFFFFF
    except (OSError, AttributeError):
        return "unknown"
    name = MKL_BRANCHES.get(value & ~MKL_STRICT, str(value & ~MKL_STRICT))
    return name + (",STRICT" if value & MKL_STRICT else "")


def child(flags: dict, threads: int) -> dict:
    """Run every computation in this (fresh) process; their hashes and seconds, and what the libraries say."""
    import torch

    if flags.get("evoarena") or flags.get("evoarena_fast"):  # as a worker process does: apply, threads, require
        from evoarena.encoding import arithmetic

        wanted = "reproducible" if flags.get("evoarena") else "fast"
        arithmetic.apply(wanted)
        torch.set_num_threads(threads)  # EVOARENA_THREADS, or a local pool's share of the cores
        arithmetic.require(wanted)  # Worker.admit, before each task
    else:
        torch.set_num_threads(threads)
    if "mkldnn" in flags:
        torch.backends.mkldnn.enabled = flags["mkldnn"]
    if "nnpack" in flags:
        torch.backends.nnpack.set_flags(flags["nnpack"])
    if flags.get("deterministic"):
        torch.use_deterministic_algorithms(True)
    out = {"hashes": {}, "seconds": {}}
    for name, (_, fn) in computations().items():
        fn()  # warm: the first call of a kernel pays for its loading and JIT
        started = time.perf_counter()
        value = fn()
        out["seconds"][name] = round(time.perf_counter() - started, 5)
        out["hashes"][name] = hashlib.sha256(value.detach().contiguous().numpy().tobytes()).hexdigest()[:16]
    out["aten"] = torch.backends.cpu.get_cpu_capability()
    out["mkl"] = mkl_branch()
    out["threads"] = torch.get_num_threads()
    out["variables"] = {k: os.environ.get(k) for k in PINNED_VARIABLES if os.environ.get(k)}
    return out


# --- in the parent: one child per (setting, threads, machine) -----------------------------------


def run_child(setting: str, threads: int, avx2_machine: bool) -> dict:
    env_vars, flags = SETTINGS[setting]
    env = {k: v for k, v in os.environ.items() if k not in PINNED_VARIABLES and k != "EVOARENA_ARITHMETIC"}
    env.update(env_vars)
    if avx2_machine:  # a CPU without AVX-512: the libraries cannot take a wider path than AVX2
        env.update({k: v for k, v in AVX2_MACHINE.items() if k not in env_vars})
        # an AVX2 CPU caps what a setting asks for too: `default` stays default, `AVX2` stays AVX2
    src = str(Path(__file__).resolve().parent.parent / "service")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(flags), str(threads)], env=env,
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{setting} at {threads} threads: {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def machine() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    field = lambda name: next((line.split(":", 1)[1].strip() for line in info.splitlines()  # noqa: E731
                               if line.startswith(name)), "")
    flags = set(field("flags").split())
    import torch

    return {"vendor": field("vendor_id"), "model": field("model name"), "avx512f": "avx512f" in flags,
            "avx2": "avx2" in flags, "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "load_average": [round(x, 1) for x in os.getloadavg()]}


def study(settings: list[str]) -> dict:
    runs = {}
    for setting in settings:
        for avx2 in (False, True) if setting in EMULATED else (False,):
            for threads in THREADS:
                key = f"{setting}{' on avx2 machine' if avx2 else ''} @{threads}"
                print(f"  {key} ...", file=sys.stderr, flush=True)
                runs[key] = run_child(setting, threads, avx2)
    return {"machine": machine(), "runs": runs}


def report(result: dict, reference: dict | None) -> list[str]:
    """Print what each setting ran and which settings agree on each computation; return the failed bars."""
    runs, names = result["runs"], list(next(iter(result["runs"].values()))["hashes"])
    libraries = {name: library for name, (library, _) in computations().items()}
    print(f"machine: {result['machine']}\n")
    print(f"{'setting @ threads asked':36s} {'ATen':7s} {'MKL branch':22s} threads  seconds (all, indicative)")
    for key, run in runs.items():
        print(f"{key:36s} {run['aten']:7s} {run['mkl']:22s} {run['threads']:7d}  {sum(run['seconds'].values()):7.2f}"
              f"  {run['variables']}")
    print("\nsettings that agree on each output (first 16 hex digits of its sha256):")
    for name in names:
        groups: dict[str, list[str]] = {}
        for key, run in runs.items():
            groups.setdefault(run["hashes"][name], []).append(key)
        print(f"\n{libraries[name]:8s} {name}: {len(groups)} distinct")
        largest = max(groups, key=lambda d: len(groups[d]))
        for digest, keys in groups.items():
            if digest != largest:
                print(f"    {digest}  {', '.join(keys)}")
        print(f"    {largest}  {'every other' if len(groups) > 1 else 'every'} run ({len(groups[largest])})")
    failed = []
    rep = {k: v for k, v in runs.items() if k.startswith("reproducible")}
    failed += [f"`{k}`: MKL runs {v['mkl']}, not COMPATIBLE" for k, v in rep.items() if v["mkl"] not in ("COMPATIBLE", "unknown")]
    first = rep["reproducible @1"]["hashes"]
    for key, run in rep.items():
        differ = [n for n in names if run["hashes"][n] != first[n]]
        if differ:
            failed.append(f"`{key}` differs from `reproducible @1` in: {', '.join(differ)}")
    if reference is not None:
        where = f"{reference['machine'].get('vendor')} {reference['machine'].get('model')}"
        theirs = reference["runs"].get("reproducible @1", {}).get("hashes", {})
        differ = [n for n in names if n in theirs and theirs[n] != first[n]]
        print(f"\nagainst {where}: reproducible "
              f"{'differs in ' + ', '.join(differ) if differ else 'gives the same bits in every computation'}")
        for key in runs:
            if key in reference["runs"]:
                same = [n for n in names if reference["runs"][key]["hashes"].get(n) == runs[key]["hashes"][n]]
                print(f"    {key:36s} {len(same)}/{len(names)} equal")
        if differ:
            failed.append(f"`reproducible` differs from {where} in: {', '.join(differ)}")
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", nargs=2, metavar=("FLAGS", "THREADS"), help=argparse.SUPPRESS)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names of SETTINGS")
    parser.add_argument("--record", metavar="FILE", help="write the hashes and what the libraries said to FILE")
    parser.add_argument("--compare", metavar="FILE", help="hashes recorded on another machine (--record) to compare with")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child[0]), int(args.child[1]))))
        return 0
    wanted = args.settings.split(",")
    wanted = ["none", "reproducible"] + [s for s in wanted if s not in ("none", "reproducible")]
    unknown = [s for s in wanted if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; accepted: {', '.join(SETTINGS)}")
    result = study(wanted)
    reference = json.loads(Path(args.compare).read_text()) if args.compare else None
    failed = report(result, reference)
    if args.record:
        Path(args.record).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
        print(f"\nrecorded in {args.record}")
    for bar in failed:
        print(f"FAIL: {bar}")
    if not failed:
        print("PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
