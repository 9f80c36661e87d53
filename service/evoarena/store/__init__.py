"""Where results and weights live: a ResultStore for documents, an ArtifactStore for tensors."""

from __future__ import annotations

import re

from evoarena.store.artifacts import ArtifactError, ArtifactStore, LocalArtifacts, artifact_key, open_artifacts
from evoarena.store.base import ARENA_COLLECTIONS, RESULT_KEYS, ResultStore, check_result, generation_id
from evoarena.store.mongo import MongoStore, StoreUnavailable
from evoarena.store.s3 import S3Artifacts
from evoarena.store.sqlite import SQLiteStore

__all__ = [
    "ARENA_COLLECTIONS",
    "RESULT_KEYS",
    "ArtifactError",
    "ArtifactStore",
    "LocalArtifacts",
    "MongoStore",
    "ResultStore",
    "S3Artifacts",
    "SQLiteStore",
    "StoreUnavailable",
    "artifact_key",
    "check_result",
    "generation_id",
    "open_artifacts",
    "open_store",
    "redact",
]

ACCEPTED_URLS = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite://:memory:, "
    "mongodb://... or mongodb+srv://..."
)


def open_store(url: str, create: bool = True) -> ResultStore:
    """The result store a URL names, e.g. "sqlite:///runs/evoarena.db" or
    "mongodb://user:password@host:27017/evoarena" (the database defaults to evoarena).

    `create=False` (a worker's): a SQLite file that does not exist is not made; opening it raises
    StoreUnavailable, a failure of the infrastructure (the master makes the store, a worker only
    writes into it: a worker that made a fresh empty store where the master's went would refuse
    every task it takes)."""
    if url in ("sqlite://:memory:", "sqlite:///:memory:"):
        return SQLiteStore(":memory:")
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")  # "rel/x.db", or "/abs/x.db" from sqlite:////
        if not path:
            raise ValueError(f"store URL {redact(url)!r} names no file; accepted: {ACCEPTED_URLS}")
        return SQLiteStore(path, create=create)
    if url.startswith(("mongodb://", "mongodb+srv://")):
        return MongoStore(url)
    raise ValueError(f"unknown store URL {redact(url)!r}; accepted: {ACCEPTED_URLS}")


# Query options of a MongoDB (or any) URL whose values are secrets.
_SECRET_OPTION = re.compile(r"(?i)pass|secret|token|authmechanismproperties")


def redact(url: str) -> str:
    """`url` with the password of its user info and the values of secret-looking query
    options replaced by "***": what may appear in logs and error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if "@" in rest:
        # The last "@" ends the user info even when a password holds an unescaped "@", "/"
        # or "?"; should it be in a query value instead, more is hidden, never less.
        user_info, _, rest = rest.rpartition("@")
        user, colon, _password = user_info.partition(":")
        rest = f"{user}{colon and ':***'}@{rest}"
    before, question, query = rest.partition("?")
    if question:
        options = []
        for option in query.split("&"):
            name, equals, _value = option.partition("=")
            options.append(f"{name}=***" if equals and _SECRET_OPTION.search(name) else option)
        query = "&".join(options)
    return f"{scheme}://{before}{question}{query}"
