"""Where results and weights live: a ResultStore for documents, an ArtifactStore for tensors."""

from __future__ import annotations

from .artifacts import ArtifactError, ArtifactStore, LocalArtifacts, open_artifacts
from .base import RESULT_KEYS, ResultStore, check_result, generation_id
from .sqlite import SQLiteStore

__all__ = [
    "RESULT_KEYS",
    "ArtifactError",
    "ArtifactStore",
    "LocalArtifacts",
    "ResultStore",
    "SQLiteStore",
    "check_result",
    "generation_id",
    "open_artifacts",
    "open_store",
]

ACCEPTED_URLS = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite://:memory:, "
    "mongodb://... or mongodb+srv://..."
)


def open_store(url: str) -> ResultStore:
    """The result store a URL names, e.g. "sqlite:///runs/evoarena.db"."""
    if url in ("sqlite://:memory:", "sqlite:///:memory:"):
        return SQLiteStore(":memory:")
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")  # "rel/x.db", or "/abs/x.db" from sqlite:////
        if not path:
            raise ValueError(f"store URL {url!r} names no file; accepted: {ACCEPTED_URLS}")
        return SQLiteStore(path)
    if url.startswith(("mongodb://", "mongodb+srv://")):
        raise NotImplementedError(
            f"store URL {url!r}: the MongoDB store arrives with the fleet issue; "
            "use sqlite:///path.db for now"
        )
    raise ValueError(f"unknown store URL {url!r}; accepted: {ACCEPTED_URLS}")
