"""One CPU arithmetic on every Intel machine: the kernels torch computes with are pinned to AVX2;
and float32 on a GPU is IEEE float32, not TF32.

torch picks its CPU kernels by what the CPU can do: MKL's matrix products, ATen's vectorised
loops and reductions, and oneDNN's convolutions each have an AVX-512 path and an AVX2 path,
which round differently. GAN training amplifies one differing bit into a different run: the ring
arena at seed 2 ends with 0 of 8 modes covered where MKL takes its AVX-512 path and with 8 of 8
where it takes its AVX2 path (tests/test_arena_determinism.py shows the two paths store different
bits). So that the same genome and task give the same bits on every worker (DESIGN invariant 2),
each library is told to take the AVX2 path:

    MKL_CBWR=AVX2,STRICT      MKL's conditional numerical reproducibility, AVX2 code branch, strict:
                              its matrix products give the same bits whatever the number of threads
                              (without STRICT, 1 and 2 threads differ, and a local pool's processes
                              get cores // workers threads each: another machine, other bits)
    ATEN_CPU_CAPABILITY=avx2  ATen's vectorised kernels at most AVX2
    ONEDNN_MAX_CPU_ISA=AVX2   oneDNN's generated kernels at most AVX2

The libraries read these variables at their first computation, not at import, so `pin()` works
in any process that has computed nothing yet; evoarena's package import calls it, so every
master, local pool process and fleet worker is pinned, and the processes they start inherit the
variables. A variable already set is left as it is: `MKL_CBWR=AUTO ATEN_CPU_CAPABILITY=avx512
ONEDNN_MAX_CPU_ISA=ALL` gives back the machine's fastest (and machine-dependent) arithmetic.

Limits. Intel documents MKL's AVX2 branch as reproducible on Intel CPUs with AVX2; on other
vendors' CPUs (AMD) MKL may fall back to its own choice, and only `MKL_CBWR=COMPATIBLE` (SSE2,
slower, and not strict) gives the same bits everywhere: set it on every machine of a fleet that mixes vendors.
ATen's own reductions split a large tensor (tens of thousands of elements) among threads, so
networks that large reduce in an order that depends on the thread count; the arena's networks
are below that size. Other instruction sets (arm64) compute differently whatever these say;
GPUs are not affected by these variables.

GPUs. On NVIDIA GPUs since Ampere, torch lets cuDNN compute float32 convolutions in TF32 unless
told otherwise (cuBLAS's matrix products it does not): each factor of a product is rounded to 10
bits of mantissa, float32 keeps 23. `pin_gpu()` sets torch.backends' fp32_precision of the GPU's
matrix products, convolutions and RNNs (GPU_OPS) to "ieee", and every Worker calls it as it
starts (worker.py), so every evaluation on a GPU computes in float32, as a CPU worker does. What
TF32 would change, emulated on the CPU for 64 siblings of experiments/memorize.yaml's network
(`python bench/tf32.py`): a fitness moves by up to 3.97e-06 from float32's, against 1.44e-08
between batched's GPU layout and one network at a time in float32, and 2 of the 64 count one
memorized point more or less. Batched against one by one would stay within batched.FITNESS_ATOL
(1e-06 under TF32): the pin is not for that bound but for a genome's fitness on a GPU worker to
stay within float32's rounding of a CPU worker's. EVOARENA_TF32=1 (settings.WorkerSettings.tf32)
sets "tf32" instead. These are torch's newer settings (torch 2.9 and later); the older
allow_tf32 flags are left alone: torch refuses to read a mix of the two.
"""

from __future__ import annotations

import functools
import os
from collections.abc import MutableMapping

PINNED = {"MKL_CBWR": "AVX2,STRICT", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

GPU_OPS = ("cuda.matmul", "cudnn.conv", "cudnn.rnn")
"""The GPU's float32 products, as torch.backends names their precision settings: cuBLAS's matrix
products, cuDNN's convolutions and cuDNN's RNNs."""


def pin(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set each of PINNED's variables that `environ` does not set already; return what is in effect."""
    for name, value in PINNED.items():
        environ.setdefault(name, value)
    return {name: environ[name] for name in PINNED}


def pin_gpu(tf32: bool = False) -> dict[str, str]:
    """Have this process's GPU compute each of GPU_OPS in IEEE float32 ("ieee"), or in TF32 where
    `tf32` ("tf32"); return each one's setting now in effect. Plain settings: a CPU-only torch
    takes and reads them too."""
    import torch  # here: `evoarena submit`'s light install imports this module and has no torch

    for op in GPU_OPS:
        _setting(torch, op).fp32_precision = "tf32" if tf32 else "ieee"
    return gpu_precision()


def gpu_precision() -> dict[str, str]:
    """The fp32_precision in effect for each of GPU_OPS."""
    import torch

    return {op: _setting(torch, op).fp32_precision for op in GPU_OPS}


def _setting(torch, op: str):
    return functools.reduce(getattr, op.split("."), torch.backends)
