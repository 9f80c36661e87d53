"""The result store contract: what every backend (SQLite now, MongoDB later) promises.

Documents are JSON-able dicts shaped as MongoDB would hold them: each has an `_id`, and
writing a document whose `_id` already exists replaces the whole document (DESIGN.md
invariant 5: a redelivered task overwrites, never duplicates). Every document a store returns
is a fresh dict: mutating it never changes what is stored.

Beside results, a store keeps the GAN arena's collections (ARENA_COLLECTIONS, named as in the
seed project GAN_evo): generator and discriminator docs, and the traces of their encounters,
which a gen or disc doc points to by the trace doc's `_id`; the baselines an experiment is
compared with (the Adam run of `evoarena baseline`), one doc per kind; and, on the experiment
doc, the master's heartbeat, written field by field (touch_experiment) so that it never undoes
what the master wrote beside it.

Two small collections guard who may write. A step's plan (add_plan, planned) holds the entries of
the tasks the master planned for that step, so that a worker runs only what the master sent. An
experiment's lease (take_lease, renew_lease, release_lease) names the one master running it: a
second master is refused while the lease's `beat` is fresh, and takes it over once it is stale.
Each is kept apart from the experiment doc, which register() replaces whole.
"""

from __future__ import annotations

import math
import re
from typing import Any, Protocol, Self

#: The keys every result document must carry, with the type each must have.
RESULT_KEYS: dict[str, type] = {"_id": str, "experiment": str, "generation": int, "op": str}

#: The GAN arena's collections: generators, discriminators, and their encounter traces.
ARENA_COLLECTIONS = ("pure_gen", "pure_disc", "pure_match_trace")

#: The keys every arena document must carry, with the type each must have.
ARENA_DOC_KEYS: dict[str, type] = {"_id": str, "experiment": str}

