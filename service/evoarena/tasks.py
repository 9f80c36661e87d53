"""The task protocol: what the master, the executors and the workers all read of a task beyond
its op's own fields. Results, sibling groups, and how an executor is fed.

Results: their ids, what a task's summary and a lost task's record hold, and the plan. A
result's id is deterministic, so a redelivered task finds its document and never duplicates
it. The master, the executors and the workers all name results with `task_id`; the worker
returns `summary_of` its document; the master records a task that stored nothing with
`lost_result`.

The plan: before it sends a step's tasks, the master stores each task's `plan_entry` (its result
id and a digest of its whole content) in the store's plan of that step. A worker runs only a
task whose entry is planned (worker/worker.py: Worker.admit), so a forged task (a step the run does not
have, a genome it did not make) or a replayed one with any field changed is refused before
anything is computed or written, with or without a task key.

Sibling groups: several children of one parent in one evaluate message.

A GA whose spec sets `ga.eval_group` > 1 marks its evaluate tasks with `eval_group`. An executor
`pack`s the tasks it is given: mutation children of the same parent (same experiment,
generation, problem and noise) travel together, `eval_group` at most per message, as

    {<the fields the children's tasks share: experiment, generation, problem, noise, eval_group>,
     "key":      [first child's id, "siblings-N"]      the message's id (task_id)
     "parent":   the parent's genome JSON (the children's genome without its last delta), once
     "children": [{"delta": the child's last delta, "role": ..., "checkpoint": [...]}, ...]}

so a message grows by one delta per child, not one genome. `children_tasks` gives back the
children's own tasks, equal to those packed (`pack` sends a task alone when it would not be):
the worker runs and stores each as it would run it alone (batched.py scores them in one pass),
each under its own result id, so resume and idempotent writes are those of single tasks. The
worker answers a group with one summary holding each child's (`unpack`). Founders, elites
whose parent has no child in the message, and crossover children go alone.

Signing. Task payloads are signed by the master, so that only it can enqueue work that gets written.

The master and every worker read one key from EVOARENA_TASK_KEY (the chart generates it once
into the release's env Secret, read by every pod). With a key, the CeleryExecutor adds
`signature` = HMAC-SHA256(key, the payload's canonical JSON without it) to each task, and a
worker refuses (writing nothing) a task whose signature is missing or wrong. Without a key
nothing is signed or checked: local runs, where no task crosses a broker.

Executors. The scheduler hands every step's tasks to an `Executor` (worker/inline.py runs them
in this process, fleet/executor.py on a pool of local processes, fleet/celery_executor.py on
the fleet) and reads their summaries back as they finish.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from evoarena.encoding.genome import Delta, Genome, canonical, mutate
from evoarena.settings import Settings
from evoarena.spec.experiment import ExperimentSpec

@dataclass(frozen=True)
class Op:
    """One kind of task, as every layer that handles tasks sees it."""

    limit_share: float  # its hard time limit, as a share of the longest ops' (EVOARENA_TIME_LIMIT_S)
    backlog: int  # tasks that may wait on one worker (running plus queued) while it holds what they need
    worker_op: bool = True  # run by Worker (worker/worker.py); False: a benchmark's stand-in (fleet/app.py)


# Every op of the system. An evaluation takes milliseconds: a second one ready on a worker hides the
# round trip, and it gets half the time limit. Arena ops take seconds: a queued second one only keeps
# an idle worker from taking it (bench/arena_fleet.py). A trial is a whole short arena run
# (worker/trial.py). `sleep` is bench/scale.py's stand-in for GPU work: it holds no genome, so its
# tasks all go to the shared queue, and it has fixed limits (fleet/app.py).
OPS = {
    "evaluate": Op(limit_share=0.5, backlog=2),
    "train_pair": Op(limit_share=1.0, backlog=1),
    "match": Op(limit_share=1.0, backlog=1),
    "cross_train": Op(limit_share=1.0, backlog=1),
    "trial": Op(limit_share=1.0, backlog=1),
    "sleep": Op(limit_share=0.0, backlog=1, worker_op=False),
}
WORKER_OPS = tuple(name for name, op in OPS.items() if op.worker_op)


def envelope(spec: ExperimentSpec, step: int, **fields) -> dict:
    """A task of experiment `spec` at step `step` (its "generation"): the fields every op reads
    (the experiment's name, the step, its problem and noise table), then the op's own `fields`."""
    return {"experiment": spec.name, "generation": step, "problem": spec.problem.model_dump(mode="json"),
            "noise": spec.noise.model_dump(mode="json"), **fields}


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


# Fields that carry a task, not part of what it asks: the signature of the message (tasks.py: signing).
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


OWN_FIELDS = ("genome", "role", "checkpoint")  # per child; every other field is shared by the group
NOT_SHARED = TRANSPORT_FIELDS  # sign the message (tasks.py: signing), not any one child's task


def is_group(task: dict) -> bool:
    return "children" in task


def error_summary(task_id_: str, task: dict, error: str, transient: bool = False) -> dict:
    """The summary of a task that failed with nothing stored (refused, crashed, lost, or its
    infrastructure failed): what the master records once, under the task's result id, where no
    result is stored yet. `transient`: the failure was not the genome's (scheduler.run_step runs
    such a task again when the step is resumed). A group of siblings gets one
    such summary per child, each under the child's own result id."""
    if is_group(task):
        try:
            children = children_tasks(task)
        except (ValueError, KeyError, TypeError):  # not a group our master packed: no child to name
            children = None
        if children is not None:
            return group_summary(task_id_, [error_summary(task_id("evaluate", c), c, error, transient) for c in children])
    genome = task.get("genome")
    return {"_id": task_id_, "genome_id": genome.get("id") if isinstance(genome, dict) else None,
            "key": task.get("key"), "fitness": None, "build": None, "error": error, "transient": transient}


