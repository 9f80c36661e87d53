"""How torch computes on the CPU in this process, `fast` or `reproducible`; and float32 on a GPU
is IEEE float32, not TF32.

torch's CPU kernels come from three libraries, each of which picks its code by what the CPU can
do: MKL's matrix products, ATen's element-wise ops, reductions and random numbers, and oneDNN's
(or NNPACK's) convolutions. The paths round differently, and GAN training turns one differing bit
into another run (tests/test_arena_determinism.py). A run chooses (the spec's `arithmetic`,
EVOARENA_ARITHMETIC overriding it):

    fast          each library's own choice, the CPU's fastest kernels. The same task gives the
                  same bits run to run on one machine, at one thread count; another CPU may
                  give other bits.
    reproducible  the same bits on every x86-64 CPU with AVX2 and FMA, Intel or AMD, for any
                  thread count asked for: PIN's variables, one torch thread per process, and
                  convolutions computed by torch itself on MKL's products (oneDNN and NNPACK off).

What `reproducible` pins, and why (bench/reproducibility.py measures each; docs/ARCHITECTURE.md,
"CPU arithmetic", gives the figures):

    MKL_CBWR=COMPATIBLE      MKL's conditional numerical reproducibility, its SSE2 code without
                             the approximate rcpps/rsqrtps: Intel documents it as the one branch
                             that gives the same results on Intel and non-Intel CPUs. The AVX2
                             branch evoarena pinned before is honoured on Intel CPUs only: on an
                             AMD EPYC MKL runs its AUTO branch instead (it says so: `mkl_branch`),
                             which is why the README's example differed between the two.
                             COMPATIBLE has no strict mode: its bits depend on the thread count,
                             hence one thread.
    ATEN_CPU_CAPABILITY=avx2 ATen's AVX2 kernels: AVX2 and FMA instructions only, which round the
                             same on every CPU that has them (ATen's float kernels use no
                             approximate instruction); its AVX-512 kernels round differently
                             (log_softmax), its `default` ones too (no FMA: every delta).
    oneDNN and NNPACK off    their kernels, blocking and algorithms depend on the CPU (AVX-512 and
                             AVX2 convolutions differ; oneDNN's AVX-512 and SSE4.1 weight
                             gradients differ between thread counts): torch's own convolution (im2col,
                             then MKL's product) has MKL's guarantee. ONEDNN_MAX_CPU_ISA=AVX2 is
                             set too, for anything that would still reach oneDNN.
    1 torch thread           per process (a pool runs more processes instead).

The libraries read their variables once, at their first computation, not at import: `apply` must
run before torch computes anything in the process (importing evoarena sets nothing). The master
applies the run's mode when it registers the run (scheduler.register), a local pool's processes
in their initializer (process.init_process), a fleet worker at its start (`evoarena worker`, from
EVOARENA_ARITHMETIC), and a Worker refuses the tasks of an experiment recorded in the other mode
(worker.Worker.admit). `apply("reproducible")` checks what the libraries that say so run (ATen's
capability, MKL's branch) and refuses a process that computed already, or a CPU or torch it
cannot pin (no AVX2, no MKL). Other instruction sets (arm64) and GPUs are outside `reproducible`:
a GPU worker refuses its tasks.

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

import ctypes
import functools
import logging
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

log = logging.getLogger(__name__)

MODES = ("fast", "reproducible")
"""The CPU arithmetics a run may ask for (the spec's `arithmetic`, EVOARENA_ARITHMETIC)."""

PIN = {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
"""The variables `reproducible` sets; `fast` removes them, so that each library takes the CPU's best."""

MKL_COMPATIBLE = 3
"""The CNR branch MKL reports under MKL_CBWR=COMPATIBLE (mkl_cbwr.h: MKL_CBWR_COMPATIBLE)."""

LEGACY = "avx2-pin"
"""What a run stored before the spec had `arithmetic` computed in: the pin evoarena's import set
then (MKL_CBWR=AVX2,STRICT, ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2), which is neither mode."""

GPU_OPS = ("cuda.matmul", "cudnn.conv", "cudnn.rnn")
"""The GPU's float32 products, as torch.backends names their precision settings: cuBLAS's matrix
products, cuDNN's convolutions and cuDNN's RNNs."""


class ArithmeticMismatch(RuntimeError):
    """This process computes in another arithmetic than the one asked for, or cannot compute in it."""


_mode: str | None = None  # the mode this process applied; None before `apply`


def environment(mode: str, environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` as `mode` has it: PIN's variables set (reproducible) or removed (fast)."""
    if mode not in MODES:
        raise ValueError(f"arithmetic {mode!r}: must be one of {', '.join(MODES)}")
    kept = {k: v for k, v in environ.items() if k not in PIN}
    return {**kept, **PIN} if mode == "reproducible" else kept


def mode() -> str | None:
    """The mode this process computes in, once `apply` chose it; None before."""
    return _mode


def apply(mode: str, environ: MutableMapping[str, str] = os.environ) -> None:
    """Make this process compute in `mode`; call it before torch computes anything here.

    Sets or removes PIN's variables in `environ` (the processes this one starts inherit them);
    `reproducible` also turns oneDNN and NNPACK off, sets one torch thread, and checks that ATen
    and MKL run the pin. ArithmeticMismatch if they do not (torch computed in this process
    already, or the CPU has no AVX2, or torch has no MKL), or if the process applied the other
    mode before: the libraries read their variables once. Applying the same mode again does nothing."""
    global _mode
    wanted = environment(mode, environ)
    if _mode == mode:
        return
    if _mode is not None:
        raise ArithmeticMismatch(f"this process computes in {_mode} arithmetic already; {mode} needs a fresh process")
    for name in PIN:
        if name in wanted:
            environ[name] = wanted[name]
        else:
            environ.pop(name, None)
    if mode == "reproducible":
        import torch

        torch.backends.mkldnn.enabled = False
        torch.backends.nnpack.set_flags(False)
        torch.set_num_threads(1)
        if problem := _unpinned(torch):
            raise ArithmeticMismatch(f"reproducible arithmetic: {problem}")
    _mode = mode


def require(mode: str) -> None:
    """That this process computes in `mode`, before a task of an experiment recorded in it:
    applied now if the process chose none yet (a Worker used directly, outside a pool or a fleet
    worker); ArithmeticMismatch if it computes in the other. In `reproducible`, a thread count set
    since (EVOARENA_THREADS) goes back to one."""
    if _mode is None:
        apply(mode)
    elif _mode != mode:
        raise ArithmeticMismatch(f"this process computes in {_mode} arithmetic and the experiment in {mode}: "
                                 f"a worker started with EVOARENA_ARITHMETIC={mode} runs it")
    if mode == "reproducible":
        import torch

        if torch.get_num_threads() != 1:
            log.info("reproducible arithmetic computes on one torch thread, not %d", torch.get_num_threads())
            torch.set_num_threads(1)


def in_effect() -> dict:
    """What this process computes with, for a run's provenance: its mode, PIN's variables as set,
    ATen's capability, MKL's CNR branch (None where torch does not say), whether oneDNN and NNPACK
    may compute, torch's threads."""
    import torch

    return {"mode": _mode, "variables": {name: os.environ.get(name) for name in PIN},
            "aten": torch.backends.cpu.get_cpu_capability(), "mkl_branch": mkl_branch(),
            "onednn": torch.backends.mkldnn.enabled, "nnpack": torch._C._get_nnpack_enabled(),
            "threads": torch.get_num_threads()}


def mkl_branch() -> int | None:
    """MKL's CNR branch, as mkl_cbwr_get(MKL_CBWR_BRANCH) says (1: CNR off, 2 AUTO, 3 COMPATIBLE,
    10 AVX2...); None where torch does not export it (torch's static MKL does, as mkl_serv_cbwr_get).
    Asking makes MKL read MKL_CBWR, if it has not yet."""
    try:
        return int(_torch_cpu().mkl_serv_cbwr_get(1))
    except (OSError, AttributeError):
        return None


@functools.cache
def _torch_cpu() -> ctypes.CDLL:
    import torch

    return ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))


def _unpinned(torch) -> str | None:
    """Why this process does not compute as PIN says, or None."""
    has_avx2 = getattr(torch.cpu, "_is_avx2_supported", lambda: False)()
    if not has_avx2:
        return "it needs an x86-64 CPU with AVX2 and FMA, and this one has none (docs/ARCHITECTURE.md)"
    if not torch.backends.mkl.is_available():
        return "it needs a torch built with MKL (the x86-64 wheels are), and this one has none"
    if (aten := torch.backends.cpu.get_cpu_capability()) != "AVX2":
        return (f"ATen runs its {aten} kernels, not AVX2: torch computed in this process before the arithmetic "
                "was set (set it first)")
    if (branch := mkl_branch()) not in (None, MKL_COMPATIBLE):
        return (f"MKL runs CNR branch {branch}, not COMPATIBLE ({MKL_COMPATIBLE}): torch computed in this process "
                "before the arithmetic was set (set it first)")
    return None


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
