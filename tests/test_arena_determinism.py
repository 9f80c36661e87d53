"""An arena run's stored bits: the same run to run in either arithmetic, and the same on a CPU
without AVX-512 and whatever its pool does in `reproducible` (arithmetic.py).

Issue 9's reproducibility doubt: the ring arena at seed 2 covered 0 of 8 modes in one run and 8 of
8 in another, at the same code and step count. Load was the first suspect; measured, it changes
nothing (the same run with both cores busy, with a pool process stopped and resumed over and over,
with one worker or two, without affinity and with no cache all store identical documents). What
differs is the CPU's instruction set: MKL's AVX-512 and AVX2 matrix products round differently, and
a GAN turns that into a different run. Issue 22: so does MKL's AVX2 branch on an AMD CPU, which MKL
does not honour there; `reproducible` pins what is the same on every x86-64 CPU with AVX2.

Each run here is a separate interpreter (the libraries read their variables once, at their first
computation) running a small ring arena on local pool processes into its own SQLite store; it
prints what the store holds (encounter matrices, fitness, genome ids, training traces, checkpoint
digests), and the runs are compared value for value. MKL_ENABLE_INSTRUCTIONS=AVX2, with ATen and
oneDNN capped at AVX2, makes the libraries behave as on a CPU without AVX-512.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evoarena.encoding.arithmetic import PIN

# A small ring arena: 2 rounds of 2 players with one generator and one discriminator each.
RUN = r"""
import hashlib, json, sys
from pathlib import Path
from evoarena import scheduler
from evoarena.fleet.executor import LocalExecutor
from evoarena.spec import parse_spec
from evoarena.store import open_store
from evoarena.worker.worker import WorkerConfig

root = Path(sys.argv[1])
spec = parse_spec({
    "name": "arena-bits", "seed": 2, "arithmetic": sys.argv[5],
    "problem": {"kind": "gan", "latent": 8, "metric_samples": 200,
                "data": {"kind": "ring", "modes": 8, "radius": 2.0, "std": 0.02, "train": 4000, "heldout": 500}},
    "arena": {"rounds": 2, "players": 2, "generators": 1, "discriminators": 1,
              "generator": {"hidden": [64, 64]}, "discriminator": {"hidden": [64, 64]},
              "train_steps": 30, "cross_train_steps": 10, "batch_size": 64, "match_samples": 128},
    "noise": {"size": 65536},
})
url = f"sqlite:///{root / 'results.db'}"
store = open_store(url)
# argv: store folder, noise folder, pool processes, cache bytes per process, arithmetic
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
out["arithmetic"] = store.get_experiment(spec.name)["provenance"]["arithmetic"]
print(json.dumps(out))
"""

# What MKL, ATen and oneDNN do on a CPU without AVX-512 (this machine may have it).
AVX2_MACHINE = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
STORED = ("steps", "results", "checkpoints")


def stored(tmp: Path, name: str, arithmetic: str, workers: int = 2, cache_bytes: int = 512 << 20, **env: str) -> dict:
    """What a run of the small arena in `arithmetic` stores, in a fresh interpreter with `env` added
    to its environment, on `workers` pool processes each caching up to `cache_bytes` of weights."""
    root = tmp / name
    root.mkdir()
    base = {k: v for k, v in os.environ.items() if k not in (*PIN, "MKL_ENABLE_INSTRUCTIONS", "EVOARENA_ARITHMETIC")}
    done = subprocess.run([sys.executable, "-c", RUN, str(root), str(tmp / "noise"), str(workers), str(cache_bytes),
                           arithmetic], env={**base, **env}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["results"] and out["checkpoints"]  # a run that stored nothing would compare equal
    return out


def first_difference(a: dict, b: dict) -> str:
    for part in STORED:
        if a[part] != b[part]:
            keys = range(len(a[part])) if isinstance(a[part], list) else sorted(a[part])
            for k in keys:
                if a[part][k] != (b[part][k] if isinstance(b[part], list) else b[part].get(k)):
                    return f"{part}[{k}]"
    return "none"


def same_bits(a: dict, b: dict) -> bool:
    return all(a[part] == b[part] for part in STORED)


def has_avx512() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512f" in flags


def mkl_takes_avx512() -> bool:
    """Whether MKL runs its AVX-512 kernels here: only on an Intel CPU with AVX-512. On an AMD CPU
    MKL dispatches the same kernels whatever MKL_ENABLE_INSTRUCTIONS says (seen on an AMD EPYC with
    avx512f: bench/reproducibility.py), so there is no second path to show."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return has_avx512() and "GenuineIntel" in info


@pytest.fixture(scope="module")
def reproducible(tmp_path_factory) -> dict:
    """The small arena in reproducible arithmetic, two caching pool processes, on this CPU."""
    tmp = tmp_path_factory.mktemp("reproducible")
    return stored(tmp, "here", "reproducible")


def test_reproducible_arena_stores_the_same_bits_on_an_avx512_and_an_avx2_machine(reproducible, tmp_path):
    avx2 = stored(tmp_path, "avx2", "reproducible", **AVX2_MACHINE)

    assert same_bits(reproducible, avx2), f"first difference: {first_difference(reproducible, avx2)}"
    assert reproducible["arithmetic"]["mode"] == "reproducible" and reproducible["arithmetic"]["aten"] == "AVX2"


def test_reproducible_arena_stores_the_same_bits_whatever_its_pool_does(reproducible, tmp_path):
    """One process with no cache (every network rebuilt from its checkpoint, every task on the same
    process) against two caching processes routed by affinity. Each computes on one thread:
    MKL's COMPATIBLE branch splits a product differently at another thread count."""
    one = stored(tmp_path, "one", "reproducible", workers=1, cache_bytes=0)

    assert same_bits(reproducible, one), f"first difference: {first_difference(reproducible, one)}"


def test_fast_arena_stores_the_same_bits_run_to_run(tmp_path):
    """`fast` promises no bits across machines, but one machine gives the same bits each time."""
    first, again = stored(tmp_path, "first", "fast"), stored(tmp_path, "again", "fast")

    assert same_bits(first, again), f"first difference: {first_difference(first, again)}"
    assert first["arithmetic"]["mode"] == "fast" and first["arithmetic"]["variables"] == dict.fromkeys(PIN)


@pytest.mark.skipif(not mkl_takes_avx512(), reason="MKL has no AVX-512 path on this CPU (not Intel, or no AVX-512), "
                    "so both runs take the same one")
def test_fast_arena_stores_different_bits_on_avx512_and_avx2(tmp_path):
    """The cause, shown: with the libraries choosing their own kernels, the two machines differ."""
    here = stored(tmp_path, "here", "fast")
    avx2 = stored(tmp_path, "avx2", "fast", **AVX2_MACHINE)

    assert here["steps"][0]["members"] == avx2["steps"][0]["members"]  # the same founders...
    assert here["results"] != avx2["results"]  # ...trained to different bits


def test_importing_evoarena_sets_no_arithmetic_variable():
    """`fast` is the default: importing evoarena leaves the libraries their own choice."""
    env = {k: v for k, v in os.environ.items() if k not in PIN}
    done = subprocess.run([sys.executable, "-c", "import os, evoarena.worker.worker; from evoarena.encoding.arithmetic import PIN; "
                           "print(sorted(set(PIN) & set(os.environ)))"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["[]"], done.stderr[-2000:]
