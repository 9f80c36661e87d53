"""Result documents: their ids, what a task's summary and a lost task's record hold, and the plan.

A result's id is deterministic, so a redelivered task finds its document and never duplicates
it. The master, the executors and the workers all name results with `task_id`; the worker
returns `summary_of` its document; the master records a task that stored nothing with
`lost_result`.

The plan: before it sends a step's tasks, the master stores each task's `plan_entry` (its result
id and a digest of its whole content) in the store's plan of that step. A worker runs only a
task whose entry is planned (worker.Worker.admit), so a forged task (a step the run does not
have, a genome it did not make) or a replayed one with any field changed is refused before
anything is computed or written, with or without a task key.
"""

from __future__ import annotations

import hashlib

from ..genome import canonical

# what a task returns to the master: enough to count it, route its children and report it
SUMMARY_KEYS = ("_id", "genome_id", "key", "fitness", "build", "seconds", "worker", "node", "error", "transient", "holds")


def result_id(experiment: str, generation: int, op: str, genome_ids: list[str]) -> str:
    """The deterministic id of a result document: a redelivered task overwrites, never duplicates."""
    return f"{experiment}:{generation:06d}:{op}:{'+'.join(genome_ids)}"


def task_id(op: str, task: dict) -> str:
    """The result id of `task`: an evaluation is named by its genome, an arena task by its `key`
    (the ids of the members it concerns). The master, the executors and the worker all use this."""
    for key in ("experiment", "generation"):
        if key not in task:
            raise ValueError(f"task lacks {key!r}")
    if not isinstance(task["experiment"], str) or not isinstance(task["generation"], int) or task["generation"] < 0:
        raise ValueError("task 'experiment' must be a string and 'generation' an integer >= 0")
    if "key" in task and (op != "evaluate" or "children" in task):
        names = task["key"]
    elif isinstance(task.get("genome"), dict) and "id" in task["genome"]:
        names = [task["genome"]["id"]]
    else:
        raise ValueError("task needs a 'key' (arena ops) or a 'genome' JSON object with an 'id'")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError("task 'key' must be a non-empty list of ids")
    return result_id(task["experiment"], task["generation"], op, names)


# Fields that carry a task, not part of what it asks: the signature of the message (fleet/signing.py).
TRANSPORT_FIELDS = ("signature",)


def plan_entry(op: str, task: dict) -> str:
    """What the master stores in a step's plan for `task`, and a worker looks up before running it:
    the task's result id and a digest of everything the task asks (its canonical JSON without the
    transport fields), so the same id with any other content is not planned."""
    body = canonical({k: v for k, v in task.items() if k not in TRANSPORT_FIELDS})
    return f"{task_id(op, task)}@{hashlib.sha256(f'{op}|{body}'.encode()).hexdigest()[:32]}"


def settled(doc: dict | None) -> bool:
    """Whether a stored result is its task's outcome: not missing, and not a record of a failure of
    the infrastructure (`transient`), which the task's next run replaces."""
    return doc is not None and not doc.get("transient")


def summary_of(doc: dict) -> dict:
    """The summary of a task from its stored result document (a key it lacks is None)."""
    return {k: doc.get(k) for k in SUMMARY_KEYS}


def lost_result(experiment: str, generation: int, op: str, summary: dict) -> dict:
    """The result document the master records for a task that failed with nothing stored."""
    return {"_id": summary["_id"], "experiment": experiment, "generation": generation, "op": op,
            "genome_id": summary.get("genome_id"), "key": summary.get("key"), "fitness": None, "metrics": {},
            "build": None, "checkpoints": [], "error": summary["error"], "transient": bool(summary.get("transient")),
            "worker": None, "node": None}
