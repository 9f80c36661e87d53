"""The shared noise table: one long array of N(0, 1) float32 samples, the same on every machine.

A Gaussian delta is an (offset, sigma) pair: parameter i of the mutated range moves by
``sigma * table[offset + i]``. Because every worker holds the same table, a mutation crosses the
wire as two numbers instead of millions (Such et al. 2017; Salimans et al. 2017).

The table is generated chunk by chunk from ``numpy.random.default_rng([seed, chunk_index])``
(PCG64, platform independent), written once to a file, and memory-mapped by every process that
needs it: the OS page cache shares one copy between all workers on a machine, and a restart
finds the file already built.

NumPy promises no stable streams across versions. The file is named by a fingerprint of the
table (a hash of its first and last chunks as this NumPy generates them), and opening checks the
file's first and last chunks against a fresh generation: a file written by another stream, or any
file of the right size, is rebuilt rather than trusted. tests/test_noise.py pins known values,
so an upgrade that changes the stream fails there first.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

CHUNK = 1 << 20  # samples per generator call; part of the table's definition, never change it


def _chunk(seed: int, index: int) -> np.ndarray:
    return np.random.default_rng([seed, index]).standard_normal(CHUNK, dtype=np.float32)


def generate(seed: int, size: int) -> np.ndarray:
    """The table's content in memory. Use `open_noise` in real code: it builds the file once."""
    out = np.empty(size, dtype=np.float32)
    for index, start in enumerate(range(0, size, CHUNK)):
        stop = min(start + CHUNK, size)
        out[start:stop] = _chunk(seed, index)[: stop - start]
    return out


@dataclass
class NoiseTable:
    """A read-only view of the table, as numpy (memory-mapped) and as torch tensors per device."""

    seed: int
    size: int
    array: np.ndarray
    _on_device: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The whole table as a tensor on `device` (copied there once, then reused)."""
        key = str(torch.device(device))
        if key not in self._on_device:
            with warnings.catch_warnings():
                # The memmap is read-only and nothing ever writes to this tensor.
                warnings.simplefilter("ignore", UserWarning)
                cpu = torch.from_numpy(self.array)
            self._on_device[key] = cpu if key == "cpu" else cpu.to(key)
        return self._on_device[key]

    def slice(self, offset: int, length: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """`length` samples starting at `offset`; raises if the slice would leave the table."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(
                f"noise slice [{offset}, {offset + length}) is outside the table of {self.size} samples"
            )
        return self.tensor(device)[offset : offset + length]

    def sample_offset(self, rng: np.random.Generator, length: int) -> int:
        """A uniformly random offset at which `length` samples fit in the table."""
        if length > self.size:
            raise ValueError(f"a mutation of {length} parameters needs a noise table of at least that size, got {self.size}")
        return int(rng.integers(0, self.size - length + 1))


_open: dict[tuple[int, int, str], NoiseTable] = {}
_lock = threading.Lock()


def _ends(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The table's first chunk and its last (partial) chunk: what its fingerprint hashes."""
    last = (size - 1) // CHUNK
    first = _chunk(seed, 0)[: min(CHUNK, size)]
    return first, (first if last == 0 else _chunk(seed, last)[: size - last * CHUNK])


@lru_cache(maxsize=64)
def fingerprint(seed: int, size: int) -> str:
    """A short hash of the table for (seed, size) as this NumPy generates it."""
    first, last = _ends(seed, size)
    return hashlib.blake2b(first.tobytes() + last.tobytes(), digest_size=8).hexdigest()


def table_path(directory: str | Path, seed: int, size: int) -> Path:
    return Path(directory).expanduser() / f"noise-seed{seed}-size{size}-{fingerprint(seed, size)}.f32"


def _holds_the_table(path: Path, seed: int, size: int) -> bool:
    """Whether the file at `path` is the table: its size, then its first and last chunks."""
    if not path.exists() or path.stat().st_size != size * 4:
        return False
    first, last = _ends(seed, size)
    array = np.memmap(path, dtype=np.float32, mode="r", shape=(size,))
    return bool(np.array_equal(array[: len(first)], first) and np.array_equal(array[size - len(last):], last))


def open_noise(seed: int, size: int, directory: str | Path) -> NoiseTable:
    """The table for (seed, size), built into `directory` if absent, memory-mapped, and memoized per process."""
    path = table_path(directory, seed, size)
    key = (seed, size, str(path))
    with _lock:
        if key in _open:
            return _open[key]
        if not _holds_the_table(path, seed, size):
            _build_file(path, seed, size)
        array = np.memmap(path, dtype=np.float32, mode="r", shape=(size,))
        _open[key] = NoiseTable(seed=seed, size=size, array=array)
        return _open[key]


def _build_file(path: Path, seed: int, size: int) -> None:
    """Write the table to a temporary file and rename it into place, so readers never see half a table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for index, start in enumerate(range(0, size, CHUNK)):
                f.write(_chunk(seed, index)[: min(CHUNK, size - start)].tobytes())
        os.replace(tmp, path)  # atomic: concurrent builders write the same bytes, the last rename wins
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
