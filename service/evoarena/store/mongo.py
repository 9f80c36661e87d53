"""The fleet's result store: MongoDB, written by every worker as its tasks finish.

Documents are stored as they are, `_id` included, in the collections `experiments`,
`results`, `generations`, `baselines` and the arena's (ARENA_COLLECTIONS) of one database. Every write is
a whole-document upsert by `_id` (DESIGN.md invariant 5), so sending a write again after a
dropped connection can only rewrite the same documents: that is what makes retrying writes
as safe as retrying reads.

The guarded writes (record_result, take_lease, and the plans' and leases' own collections
`planned` and `leases`) are each one operation whose filter carries the guard, never a read and
then a write. Sent again after a dropped connection, each finds its own first write: a lease is
its holder's already, a plan entry is there; a result finds itself stored and is returned as
the stored one (equal to what was sent).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Self, TypeVar
from urllib.parse import unquote

from bson.codec_options import CodecOptions
from pymongo import ASCENDING, DESCENDING, MongoClient, ReplaceOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError
from pymongo.write_concern import WriteConcern

from evoarena.store.base import (
    ARENA_COLLECTIONS,
    baseline_id,
    check_arena_docs,
    check_collection,
    check_fields,
    check_holder,
    check_plan,
    check_result,
    check_where,
    generation_id,
)

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "evoarena"
#: Each operation is tried this many times, waiting FIRST_BACKOFF_S, then twice as long, ...
TRIES = 5
FIRST_BACKOFF_S = 0.2

# (collection, index name, keys, unique). create_index is a no-op when the same index exists.
INDEXES = [
    ("results", "results_by_step", [("experiment", 1), ("generation", 1), ("op", 1)], False),
    ("results", "results_in_order", [("experiment", 1), ("generation", 1), ("_id", 1)], False),
    ("generations", "generations_by_step", [("experiment", 1), ("generation", 1)], True),
] + [
    (name, f"{name}_by_experiment", [("experiment", 1), ("_id", 1)], False)
    for name in ARENA_COLLECTIONS
]

# Clients inherited across fork are never closed in the child (closing one there would end
# sessions on sockets the parent still uses); they are kept alive here instead.
_inherited: list[Any] = []

T = TypeVar("T")

DUPLICATE_KEY = 11000  # MongoDB's error code for an insert whose _id is taken


class StoreUnavailable(RuntimeError):
    """The result store did not answer, even after every retry."""


def database_from_url(url: str) -> str | None:
    """The database a mongodb:// or mongodb+srv:// URL names after its hosts, or None."""
    without_query = url.split("://", 1)[-1].split("?", 1)[0]
    hosts_and_path = without_query.rpartition("@")[2]  # a password may hold "/" or "@"
    return unquote(hosts_and_path.partition("/")[2]) or None


