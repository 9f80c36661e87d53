"""bench/tf32.py's `tf32`: float32 rounded to TF32's 10 bits of mantissa, to nearest, ties to even,
checked on hand-worked bit patterns (a float32 is 1 sign bit, 8 of exponent, 23 of mantissa; TF32
keeps the top 10 of the mantissa, so bit 13 is its last and 0x1000 is half of its last place)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH_DIR))  # the bench imports its neighbour (batched)
_spec = importlib.util.spec_from_file_location("tf32_bench", BENCH_DIR / "tf32.py")
tf32_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tf32_bench)


def rounded_bits(bits: int) -> int:
    """The bits of tf32(the float32 whose bits are `bits`), as an unsigned 32-bit number."""
    signed = bits - (1 << 32) if bits >= 1 << 31 else bits
    x = torch.tensor([signed], dtype=torch.int32).view(torch.float32)
    return tf32_bench.tf32(x).view(torch.int32).item() & 0xFFFFFFFF


@pytest.mark.parametrize("bits, expected", [
    (0x3F800000, 0x3F800000),  # 1.0 is a TF32 number
    (0x3F800FFF, 0x3F800000),  # below half of the last place: down
    (0x3F801000, 0x3F800000),  # a tie, last kept bit even (0): stays
    (0x3F801001, 0x3F802000),  # above half: up
    (0x3F803000, 0x3F804000),  # a tie, last kept bit odd (1): up to even
    (0xBF803000, 0xBF804000),  # negative: the magnitude rounds the same way
    (0x3FFFF000, 0x40000000),  # a tie, odd: the carry runs into the exponent, 1.99987... -> 2.0
    (0x7F7FF000, 0x7F800000),  # the same above TF32's largest number: infinity
    (0x7F800000, 0x7F800000),  # infinity stays
    (0x00001000, 0x00000000),  # a subnormal tie, even: down to 0
    (0x00003000, 0x00004000),  # a subnormal tie, odd: up
])
def test_tf32_rounds_to_nearest_ties_to_even(bits, expected):
    assert rounded_bits(bits) == expected


@pytest.mark.parametrize("bits", [0x7FC00000, 0x7F800001])  # a quiet NaN; one whose payload is all in the dropped bits
def test_tf32_keeps_nan_a_nan(bits):
    assert rounded_bits(bits) & 0x7FFFFFFF > 0x7F800000
