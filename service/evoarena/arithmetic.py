"""One CPU arithmetic on every Intel machine: the kernels torch computes with are pinned to AVX2.

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
GPUs are not affected.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

PINNED = {"MKL_CBWR": "AVX2,STRICT", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def pin(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set each of PINNED's variables that `environ` does not set already; return what is in effect."""
    for name, value in PINNED.items():
        environ.setdefault(name, value)
    return {name: environ[name] for name in PINNED}