def pack(tasks: list[dict], op: str) -> list[dict]:
    """`tasks` with the siblings that asked for it (`eval_group` > 1), wherever they are in the
    list, packed into group messages of at most `eval_group` children, each where its first member
    was. Only evaluate tasks are packed; a task that would not unpack exactly is left alone, and a
    group of one is sent as the task it is."""
    if op != "evaluate":
        return tasks
    out: list[dict | list[dict]] = []
    open_groups: dict[str, list[dict]] = {}  # parent and shared fields -> the group being filled
    parents: dict[str, Genome | None] = {}
    for task in tasks:
        size = task.get("eval_group", 1)
        parent = _parent_of(task, parents) if size > 1 else None
        if parent is None:
            out.append(task)
            continue
        shared = json.dumps({k: v for k, v in task.items() if k not in OWN_FIELDS}, sort_keys=True)
        group = open_groups.get(parent.id + shared)
        if group is None or len(group) == size:
            group = open_groups[parent.id + shared] = []
            out.append(group)
        group.append(task)
    return [item if isinstance(item, dict) else item[0] if len(item) == 1 else _group(item) for item in out]


def children_tasks(group: dict) -> list[dict]:
    """The children's own tasks, as the master made them (ValueError if the parent's id does not
    match its content)."""
    parent = Genome.from_json(group["parent"])
    return [_child_task(group, child, parent) for child in group["children"]]


def _child_task(group: dict, child: dict, parent: Genome) -> dict:
    shared = {k: v for k, v in group.items() if k not in ("key", "parent", "children", *NOT_SHARED)}
    return {**shared, **{k: v for k, v in child.items() if k != "delta"},
            "genome": mutate(parent, Delta.from_json(child["delta"])).to_json()}


def unpack(summary: dict) -> list[dict]:
    """The summaries of the tasks behind one summary: a group's children's, or the task's own."""
    return list(summary["group"]) if "group" in summary else [summary]


def group_summary(group_id: str, summaries: list[dict]) -> dict:
    """The summary of a group message: its children's summaries, and where it ran."""
    failed = all(s.get("error") for s in summaries)  # the message itself failed (its metrics count it so)
    return {"_id": group_id, "group": summaries, "node": next((s.get("node") for s in summaries), None),
            "worker": next((s.get("worker") for s in summaries), None),
            "error": summaries[0]["error"] if failed and summaries else None,
            "transient": failed and all(s.get("transient") for s in summaries)}


def stored_summary(store, message_id: str, task: dict) -> dict | None:
    """The summary of `task` (result id `message_id`) from the store once its results are all there
    (a group's: every child's); None before. A record of an earlier failure of the infrastructure
    is not this task's result (results.settled): the task was sent again to replace it."""
    if not is_group(task):
        doc = store.get_result(message_id)
        return summary_of(doc) if settled(doc) else None
    docs = [store.get_result(result_id) for result_id in map(_result_id, children_tasks(task))]
    return group_summary(message_id, [summary_of(doc) for doc in docs]) if all(map(settled, docs)) else None


