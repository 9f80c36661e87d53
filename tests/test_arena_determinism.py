"""An arena run gives the same stored bits on every x86 machine, and whatever its pool does.

Issue 9's reproducibility doubt: the ring arena at seed 2 covered 0 of 8 modes in one run and 8 of
8 in another, at the same code and step count. Load was the first suspect; measured, it changes
nothing (the same run with both cores busy, with a pool process stopped and resumed over and over,
with one worker or two, without affinity and with no cache all store identical documents). What
differs is the CPU's instruction set: MKL's AVX-512 and AVX2 matrix products round differently, and
a GAN turns that into a different run. evoarena.arithmetic pins every process to the AVX2 path.

Each run here is a separate interpreter (the libraries read their variables once, at their first
computation) running a small ring arena on two local pool processes into its own SQLite store; it
prints what the store holds (encounter matrices, fitness, genome ids, training traces, checkpoint
digests), and the runs are compared value for value. MKL_ENABLE_INSTRUCTIONS=AVX2 makes MKL behave as
on a CPU without AVX-512, which is what the other machine was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evoarena.arithmetic import PINNED, pin

# A small ring arena: 2 rounds of 2 players with one generator and one discriminator each.
RUN = r"""
import hashlib, json, sys
from pathlib import Path
from evoarena import scheduler
from evoarena.fleet.executor import LocalExecutor
from evoarena.spec import parse_spec
from evoarena.store import open_store
from evoarena.worker import WorkerConfig

root = Path(sys.argv[1])
spec = parse_spec({
    "name": "arena-bits", "seed": 2,
    "problem": {"kind": "gan", "latent": 8, "metric_samples": 200,
                "data": {"kind": "ring", "modes": 8, "radius": 2.0, "std": 0.02, "train": 4000, "heldout": 500}},
    "arena": {"rounds": 2, "players": 2, "generators": 1, "discriminators": 1,
              "generator": {"hidden": [64, 64]}, "discriminator": {"hidden": [64, 64]},
              "train_steps": 30, "cross_train_steps": 10, "batch_size": 64, "match_samples": 128},
    "noise": {"size": 65536},
})
url = f"sqlite:///{root / 'results.db'}"
store = open_store(url)
# argv: store folder, noise folder, pool processes, cache bytes per process
executor = LocalExecutor(WorkerConfig(url, str(root / "artifacts"), sys.argv[2], int(sys.argv[4])), int(sys.argv[3]))
try:
    scheduler.run(spec, store, executor)
finally:
    executor.close()
out = {"steps": [], "results": {}, "checkpoints": {}}
for g in store.list_generations(spec.name):
    out["steps"].append({"members": [(m["id"], m["genome"]["id"], m.get("fitness")) for m in g["members"]],
                         "matrix": (g.get("matrix") or {}).get("values")})
for index in range(len(out["steps"])):
    for op in ("train_pair", "match", "cross_train"):
        for r in store.find_results(spec.name, index, op):
            out["results"][r["_id"]] = {k: r.get(k) for k in ("trace", "matrix", "real_accept", "quality", "error")}
for path in sorted((root / "artifacts").rglob("*.safetensors")):
    out["checkpoints"][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
print(json.dumps(out))
"""

# What MKL, ATen and oneDNN do on a CPU without AVX-512 (this machine may have it).
AVX2_MACHINE = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# The libraries' own choice, as before evoarena pinned them: the machine's fastest path.
UNPINNED = {"MKL_CBWR": "AUTO", "ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "ALL"}


def stored(tmp: Path, name: str, noise: Path, workers: int = 2, cache_bytes: int = 512 << 20, **env: str) -> dict:
    """What a run of the small arena stores, in a fresh interpreter with `env` added to its environment,
    on `workers` pool processes each caching up to `cache_bytes` of weights."""
    root = tmp / name
    root.mkdir()
    base = {k: v for k, v in os.environ.items() if k not in PINNED and k != "MKL_ENABLE_INSTRUCTIONS"}
    done = subprocess.run([sys.executable, "-c", RUN, str(root), str(noise), str(workers), str(cache_bytes)], env={**base, **env},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def first_difference(a: dict, b: dict) -> str:
    for part in ("steps", "results", "checkpoints"):
        if a[part] != b[part]:
            keys = range(len(a[part])) if isinstance(a[part], list) else sorted(a[part])
            for k in keys:
                if a[part][k] != (b[part][k] if isinstance(b[part], list) else b[part].get(k)):
                    return f"{part}[{k}]"
    return "none"


def has_avx512() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512f" in flags


def mkl_takes_avx512() -> bool:
    """Whether MKL runs its AVX-512 kernels here: only on an Intel CPU with AVX-512. On an AMD CPU
    MKL dispatches the same kernels whatever MKL_ENABLE_INSTRUCTIONS says (seen on an AMD EPYC with
    avx512f: the unpinned runs below stored equal bits), so there is no second path to show."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return has_avx512() and "GenuineIntel" in info


def test_arena_stores_the_same_bits_on_an_avx512_and_an_avx2_machine(tmp_path):
    here = stored(tmp_path, "here", tmp_path / "noise")
    avx2 = stored(tmp_path, "avx2", tmp_path / "noise", **AVX2_MACHINE)
    assert here["results"] and here["checkpoints"]  # a run that stored nothing would compare equal
    assert here == avx2, f"first difference: {first_difference(here, avx2)}"


@pytest.mark.skipif(not mkl_takes_avx512(), reason="MKL has no AVX-512 path on this CPU (not Intel, or no AVX-512), "
                    "so both runs take the same one")
def test_without_the_pin_the_arena_stores_different_bits_on_avx512_and_avx2(tmp_path):
    """The cause, shown: with the libraries choosing their own kernels, the two machines differ."""
    here = stored(tmp_path, "here", tmp_path / "noise", **UNPINNED)
    avx2 = stored(tmp_path, "avx2", tmp_path / "noise", **{**UNPINNED, **AVX2_MACHINE})
    assert here["steps"][0]["members"] == avx2["steps"][0]["members"]  # the same founders...
    assert here["results"] != avx2["results"]  # ...trained to different bits


def test_arena_stores_the_same_bits_whatever_its_pool_does(tmp_path):
    """One process with no cache (every network rebuilt from its checkpoint, every task on the same
    process, and, on two cores, two threads) against two caching processes routed by affinity (one
    thread each). Without STRICT in MKL_CBWR the thread counts alone make the bits differ."""
    two = stored(tmp_path, "two", tmp_path / "noise")
    one = stored(tmp_path, "one", tmp_path / "noise", workers=1, cache_bytes=0)
    assert two["results"] and two["checkpoints"]
    assert two == one, f"first difference: {first_difference(two, one)}"


def test_pin_sets_the_avx2_path_but_keeps_a_choice_already_made():
    environ = {"MKL_CBWR": "COMPATIBLE"}
    assert pin(environ) == {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert pin({}) == {"MKL_CBWR": "AVX2,STRICT", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert environ == {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_importing_evoarena_pins_a_fresh_interpreter():
    env = {k: v for k, v in os.environ.items() if k not in PINNED}
    done = subprocess.run([sys.executable, "-c", "import os, evoarena, torch; "
                           "print(os.environ['MKL_CBWR'], torch.backends.cpu.get_cpu_capability())"],
                          env=env, capture_output=True, text=True, timeout=120)
    mkl, aten = done.stdout.split() or ["", ""]
    assert (mkl, aten in ("AVX2", "DEFAULT")) == ("AVX2,STRICT", True), done.stderr[-2000:]  # never AVX512
