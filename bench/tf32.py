"""What TF32 would do to memorize's fitness, emulated on the CPU: why a GPU worker computes in float32.

On NVIDIA GPUs since Ampere, torch lets cuDNN compute float32 convolutions in TF32 unless told
otherwise: each factor of a product is rounded to TF32's 10 bits of mantissa (float32 keeps 23)
and the products are summed in float32. This bench does the same on a CPU: inside
`tf32_products()`, F.conv2d, F.linear and torch.baddbmm (every product of a memorize network's
evaluation, one network at a time or batched) round their two factors with `tf32` (to nearest,
ties to even) before they compute; biases and sums stay float32. (A GPU's conversion may round
ties away from zero, or drop the 13 bits: errors of the same order, twice as large when dropped.)

It scores 64 siblings of experiments/memorize.yaml's network (bench/batched.py's memorize_case
and siblings: a parent and 64 sigma-0.02 children) by their fitness (minus the mean training
cross-entropy), one by one (memorize.evaluate) and batched (memorize.evaluate_many on batched's
channels-last path, the one a GPU takes: `gpu_layout()`; a CPU takes oneDNN's blocked one), in
float32 and in emulated TF32, and prints the largest over the 64 of:

  (a) |fitness TF32 - fitness float32|, one by one and batched: how far a TF32 GPU worker's
      fitness would be from a CPU worker's for the same genome
  (b) |batched - one by one| under TF32
  (c) |batched - one by one| under float32
  (d) how many siblings' memorized training points (the fitness of problem.fitness "memorized")
      TF32 changes, one by one, and by how many points at most

What they mean for the pin (arithmetic.pin_gpu: every worker's GPU computes in IEEE float32).
Measured on torch 2.13 (CPU): (a) 3.97e-06, (b) 1e-06, (c) 1.44e-08, (d) 2 of 64 siblings by 1.
(b) stays within batched.FITNESS_ATOL (1e-05), so TF32 would not break the batched bound: that
is not why the pin exists. (a) and (d) are: under TF32 a genome's fitness on a GPU worker would
sit more than 250 times float32's own layout difference (c) away from a CPU worker's, and a memorized
count could differ by a whole point.
Bars: (c) <= batched.FITNESS_ATOL, and (a) > 0 (else the emulation never reached a product).
Prints the figures and PASS, or the failed bars and exits 1.

    python bench/tf32.py    # ~30 s of CPU on one core
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from unittest import mock

import torch
import torch.nn.functional as F

from batched import memorize_case, siblings  # bench/batched.py: the memorize network, its data and its siblings

from evoarena.encoding import batched

GROUP = 64
DROPPED_BITS = 13  # float32's 23 bits of mantissa less TF32's 10


def tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 `x` rounded to TF32 (the low DROPPED_BITS of the mantissa cleared), to nearest, ties
    to even; still float32. A carry runs on into the exponent (past the largest TF32, infinity);
    NaN stays NaN."""
    bits = x.view(torch.int32)
    below_half = (1 << (DROPPED_BITS - 1)) - 1
    odd = (bits >> DROPPED_BITS) & 1  # the last kept bit: a tie rounds up only where it is 1
    rounded = ((bits + below_half + odd) & -(1 << DROPPED_BITS)).view(torch.float32)
    return torch.where(x.isnan(), x, rounded)


@contextmanager
def tf32_products() -> Iterator[None]:
    """Inside, F.conv2d, F.linear and torch.baddbmm round both factors of their products to TF32."""
    conv2d, linear, baddbmm = F.conv2d, F.linear, torch.baddbmm
    with (mock.patch.object(F, "conv2d", lambda x, w, *rest, **kw: conv2d(tf32(x), tf32(w), *rest, **kw)),
          mock.patch.object(F, "linear", lambda x, w, *rest, **kw: linear(tf32(x), tf32(w), *rest, **kw)),
          mock.patch.object(torch, "baddbmm", lambda b, x, w, **kw: baddbmm(b, tf32(x), tf32(w), **kw))):
        yield


@contextmanager
def gpu_layout() -> Iterator[None]:
    """Inside, batched passes take the channels-last path a GPU takes, on the CPU as well."""
    with mock.patch.object(batched, "runner", functools.partial(batched.runner, blocked=False)):
        yield


def evaluations(one, many, stacked: torch.Tensor, precision: str) -> dict[str, list[dict]]:
    """memorize_case's evaluations of the `stacked` siblings, one by one and batched (on the GPU's
    layout), in "float32" or in emulated "tf32"."""
    with tf32_products() if precision == "tf32" else nullcontext(), torch.no_grad():
        alone = one(stacked)
        with gpu_layout():
            return {"one by one": alone, "batched": many(stacked)}


def main() -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help; no options
    torch.set_num_threads(1)
    batched.retain_freed_memory()  # as a worker does (Worker.__init__)
    started = time.perf_counter()
    arch, one, many, gap = memorize_case("cpu")
    stacked = siblings(arch, GROUP, "cpu")
    f32, t32 = (evaluations(one, many, stacked, precision) for precision in ("float32", "tf32"))
    a = {mode: gap(t32[mode], f32[mode]) for mode in f32}
    b, c = gap(t32["one by one"], t32["batched"]), gap(f32["one by one"], f32["batched"])
    print(f"memorize network, {GROUP} siblings, fitness = minus the mean training cross-entropy "
          f"(largest over the {GROUP}); batched on the channels-last (GPU) path; torch {torch.__version__}, 1 thread")
    print(f"(a) |TF32 - float32|:              one by one {a['one by one']:.3g}, batched {a['batched']:.3g}")
    print(f"(b) |batched - one by one|, TF32:    {b:.3g}")
    print(f"(c) |batched - one by one|, float32: {c:.3g}   (bar: <= batched.FITNESS_ATOL {batched.FITNESS_ATOL:g})")
    moved = [abs(x["memorized"] - y["memorized"]) for x, y in zip(t32["one by one"], f32["one by one"])]
    print(f"(d) memorized training points, TF32 against float32 (one by one): {sum(map(bool, moved))} of {GROUP} "
          f"siblings differ, by up to {max(moved)}")
    print(f"{time.perf_counter() - started:.0f} s")
    failures = []
    if c > batched.FITNESS_ATOL:
        failures.append(f"FAIL: (c) {c:.3g} > batched.FITNESS_ATOL {batched.FITNESS_ATOL:g}")
    if min(a.values()) == 0:
        failures.append("FAIL: (a) is 0: the TF32 rounding reached no product")
    for failure in failures:
        print(failure)
    if failures:
        return 1
    print("PASS: float32 batched and one by one agree within batched.FITNESS_ATOL on the GPU's layout")
    return 0


if __name__ == "__main__":
    sys.exit(main())