# A find_docs filter key: a plain top-level field name. No "." (a path into the doc), no "$"
# (a MongoDB operator), nothing that could leave a SQL string.
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ResultStore(Protocol):
    """Experiments, per-task results and per-generation summaries of evolution runs."""

    def put_experiment(self, name: str, doc: dict[str, Any]) -> None:
        """Insert or replace the experiment `name`; the stored doc gets `_id` = name."""

    def get_experiment(self, name: str) -> dict[str, Any] | None:
        """The experiment doc, or None when no experiment has that name."""

    def list_experiments(self) -> list[str]:
        """The names of all experiments, sorted."""

    def touch_experiment(self, name: str, **fields: Any) -> bool:
        """Set the top-level `fields` of experiment `name`'s doc in one atomic write, leaving every
        other field as stored; return False (writing nothing) when no experiment has that name.

        Raises ValueError naming the field when a field name is not plain (check_fields).
        """

    def put_baseline(self, experiment: str, kind: str, doc: dict[str, Any]) -> None:
        """Insert or replace experiment `experiment`'s baseline of `kind` (e.g. "adam"). The
        stored doc gets `_id` = baseline_id(experiment, kind), `experiment` and `kind`."""

    def get_baseline(self, experiment: str, kind: str) -> dict[str, Any] | None:
        """The baseline doc, or None."""

    def put_result(self, doc: dict[str, Any]) -> None:
        """Insert `doc`, or replace the whole stored doc with the same `_id`.

        Raises ValueError naming the key when one of RESULT_KEYS is missing or mistyped.
        """

    def put_results(self, docs: list[dict[str, Any]]) -> None:
        """put_result for each doc, all or nothing: one bad doc writes none of them."""

    def add_result(self, doc: dict[str, Any]) -> bool:
        """Insert `doc` only if no result with its `_id` is stored, in one atomic write; return
        whether it was written. The master records a task it gave up on this way, so that a real
        result stored meanwhile by a late worker is never overwritten by the record of its loss."""

    def record_result(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        """Write `doc` where no result with its `_id` is stored, or where the stored one records a
        failure that was not the genome's (its `transient` is true), in one atomic write; return
        None. Otherwise write nothing and return the stored doc, for the caller to compare: a
        worker records its result this way, so a redelivered task never replaces a real result.

        Raises ValueError as put_result does.
        """

    def get_result(self, id: str) -> dict[str, Any] | None:
        """The result doc with that `_id`, or None."""

    def find_results(
        self, experiment: str, generation: int | None = None, op: str | None = None
    ) -> list[dict[str, Any]]:
        """Results of `experiment`, optionally of one generation and/or op, sorted by
        (generation, _id)."""

    def count_results(
        self, experiment: str, generation: int | None = None, op: str | None = None
    ) -> int:
        """How many docs find_results would return for the same filters."""

    def put_generation(self, experiment: str, generation: int, doc: dict[str, Any]) -> None:
        """Insert or replace the summary of one generation. The stored doc gets
        `_id` = generation_id(experiment, generation), `experiment` and `generation`."""

    def get_generation(self, experiment: str, generation: int) -> dict[str, Any] | None:
        """The generation doc, or None."""

    def list_generations(self, experiment: str) -> list[dict[str, Any]]:
        """All generation docs of `experiment`, sorted by generation."""

    def last_generation(self, experiment: str) -> int | None:
        """The highest generation that has a generation doc, or None when there is none."""

    def put_docs(self, collection: str, docs: list[dict[str, Any]]) -> None:
        """Insert each doc into `collection`, one of ARENA_COLLECTIONS, or replace the whole
        stored doc with the same `_id`; all or nothing: one bad doc writes none of them.

        Raises ValueError naming the key when one of ARENA_DOC_KEYS is missing or mistyped,
        or listing ARENA_COLLECTIONS when `collection` is not one of them.
        """

    def get_doc(self, collection: str, id: str) -> dict[str, Any] | None:
        """The doc of `collection` with that `_id`, or None."""

    def find_docs(self, collection: str, experiment: str, **where: Any) -> list[dict[str, Any]]:
        """Docs of `experiment` in `collection` whose top-level fields equal `where`
        (e.g. round=3, player=1, role="gen"), sorted by `_id`. See check_where for what a
        filter may hold and matches() for what equal means."""

    def count_docs(self, collection: str, experiment: str, **where: Any) -> int:
        """How many docs find_docs would return for the same arguments."""

    def add_plan(self, experiment: str, generation: int, op: str, ids: list[str]) -> None:
        """Add `ids` to the plan of step (`experiment`, `generation`, `op`), keeping the ids
        already there: two adds at once never lose each other's ids, and adding an id again is
        harmless. The master plans a step's tasks (results.plan_entry) before it sends them.

        Raises ValueError naming the argument when one is mistyped (check_plan).
        """

    def planned(self, experiment: str, generation: int, op: str, id: str) -> bool:
        """Whether `id` is in the plan of step (`experiment`, `generation`, `op`); the plan of
        any other step does not count. One indexed lookup: a worker asks for every task."""

    def take_lease(
        self, experiment: str, holder: dict[str, Any], stale_s: float, now: float
    ) -> dict[str, Any] | None:
        """Take the lease of `experiment` for `holder` ({"id": a unique string, "host", "pid",
        ...}) in one atomic write, when no lease is stored, or the stored lease's `beat` is older
        than `now` - `stale_s`, or it is `holder`'s own: store {**holder, "beat": now, "taken":
        now} and return None. Otherwise write nothing and return the stored lease (its `host`,
        `pid`, `beat`, ...), for the refusal to name.

        Raises ValueError when `holder` is not a dict with a str `id`.
        """

    def renew_lease(self, experiment: str, holder_id: str, now: float) -> bool:
        """Set the `beat` of `experiment`'s lease to `now` if holder `holder_id` still holds it;
        return False, writing nothing, when another took it over or none is stored."""

    def release_lease(self, experiment: str, holder_id: str) -> None:
        """Remove `experiment`'s lease if holder `holder_id` holds it; anyone else's is kept."""

    def close(self) -> None:
        """Release connections; the store must not be used afterwards."""

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


def generation_id(experiment: str, generation: int) -> str:
    """The `_id` of a generation doc; zero-padded so ids sort in generation order."""
    return f"{experiment}:{generation:06d}"


def baseline_id(experiment: str, kind: str) -> str:
    """The `_id` of a baseline doc."""
    return f"{experiment}:baseline:{kind}"


def check_fields(fields: dict[str, Any]) -> None:
    """Raise ValueError unless every key of `fields` is a plain field name (as check_where's)
    other than `_id`: a set written into a doc must not reach into it or rename it."""
    for key in fields:
        if not isinstance(key, str) or not _FIELD_NAME.fullmatch(key) or key == "_id":
            raise ValueError(
                f"field {key!r} cannot be set; accepted: a plain field name (letters, digits and "
                f"'_', not starting with a digit) other than '_id'"
            )


def check_result(doc: dict[str, Any]) -> None:
    """Raise ValueError naming the first key of RESULT_KEYS that `doc` lacks or mistypes."""
    _check_keys(doc, RESULT_KEYS, "result doc")


def check_plan(experiment: str, generation: int, op: str, ids: list[str]) -> None:
    """Raise ValueError naming the argument of add_plan that is mistyped: `experiment` and `op`
    must be str, `generation` an int, `ids` a list of str."""
    for name, value in (("experiment", experiment), ("op", op)):
        if not isinstance(value, str):
            raise ValueError(f"plan {name} must be str, got {value!r} ({type(value).__name__})")
    if not isinstance(generation, int) or isinstance(generation, bool):
        raise ValueError(f"plan generation must be int, got {generation!r} ({type(generation).__name__})")
    if not isinstance(ids, list | tuple) or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"plan ids must be a list of str, got {ids!r}")