class MongoStore:
    """ResultStore on a MongoDB database.

    `url` is a mongodb:// or mongodb+srv:// URL; its credentials, if any, are the only ones
    used. `database` overrides the one the URL names (default "evoarena"). `client` is an
    already open client (tests pass mongomock.MongoClient()); it is used as it is, never
    closed, and never replaced after fork: that is the caller's to handle.
    """

    def __init__(
        self, url: str | None = None, database: str | None = None, client: Any = None
    ) -> None:
        if url is None and client is None:
            raise ValueError("MongoStore needs a mongodb:// URL or a client")
        from . import redact  # here, not at the top: store/__init__ imports this module

        self.url = url
        self.shown_url = redact(url) if url else repr(client)
        self.database = database or (url and database_from_url(url)) or DEFAULT_DATABASE
        self._owns_client = client is None
        self._client = client
        self._pid = -1  # the process our own client belongs to
        self._db: Database | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._retrying("create indexes", _create_indexes)

    def _database(self) -> Database:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            if self._db is not None and (self._pid == os.getpid() or not self._owns_client):
                return self._db
            if self._owns_client:
                # pymongo clients are not fork-safe: a forked child opens a client of its own.
                if self._client is not None:
                    _inherited.append(self._client)
                self._client = MongoClient(self.url)
                self._pid = os.getpid()
            self._db = self._client.get_database(
                self.database,
                # majority: a result acknowledged to a worker survives a primary failover;
                # with w=1 it could be rolled back after the scheduler has counted it.
                write_concern=WriteConcern(w="majority"),
                codec_options=CodecOptions(document_class=dict),
            )
            return self._db

    def _retrying(self, what: str, operation: Callable[[Database], T]) -> T:
        """operation(database), tried again after connection failures (AutoReconnect,
        NotPrimaryError, timeouts) with doubling waits; StoreUnavailable after TRIES."""
        wait = FIRST_BACKOFF_S
        for attempt in range(1, TRIES + 1):
            try:
                return operation(self._database())
            except ConnectionFailure as e:
                if attempt == TRIES:
                    raise StoreUnavailable(
                        f"MongoDB store {self.shown_url} (database {self.database!r}) did not "
                        f"answer to {what} after {TRIES} tries: {type(e).__name__}: {e}"
                    ) from e
                log.warning(
                    "MongoDB store %s: %s failed (%s: %s); try %d of %d in %.1f s",
                    self.shown_url, what, type(e).__name__, e, attempt + 1, TRIES, wait,
                )
                time.sleep(wait)
                wait *= 2
        raise AssertionError("unreachable")

    # experiments

    def put_experiment(self, name: str, doc: dict[str, Any]) -> None:
        stored = {**doc, "_id": name}
        self._retrying(
            f"write experiment {name!r}",
            lambda db: db.experiments.replace_one({"_id": name}, stored, upsert=True),
        )

    def get_experiment(self, name: str) -> dict[str, Any] | None:
        return self._retrying(
            f"read experiment {name!r}", lambda db: db.experiments.find_one({"_id": name})
        )

    def list_experiments(self) -> list[str]:
        return self._retrying(
            "list experiments",
            lambda db: [d["_id"] for d in db.experiments.find({}, {"_id": 1}).sort("_id", 1)],
        )

    def touch_experiment(self, name: str, **fields: Any) -> bool:
        check_fields(fields)  # plain names only: no "$" operator, no "." path
        written = self._retrying(
            f"set {sorted(fields)} of experiment {name!r}",
            lambda db: db.experiments.update_one({"_id": name}, {"$set": fields}),
        )
        return written.matched_count == 1

    # baselines

    def put_baseline(self, experiment: str, kind: str, doc: dict[str, Any]) -> None:
        _id = baseline_id(experiment, kind)
        stored = {**doc, "_id": _id, "experiment": experiment, "kind": kind}
        self._retrying(
            f"write baseline {_id!r}",
            lambda db: db.baselines.replace_one({"_id": _id}, stored, upsert=True),
        )

    def get_baseline(self, experiment: str, kind: str) -> dict[str, Any] | None:
        _id = baseline_id(experiment, kind)
        return self._retrying(
            f"read baseline {_id!r}", lambda db: db.baselines.find_one({"_id": _id})
        )

    # results

    def put_result(self, doc: dict[str, Any]) -> None:
        self.put_results([doc])

    def put_results(self, docs: list[dict[str, Any]]) -> None:
        for doc in docs:  # check everything before writing anything
            check_result(doc)
        self._replace_all("results", docs)

    def _replace_all(self, collection: str, docs: list[dict[str, Any]]) -> None:
        """Upsert checked docs by `_id`: one write per _id, the last one winning, as if the
        docs were written in turn."""
        latest = {doc["_id"]: doc for doc in docs}
        if not latest:
            return
        writes = [ReplaceOne({"_id": _id}, doc, upsert=True) for _id, doc in latest.items()]
        self._retrying(
            f"write {len(writes)} {collection}",
            lambda db: db[collection].bulk_write(writes, ordered=False),
        )

    def add_result(self, doc: dict[str, Any]) -> bool:
        check_result(doc)
        fields = {k: v for k, v in doc.items() if k != "_id"}
        written = self._retrying(
            f"add result {doc['_id']!r}",
            lambda db: db.results.update_one({"_id": doc["_id"]}, {"$setOnInsert": fields}, upsert=True),
        )
        return written.upserted_id is not None

    def record_result(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        check_result(doc)
        return self._retrying(f"record result {doc['_id']!r}", lambda db: _record(db, doc))

    def get_result(self, id: str) -> dict[str, Any] | None:
        return self._retrying(f"read result {id!r}", lambda db: db.results.find_one({"_id": id}))

    @staticmethod
    def _filter(experiment: str, generation: int | None, op: str | None) -> dict[str, Any]:
        query: dict[str, Any] = {"experiment": experiment}
        if generation is not None:
            query["generation"] = generation
        if op is not None:
            query["op"] = op
        return query

    def find_results(
        self, experiment: str, generation: int | None = None, op: str | None = None
    ) -> list[dict[str, Any]]:
        query = self._filter(experiment, generation, op)
        return self._retrying(
            f"find results {query}",
            lambda db: list(
                db.results.find(query).sort([("generation", ASCENDING), ("_id", ASCENDING)])
            ),
        )

    def count_results(
        self, experiment: str, generation: int | None = None, op: str | None = None
    ) -> int:
        query = self._filter(experiment, generation, op)
        return self._retrying(
            f"count results {query}", lambda db: db.results.count_documents(query)
        )

    # generations

    def put_generation(self, experiment: str, generation: int, doc: dict[str, Any]) -> None:
        _id = generation_id(experiment, generation)
        stored = {**doc, "_id": _id, "experiment": experiment, "generation": generation}
        self._retrying(
            f"write generation {_id!r}",
            lambda db: db.generations.replace_one({"_id": _id}, stored, upsert=True),
        )

    def get_generation(self, experiment: str, generation: int) -> dict[str, Any] | None:
        _id = generation_id(experiment, generation)
        return self._retrying(
            f"read generation {_id!r}", lambda db: db.generations.find_one({"_id": _id})
        )

    def list_generations(self, experiment: str) -> list[dict[str, Any]]:
        return self._retrying(
            f"list generations of {experiment!r}",
            lambda db: list(
                db.generations.find({"experiment": experiment}).sort("generation", ASCENDING)
            ),
        )

    def last_generation(self, experiment: str) -> int | None:
        doc = self._retrying(
            f"find the last generation of {experiment!r}",
            lambda db: db.generations.find_one(
                {"experiment": experiment},
                {"generation": 1},
                sort=[("generation", DESCENDING)],
            ),
        )
        return None if doc is None else doc["generation"]

    # arena collections

    def put_docs(self, collection: str, docs: list[dict[str, Any]]) -> None:
        docs = list(docs)
        check_arena_docs(collection, docs)  # check everything before writing anything
        self._replace_all(collection, docs)

    def get_doc(self, collection: str, id: str) -> dict[str, Any] | None:
        check_collection(collection)
        return self._retrying(
            f"read {collection} {id!r}", lambda db: db[collection].find_one({"_id": id})
        )

    @staticmethod
    def _arena_filter(collection: str, experiment: str, where: dict[str, Any]) -> dict[str, Any]:
        check_collection(collection)
        check_where(where)  # plain field names only: no "$" operator, no "." path
        query: dict[str, Any] = {"experiment": experiment}
        for key, value in where.items():
            query[key] = {"$eq": value, "$type": _bson_type(value)}
        return query

    def find_docs(self, collection: str, experiment: str, **where: Any) -> list[dict[str, Any]]:
        query = self._arena_filter(collection, experiment, where)
        return self._retrying(
            f"find {collection} {query}",
            lambda db: list(db[collection].find(query).sort("_id", ASCENDING)),
        )

    def count_docs(self, collection: str, experiment: str, **where: Any) -> int:
        query = self._arena_filter(collection, experiment, where)
        return self._retrying(
            f"count {collection} {query}", lambda db: db[collection].count_documents(query)
        )

    # plans

    def add_plan(self, experiment: str, generation: int, op: str, ids: list[str]) -> None:
        check_plan(experiment, generation, op, ids)
        docs = [{"_id": plan_entry_id(experiment, generation, op, id), "experiment": experiment,
                 "generation": generation, "op": op, "id": id} for id in dict.fromkeys(ids)]
        if docs:
            self._retrying(
                f"plan {len(docs)} tasks of {generation_id(experiment, generation)}:{op}",
                lambda db: _insert_new(db.planned, docs),
            )

    def planned(self, experiment: str, generation: int, op: str, id: str) -> bool:
        _id = plan_entry_id(experiment, generation, op, id)
        found = self._retrying(
            f"look up plan entry {_id!r}", lambda db: db.planned.find_one({"_id": _id}, {"_id": 1})
        )
        return found is not None

    # leases

    def take_lease(
        self, experiment: str, holder: dict[str, Any], stale_s: float, now: float
    ) -> dict[str, Any] | None:
        check_holder(holder)
        lease = {**holder, "_id": experiment, "beat": now, "taken": now}
        # The filter matches a lease we may take; with none stored the upsert inserts ours, and
        # with a live lease of another holder the upsert's insert fails on its _id.
        takeable = {"_id": experiment, "$or": [{"beat": {"$lt": now - stale_s}}, {"id": holder["id"]}]}

        def take(db: Database) -> dict[str, Any] | None:
            for _ in range(TRIES):
                try:
                    db.leases.replace_one(takeable, lease, upsert=True)
                    return None
                except DuplicateKeyError:
                    stored = db.leases.find_one({"_id": experiment})
                    if stored is not None:
                        return stored
                    # released between our two operations: try again
            raise RuntimeError(f"the lease of {experiment!r} kept changing hands; try again")

        return self._retrying(f"take the lease of {experiment!r}", take)

    def renew_lease(self, experiment: str, holder_id: str, now: float) -> bool:
        written = self._retrying(
            f"renew the lease of {experiment!r}",
            lambda db: db.leases.update_one({"_id": experiment, "id": holder_id}, {"$set": {"beat": now}}),
        )
        return written.matched_count == 1

    def release_lease(self, experiment: str, holder_id: str) -> None:
        self._retrying(
            f"release the lease of {experiment!r}",
            lambda db: db.leases.delete_one({"_id": experiment, "id": holder_id}),
        )

    # lifetime

    def close(self) -> None:
        with self._lock:
            if self._owns_client and self._client is not None and self._pid == os.getpid():
                self._client.close()
            self._client, self._db, self._closed = None, None, True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MongoStore({self.shown_url!r}, database={self.database!r})"


def _bson_type(value: Any) -> str:
    """The BSON type a stored field must have to equal the find_docs filter `value`, so that
    True matches only true, never 1, as base.matches says (mongomock alone would match 1)."""
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, int | float) else "string"


