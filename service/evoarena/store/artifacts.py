"""Where weights live: safetensors files addressed by key (a genome id), checked by sha256.

Weights never travel through pickle (DESIGN.md invariant 7): files are written with
safetensors and read back with safetensors, after their checksum has been verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are read or written: opening a store needs no torch
    import torch

MAX_KEY_LENGTH = 200
_KEY = re.compile(r"[A-Za-z0-9._-]+")


class ArtifactError(Exception):
    """An artifact is missing, corrupt, or not where its URI says."""


class ArtifactStore(Protocol):
    """Named sets of tensors, written once per key and read back by URI."""

    def put(
        self, key: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
    ) -> str:
        """Store `tensors` under `key` (replacing any previous ones); return their URI."""

    def get(self, uri: str) -> dict[str, torch.Tensor]:
        """The tensors at `uri`, verified; ArtifactError when missing or corrupt."""

    def exists(self, key: str) -> bool:
        """Whether `key` has been stored."""


def artifact_key(experiment: str, genome_id: str) -> str:
    """Where a genome's weights are stored: under its experiment, so two experiments whose genomes
    share an id (the same architecture and seeds, another noise table) never overwrite each other."""
    key = f"{experiment}--{genome_id}"
    check_key(key)
    return key


def check_key(key: str) -> None:
    """Raise ValueError unless `key` is safe to use as a file name in any store."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
        raise ValueError(f"artifact key must be a str of 1..{MAX_KEY_LENGTH} chars, got {key!r}")
    if not _KEY.fullmatch(key) or ".." in key or key.startswith("."):
        raise ValueError(
            f"artifact key {key!r} may only hold A-Z a-z 0-9 . _ -, "
            "must not contain '..' and must not start with '.'"
        )


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file, read from its header alone."""
    (header_len,) = struct.unpack("<Q", data[:8])  # safetensors: u64 length, JSON header
    return json.loads(data[8 : 8 + header_len]).get("__metadata__", {})


def verified(data: bytes, expected: str, what: str, source: str) -> bytes:
    """`data` if its sha256 is `expected`; ArtifactError naming `what` and the checksum's `source` if not."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ArtifactError(f"{what} is corrupt: sha256 {actual}, expected {expected} from {source}")
    return data


def _write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalArtifacts:
    """ArtifactStore on a local (or shared-mounted) directory: `key.safetensors` holds the
    tensors and `key.sha256` its checksum, in the format `sha256sum -c` reads."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.safetensors", self.root / f"{key}.sha256"

    def uri(self, key: str) -> str:
        check_key(key)
        return self._paths(key)[0].as_uri()

    def put(
        self, key: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
    ) -> str:
        check_key(key)
        from safetensors.torch import save as save_safetensors

        data = save_safetensors(tensors, metadata)  # fails here, before any file exists
        data_path, sum_path = self._paths(key)
        digest = hashlib.sha256(data).hexdigest()
        _write_atomically(data_path, data)
        _write_atomically(sum_path, f"{digest}  {data_path.name}\n".encode())
        return data_path.as_uri()

    def exists(self, key: str) -> bool:
        check_key(key)
        return all(p.is_file() for p in self._paths(key))

    def _verified_bytes(self, uri: str) -> bytes:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise ArtifactError(f"{self!r} reads file:// URIs, got {uri!r}")
        path = Path(unquote(parsed.path))
        key = path.name.removesuffix(".safetensors")
        if path.parent.resolve() != self.root or path.suffix != ".safetensors":
            raise ArtifactError(f"artifact URI {uri!r} is not a .safetensors file in {self.root}")
        check_key(key)
        data_path, sum_path = self._paths(key)
        try:
            data = data_path.read_bytes()
            expected = sum_path.read_text().split()[0]
        except (FileNotFoundError, IndexError) as e:
            raise ArtifactError(f"artifact {uri!r} is missing or has no checksum: {e}") from None
        return verified(data, expected, f"artifact {uri!r}", sum_path.name)

    def get(self, uri: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load as load_safetensors

        return load_safetensors(self._verified_bytes(uri))

    def metadata(self, uri: str) -> dict[str, str]:
        """The metadata stored with the tensors at `uri` (verified like get)."""
        return safetensors_metadata(self._verified_bytes(uri))

    def __repr__(self) -> str:
        return f"LocalArtifacts({str(self.root)!r})"


def open_artifacts(url_or_path: str | os.PathLike[str]) -> ArtifactStore:
    """The artifact store a directory path, file:// URL or s3://bucket/prefix URL names."""
    text = str(url_or_path)
    if text.startswith("s3://"):
        from .s3 import S3Artifacts  # here, not at the top: s3.py builds on this module

        return S3Artifacts(text)
    if text.startswith("file://"):
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"artifact URL {text!r} must be file:///absolute/path (three slashes)")
        return LocalArtifacts(unquote(parsed.path))
    if "://" in text:
        raise ValueError(
            f"unknown artifact URL {text!r}; accepted: a directory path, file://..., s3://..."
        )
    return LocalArtifacts(text)
