"""Shared test helpers."""

from __future__ import annotations

from evoarena.store import ResultStore


def evolution(store: ResultStore, name: str) -> list[dict]:
    """The generation docs without what depends on the clock or on how warm the caches were."""
    kept = ("best", "mean", "median", "worst", "evaluated", "errors")
    return [
        {"generation": d["generation"], "parents": d["parents"], "checkpoints": d["checkpoints"],
         "best": d["best"], "stats": {k: d["stats"][k] for k in kept}}
        for d in store.list_generations(name)
    ]