def plan_entry_id(experiment: str, generation: int, op: str, id: str) -> str:
    """The `_id` of one entry of a step's plan in the `planned` collection (experiment names and
    ops hold no ":", so no two entries share one)."""
    return f"{generation_id(experiment, generation)}:{op}:{id}"


def _record(db: Database, doc: dict[str, Any]) -> dict[str, Any] | None:
    """record_result in one guarded upsert: it replaces a transient record, inserts where none
    is stored, and fails on the _id where a real result is stored, which is then returned."""
    for _ in range(TRIES):
        try:
            db.results.replace_one({"_id": doc["_id"], "transient": True}, doc, upsert=True)
            return None
        except DuplicateKeyError:
            stored = db.results.find_one({"_id": doc["_id"]})
            if stored is not None and stored.get("transient") is not True:
                return stored
            # a transient record (or none) appeared between our two operations: try again
    raise RuntimeError(f"result {doc['_id']!r} kept changing while it was recorded; try again")


def _insert_new(collection: Any, docs: list[dict[str, Any]]) -> None:
    """Insert each of `docs` whose _id is not stored yet; the others are left as they are."""
    try:
        collection.insert_many(docs, ordered=False)
    except BulkWriteError as e:
        others = [w for w in e.details.get("writeErrors", []) if w.get("code") != DUPLICATE_KEY]
        if others or e.details.get("writeConcernErrors"):
            raise


def _create_indexes(db: Database) -> None:
    for collection, name, keys, unique in INDEXES:
        db[collection].create_index(keys, name=name, unique=unique)
