"""The result store contract: what every backend (SQLite now, MongoDB later) promises.

Documents are JSON-able dicts shaped as MongoDB would hold them: each has an `_id`, and
writing a document whose `_id` already exists replaces the whole document (DESIGN.md
invariant 5: a redelivered task overwrites, never duplicates). Every document a store returns
is a fresh dict: mutating it never changes what is stored.
"""

from __future__ import annotations

from typing import Any, Protocol, Self

#: The keys every result document must carry, with the type each must have.
RESULT_KEYS: dict[str, type] = {"_id": str, "experiment": str, "generation": int, "op": str}


class ResultStore(Protocol):
    """Experiments, per-task results and per-generation summaries of evolution runs."""

    def put_experiment(self, name: str, doc: dict[str, Any]) -> None:
        """Insert or replace the experiment `name`; the stored doc gets `_id` = name."""

    def get_experiment(self, name: str) -> dict[str, Any] | None:
        """The experiment doc, or None when no experiment has that name."""

    def list_experiments(self) -> list[str]:
        """The names of all experiments, sorted."""

    def put_result(self, doc: dict[str, Any]) -> None:
        """Insert `doc`, or replace the whole stored doc with the same `_id`.

        Raises ValueError naming the key when one of RESULT_KEYS is missing or mistyped.
        """

    def put_results(self, docs: list[dict[str, Any]]) -> None:
        """put_result for each doc, all or nothing: one bad doc writes none of them."""

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

    def close(self) -> None:
        """Release connections; the store must not be used afterwards."""

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


def generation_id(experiment: str, generation: int) -> str:
    """The `_id` of a generation doc; zero-padded so ids sort in generation order."""
    return f"{experiment}:{generation:06d}"


def check_result(doc: dict[str, Any]) -> None:
    """Raise ValueError naming the first key of RESULT_KEYS that `doc` lacks or mistypes."""
    if not isinstance(doc, dict):
        raise ValueError(f"a result must be a dict, got {type(doc).__name__}")
    for key, kind in RESULT_KEYS.items():
        if key not in doc:
            raise ValueError(
                f"result doc lacks the required key {key!r} (needs {list(RESULT_KEYS)})"
            )
        value = doc[key]
        # bool is an int subclass, but generation=True is a bug, not generation 1.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(
                f"result doc key {key!r} must be {kind.__name__}, "
                f"got {value!r} ({type(value).__name__})"
            )
