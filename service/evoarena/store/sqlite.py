"""The embedded result store: one SQLite file that several worker processes write at once.

Each table keeps the whole document as JSON text plus the columns queries filter on. WAL
lets readers proceed while one process writes; busy_timeout makes a writer wait for the lock
instead of failing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

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
    matches,
)

BUSY_TIMEOUT_MS = 30_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (_id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    _id TEXT PRIMARY KEY, experiment TEXT NOT NULL, generation INTEGER NOT NULL,
    op TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS results_by_step ON results (experiment, generation, op);
CREATE TABLE IF NOT EXISTS generations (
    _id TEXT PRIMARY KEY, experiment TEXT NOT NULL, generation INTEGER NOT NULL,
    doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS generations_by_step ON generations (experiment, generation);
CREATE TABLE IF NOT EXISTS baselines (
    _id TEXT PRIMARY KEY, experiment TEXT NOT NULL, kind TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS planned (
    experiment TEXT NOT NULL, generation INTEGER NOT NULL, op TEXT NOT NULL, id TEXT NOT NULL,
    PRIMARY KEY (experiment, generation, op, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (_id TEXT PRIMARY KEY, holder TEXT NOT NULL, doc TEXT NOT NULL);
""" + "".join(
    f"""CREATE TABLE IF NOT EXISTS {name} (
    _id TEXT PRIMARY KEY, experiment TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS {name}_by_experiment ON {name} (experiment, _id);
"""
    for name in ARENA_COLLECTIONS
)

# Connections inherited across fork are never closed in the child: closing one there can
# release the parent's POSIX locks or checkpoint under it. They are kept alive here instead.
_inherited: list[sqlite3.Connection] = []


def _dump(doc: dict[str, Any]) -> str:
    # allow_nan: a diverged network's fitness is NaN and must still be recorded.
    return json.dumps(doc, allow_nan=True, separators=(",", ":"))


def _json_where(where: dict[str, Any]) -> tuple[str, list[Any]]:
    """SQL true for a doc whose fields equal `where` as base.matches means equal. json_extract
    alone would not do: it gives 1 for true, and the text of an array for an array."""
    clauses, params = [], []
    for key, value in where.items():
        path = f"$.{key}"  # check_where let only plain field names through; bound, not pasted
        if isinstance(value, bool):
            clauses.append("json_type(doc, ?) = ?")
            params += [path, "true" if value else "false"]
        elif isinstance(value, int | float):
            clauses.append("json_type(doc, ?) IN ('integer', 'real') AND json_extract(doc, ?) = ?")
            params += [path, path, value]
        else:
            clauses.append("json_type(doc, ?) = 'text' AND json_extract(doc, ?) = ?")
            params += [path, path, value]
    return " AND ".join(clauses), params