def check_holder(holder: dict[str, Any]) -> None:
    """Raise ValueError unless `holder` (take_lease) is a dict whose `id` is a non-empty str."""
    if not isinstance(holder, dict) or not isinstance(holder.get("id"), str) or not holder["id"]:
        raise ValueError(f"a lease holder must be a dict with a non-empty str 'id', got {holder!r}")


def check_collection(collection: str) -> None:
    """Raise ValueError listing ARENA_COLLECTIONS unless `collection` is one of them."""
    if collection not in ARENA_COLLECTIONS:
        raise ValueError(
            f"unknown arena collection {collection!r}; accepted: {', '.join(ARENA_COLLECTIONS)}"
        )


def check_arena_docs(collection: str, docs: list[dict[str, Any]]) -> None:
    """Raise ValueError unless `collection` is an arena collection and every doc carries
    ARENA_DOC_KEYS with their types; the message names the collection and the key."""
    check_collection(collection)
    for doc in docs:
        _check_keys(doc, ARENA_DOC_KEYS, f"{collection} doc")


def check_where(where: dict[str, Any]) -> None:
    """Raise ValueError unless every find_docs filter key is a plain field name (letters,
    digits, "_") and every value is a str, an int, a bool or a float other than NaN."""
    for key, value in where.items():
        if not isinstance(key, str) or not _FIELD_NAME.fullmatch(key):
            raise ValueError(
                f"filter key {key!r} is not a plain field name; accepted: letters, digits and "
                f"'_', not starting with a digit"
            )
        if not isinstance(value, str | int | float) or (
            isinstance(value, float) and math.isnan(value)
        ):
            raise ValueError(
                f"filter {key}={value!r} ({type(value).__name__}): accepted values are "
                f"str, int, bool and float other than NaN"
            )


def matches(doc: dict[str, Any], where: dict[str, Any]) -> bool:
    """Whether every field of `where` is in `doc` and equal to it, as find_docs means equal:
    a bool equals only a bool (True is not 1), a number any number of the same value (3 is
    3.0), a str only a str. Array fields are not compared element-wise here, unlike MongoDB:
    do not filter on them."""
    return all(key in doc and _same(doc[key], value) for key, value in where.items())


def _same(stored: Any, wanted: Any) -> bool:
    if isinstance(wanted, bool) or isinstance(stored, bool):
        return type(stored) is type(wanted) and stored == wanted
    if isinstance(wanted, int | float):
        return isinstance(stored, int | float) and stored == wanted
    return isinstance(stored, str) and stored == wanted


def _check_keys(doc: dict[str, Any], keys: dict[str, type], what: str) -> None:
    """Raise ValueError naming the first of `keys` that `doc` lacks or mistypes."""
    if not isinstance(doc, dict):
        raise ValueError(f"a {what} must be a dict, got {type(doc).__name__}")
    for key, kind in keys.items():
        if key not in doc:
            raise ValueError(f"{what} lacks the required key {key!r} (needs {list(keys)})")
        value = doc[key]
        # bool is an int subclass, but generation=True is a bug, not generation 1.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(
                f"{what} key {key!r} must be {kind.__name__}, "
                f"got {value!r} ({type(value).__name__})"
            )