def _result_id(task: dict) -> str:
    return task_id("evaluate", task)


def _group(tasks: list[dict]) -> dict:
    first = tasks[0]
    parent = first["genome"]
    shared = {k: v for k, v in first.items() if k not in OWN_FIELDS}
    return {**shared, "key": [first["genome"]["id"], f"siblings-{len(tasks)}"],
            "parent": {**{k: v for k, v in parent.items() if k != "parents"}, "id": parent["parents"][0],
                       "deltas": parent["deltas"][:-1], "parents": []},
            "children": [{"delta": t["genome"]["deltas"][-1], **{k: t[k] for k in OWN_FIELDS[1:] if k in t}}
                         for t in tasks]}


def _parent_of(task: dict, known: dict[str, Genome | None]) -> Genome | None:
    """The parent of an evaluate task's genome when the task can travel in its parent's group:
    a mutation child (one parent, that parent's deltas plus one) whose task `children_tasks`
    gives back exactly; else None."""
    genome = task.get("genome")
    if not isinstance(genome, dict) or len(genome.get("parents", [])) != 1 or not genome.get("deltas"):
        return None
    if Delta.from_json(genome["deltas"][-1]).kind in ("cross", "morph"):
        return None
    probe = _group([task])
    parent_id = probe["parent"]["id"]
    if parent_id not in known:
        try:
            known[parent_id] = Genome.from_json(probe["parent"])
        except (ValueError, KeyError):
            known[parent_id] = None
    parent = known[parent_id]
    if parent is None or _child_task(probe, probe["children"][0], parent) != task:
        return None
    return parent


# --- the genomes a task names (what a worker that holds them builds cheaply) -----------------------


def task_genomes(task: dict) -> list[dict]:
    """The genomes (JSON) a task names: an evaluation's one, a sibling group's parent (tasks.py),
    or an arena task's `genomes`."""
    if "genomes" in task:
        return task["genomes"]
    return [task["parent"] if "parent" in task else task["genome"]]


def wanted(task: dict) -> list[str]:
    """Ids whose holder builds `task` cheaply: its genomes and their parents."""
    return [i for g in task_genomes(task) for i in (g["id"], *g.get("parents", []))]


def built(task: dict, summary: dict | None = None) -> list[str]:
    """Ids a worker holds in its cache after running `task`: each genome, the one parent of a
    mutation child (a crossover child's parents are not rebuilt), and what the summary says it
    made (`holds`: the genomes an arena task trained; `group`: the children of a sibling group)."""
    ids = []
    for genome in task_genomes(task):
        parents = genome.get("parents", [])
        ids += [genome["id"]] + (parents if len(parents) == 1 else [])
    children = [s["genome_id"] for s in (summary or {}).get("group") or [] if s.get("genome_id")]
    return ids + children + list((summary or {}).get("holds") or [])


# --- signing ----------------------------------------------------------------------------------------

KEY_VARIABLE = "EVOARENA_TASK_KEY"


def task_key() -> bytes | None:
    """The key from the environment (Settings.task_key), or None when none is set."""
    return Settings.from_env().task_key.encode() or None


def signature(task: dict, key: bytes) -> str:
    body = canonical({k: v for k, v in task.items() if k != "signature"}).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def sign(task: dict, key: bytes) -> dict:
    """`task` with its signature."""
    return {**task, "signature": signature(task, key)}


def signed_by(task: dict, key: bytes) -> bool:
    """Whether `task` carries the signature `key` gives it."""
    given = task.get("signature")
    return isinstance(given, str) and hmac.compare_digest(given, signature(task, key))


# --- executors ---------------------------------------------------------------------------------------


class Feed(list):
    """A task list the caller may extend while `map` runs over it: an event-driven algorithm
    (the arena's asynchronous fight) adds a task each time one finishes. Executors consume it."""


def queue_of(tasks: list[dict], op: str) -> list[dict]:
    """What an executor takes tasks from: a Feed itself (it grows while map runs), else a copy in
    which siblings that asked for it travel together (tasks.py: the executor then yields each
    child's summary, `unpack`)."""
    return tasks if isinstance(tasks, Feed) else pack(list(tasks), op)


class Executor(Protocol):
    def map(self, op: str, tasks: list[dict]) -> Iterator[dict]:
        """Run `op` on every task; yield each task's summary as it finishes (any order). A Feed
        may grow while its summaries are consumed: the tasks added are run too."""

    def close(self) -> None: ...