class SQLiteStore:
    """ResultStore on a SQLite file (or ":memory:", which is private to one connection)."""

    def __init__(self, path: str | os.PathLike[str], create: bool = True) -> None:
        self.path = str(path)
        self.create = create or self.path == ":memory:"
        if self.create:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._pid = -1
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._connection()

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._conn is not None:  # we are a forked child: start a connection of our own
            _inherited.append(self._conn)
        # isolation_level=None: we issue BEGIN ourselves, so transactions are explicit.
        conn = self._connect()
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(SCHEMA)
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _connect(self) -> sqlite3.Connection:
        """A new connection; without `create`, only to a file that exists (StoreUnavailable if it
        does not: moved, deleted, or its volume not mounted)."""
        if self.create:
            return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        from .mongo import StoreUnavailable

        try:
            uri = f"{Path(self.path).absolute().as_uri()}?mode=rw"
            return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"the SQLite store {self.path} cannot be opened ({exc}); a worker does not "
                                   "create one: the master makes it, and the worker must see the same file") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. IMMEDIATE takes the write lock up front, so a busy
        database makes us wait (busy_timeout) rather than fail halfway through."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._connection().execute(sql, params).fetchall()

    def _docs(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return [json.loads(row[0]) for row in self._query(sql, params)]

    def _doc(self, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        docs = self._docs(sql, params)
        return docs[0] if docs else None

    # experiments

    def put_experiment(self, name: str, doc: dict[str, Any]) -> None:
        text = _dump({**doc, "_id": name})
        with self._write() as conn:
            conn.execute(
                "INSERT INTO experiments (_id, doc) VALUES (?, ?)"
                " ON CONFLICT(_id) DO UPDATE SET doc = excluded.doc",
                (name, text),
            )

    def get_experiment(self, name: str) -> dict[str, Any] | None:
        return self._doc("SELECT doc FROM experiments WHERE _id = ?", (name,))

    def list_experiments(self) -> list[str]:
        return [row[0] for row in self._query("SELECT _id FROM experiments ORDER BY _id")]

    def touch_experiment(self, name: str, **fields: Any) -> bool:
        check_fields(fields)
        with self._write() as conn:  # read and write under the write lock: no other write between
            row = conn.execute("SELECT doc FROM experiments WHERE _id = ?", (name,)).fetchone()
            if row is None:
                return False
            doc = {**json.loads(row[0]), **fields}
            conn.execute("UPDATE experiments SET doc = ? WHERE _id = ?", (_dump(doc), name))
            return True

    # baselines

    def put_baseline(self, experiment: str, kind: str, doc: dict[str, Any]) -> None:
        _id = baseline_id(experiment, kind)
        text = _dump({**doc, "_id": _id, "experiment": experiment, "kind": kind})
        with self._write() as conn:
            conn.execute(
                "INSERT INTO baselines (_id, experiment, kind, doc) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(_id) DO UPDATE SET doc = excluded.doc",
                (_id, experiment, kind, text),
            )

    def get_baseline(self, experiment: str, kind: str) -> dict[str, Any] | None:
        return self._doc("SELECT doc FROM baselines WHERE _id = ?", (baseline_id(experiment, kind),))

    # results

    def put_result(self, doc: dict[str, Any]) -> None:
        self.put_results([doc])

    def put_results(self, docs: list[dict[str, Any]]) -> None:
        for doc in docs:  # check everything before writing anything
            check_result(doc)
        rows = [(d["_id"], d["experiment"], d["generation"], d["op"], _dump(d)) for d in docs]
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO results (_id, experiment, generation, op, doc) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(_id) DO UPDATE SET experiment = excluded.experiment,"
                " generation = excluded.generation, op = excluded.op, doc = excluded.doc",
                rows,
            )

    def add_result(self, doc: dict[str, Any]) -> bool:
        check_result(doc)
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO results (_id, experiment, generation, op, doc) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(_id) DO NOTHING",
                (doc["_id"], doc["experiment"], doc["generation"], doc["op"], _dump(doc)),
            )
            return cursor.rowcount == 1

    def record_result(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        check_result(doc)
        with self._write() as conn:  # read and write under the write lock: no other write between
            row = conn.execute("SELECT doc FROM results WHERE _id = ?", (doc["_id"],)).fetchone()
            if row is not None and (stored := json.loads(row[0])).get("transient") is not True:
                return stored
            conn.execute(
                "INSERT INTO results (_id, experiment, generation, op, doc) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(_id) DO UPDATE SET experiment = excluded.experiment,"
                " generation = excluded.generation, op = excluded.op, doc = excluded.doc",
                (doc["_id"], doc["experiment"], doc["generation"], doc["op"], _dump(doc)),
            )
            return None

    def get_result(self, id: str) -> dict[str, Any] | None:
        return self._doc("SELECT doc FROM results WHERE _id = ?", (id,))

    @staticmethod
    def _where(experiment: str, generation: int | None, op: str | None) -> tuple[str, tuple]:
        clauses, params = ["experiment = ?"], [experiment]
        if generation is not None:
            clauses.append("generation = ?")
            params.append(generation)
        if op is not None:
            clauses.append("op = ?")
            params.append(op)
        return " AND ".join(clauses), tuple(params)

    def find_results(
        self, experiment: str, generation: int | None = None, op: str | None = None
    ) -> list[dict[str, Any]]:
        where, params = self._where(experiment, generation, op)
        return self._docs(f"SELECT doc FROM results WHERE {where} ORDER BY generation, _id", params)

    def count_results(
        self, experiment: str, generation: int | None = None, op: str | None = None
    ) -> int:
        where, params = self._where(experiment, generation, op)
        return self._query(f"SELECT COUNT(*) FROM results WHERE {where}", params)[0][0]

    # generations

    def put_generation(self, experiment: str, generation: int, doc: dict[str, Any]) -> None:
        _id = generation_id(experiment, generation)
        text = _dump({**doc, "_id": _id, "experiment": experiment, "generation": generation})
        with self._write() as conn:
            conn.execute(
                "INSERT INTO generations (_id, experiment, generation, doc) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(_id) DO UPDATE SET doc = excluded.doc",
                (_id, experiment, generation, text),
            )

    def get_generation(self, experiment: str, generation: int) -> dict[str, Any] | None:
        return self._doc(
            "SELECT doc FROM generations WHERE _id = ?", (generation_id(experiment, generation),)
        )

    def list_generations(self, experiment: str) -> list[dict[str, Any]]:
        return self._docs(
            "SELECT doc FROM generations WHERE experiment = ? ORDER BY generation", (experiment,)
        )

    def last_generation(self, experiment: str) -> int | None:
        rows = self._query(
            "SELECT MAX(generation) FROM generations WHERE experiment = ?", (experiment,)
        )
        return rows[0][0]

    # arena collections

    def put_docs(self, collection: str, docs: list[dict[str, Any]]) -> None:
        docs = list(docs)
        check_arena_docs(collection, docs)  # check everything before writing anything
        rows = [(d["_id"], d["experiment"], _dump(d)) for d in docs]
        with self._write() as conn:
            conn.executemany(
                f"INSERT INTO {collection} (_id, experiment, doc) VALUES (?, ?, ?)"
                " ON CONFLICT(_id) DO UPDATE SET experiment = excluded.experiment,"
                " doc = excluded.doc",
                rows,
            )

    def get_doc(self, collection: str, id: str) -> dict[str, Any] | None:
        check_collection(collection)
        return self._doc(f"SELECT doc FROM {collection} WHERE _id = ?", (id,))

    def find_docs(self, collection: str, experiment: str, **where: Any) -> list[dict[str, Any]]:
        return [json.loads(text) for text in self._matching(collection, experiment, where)]

    def count_docs(self, collection: str, experiment: str, **where: Any) -> int:
        return len(self._matching(collection, experiment, where, texts=False))

    def _matching(
        self, collection: str, experiment: str, where: dict[str, Any], texts: bool = True
    ) -> list[str | None]:
        """The JSON text of each doc find_docs returns, in its order; None in place of the
        text of docs compared in SQL when `texts` is false (counting needs no text)."""
        check_collection(collection)
        check_where(where)
        shown = "doc" if texts else "NULL"
        if not where:
            sql = f"SELECT {shown} FROM {collection} WHERE experiment = ? ORDER BY _id"
            return [row[0] for row in self._query(sql, (experiment,))]
        # SQLite's JSON functions reject the NaN and Infinity that _dump writes (json_extract
        # raises "malformed JSON"). CASE keeps them away from such docs; those are fetched
        # whole and compared in Python, by the rule the SQL implements.
        clauses, params = _json_where(where)
        rows = self._query(
            f"SELECT json_valid(doc), CASE WHEN json_valid(doc) THEN {shown} ELSE doc END"
            f" FROM {collection} WHERE experiment = ?"
            f" AND CASE WHEN json_valid(doc) THEN {clauses} ELSE 1 END ORDER BY _id",
            (experiment, *params),
        )
        return [text for valid, text in rows if valid or matches(json.loads(text), where)]

    # plans

    def add_plan(self, experiment: str, generation: int, op: str, ids: list[str]) -> None:
        check_plan(experiment, generation, op, ids)
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO planned (experiment, generation, op, id) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                [(experiment, generation, op, id) for id in ids],
            )

    def planned(self, experiment: str, generation: int, op: str, id: str) -> bool:
        return bool(self._query(
            "SELECT 1 FROM planned WHERE experiment = ? AND generation = ? AND op = ? AND id = ?",
            (experiment, generation, op, id),
        ))

    # leases

    def take_lease(
        self, experiment: str, holder: dict[str, Any], stale_s: float, now: float
    ) -> dict[str, Any] | None:
        check_holder(holder)
        with self._write() as conn:  # read and write under the write lock: no other write between
            row = conn.execute("SELECT doc FROM leases WHERE _id = ?", (experiment,)).fetchone()
            if row is not None:
                stored = json.loads(row[0])
                if stored["id"] != holder["id"] and not stored["beat"] < now - stale_s:
                    return stored
            lease = {**holder, "_id": experiment, "beat": now, "taken": now}
            conn.execute(
                "INSERT INTO leases (_id, holder, doc) VALUES (?, ?, ?) ON CONFLICT(_id) DO UPDATE"
                " SET holder = excluded.holder, doc = excluded.doc",
                (experiment, holder["id"], _dump(lease)),
            )
            return None

    def renew_lease(self, experiment: str, holder_id: str, now: float) -> bool:
        with self._write() as conn:
            row = conn.execute(
                "SELECT doc FROM leases WHERE _id = ? AND holder = ?", (experiment, holder_id)
            ).fetchone()
            if row is None:
                return False
            conn.execute(
                "UPDATE leases SET doc = ? WHERE _id = ?",
                (_dump({**json.loads(row[0]), "beat": now}), experiment),
            )
            return True

    def release_lease(self, experiment: str, holder_id: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM leases WHERE _id = ? AND holder = ?", (experiment, holder_id))

    # lifetime

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn, self._closed = None, True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"
