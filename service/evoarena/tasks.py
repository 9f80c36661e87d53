"""The task protocol, what the master and the workers both read of a task beyond its op's own
fields: the summaries of failed tasks (`error_summary`), and sibling groups.

Sibling groups: several children of one parent in one evaluate message.

A GA whose spec sets `ga.eval_group` > 1 marks its evaluate tasks with `eval_group`. An executor
`pack`s the tasks it is given: mutation children of the same parent (same experiment,
generation, problem and noise) travel together, `eval_group` at most per message, as

    {<the fields the children's tasks share: experiment, generation, problem, noise, eval_group>,
     "key":      [first child's id, "siblings-N"]      the message's id (results.task_id)
     "parent":   the parent's genome JSON (the children's genome without its last delta), once
     "children": [{"delta": the child's last delta, "role": ..., "checkpoint": [...]}, ...]}

so a message grows by one delta per child, not one genome. `children_tasks` gives back the
children's own tasks, equal to those packed (`pack` sends a task alone when it would not be):
the worker runs and stores each as it would run it alone (batched.py scores them in one pass),
each under its own result id, so resume and idempotent writes are those of single tasks. The
worker answers a group with one summary holding each child's (`unpack`). Founders, elites
whose parent has no child in the message, and crossover children go alone.
"""

from __future__ import annotations

import json

from .genome import Delta, Genome, mutate
from .store.results import TRANSPORT_FIELDS, settled, summary_of
from .store.results import task_id as result_task_id

OWN_FIELDS = ("genome", "role", "checkpoint")  # per child; every other field is shared by the group
NOT_SHARED = TRANSPORT_FIELDS  # sign the message (fleet/signing.py), not any one child's task


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
            return group_summary(task_id_, [error_summary(result_task_id("evaluate", c), c, error, transient) for c in children])
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


def stored_summary(store, task_id: str, task: dict) -> dict | None:
    """The summary of `task` (result id `task_id`) from the store once its results are all there
    (a group's: every child's); None before. A record of an earlier failure of the infrastructure
    is not this task's result (results.settled): the task was sent again to replace it."""
    if not is_group(task):
        doc = store.get_result(task_id)
        return summary_of(doc) if settled(doc) else None
    docs = [store.get_result(result_id) for result_id in map(_result_id, children_tasks(task))]
    return group_summary(task_id, [summary_of(doc) for doc in docs]) if all(map(settled, docs)) else None


def _result_id(task: dict) -> str:
    return result_task_id("evaluate", task)


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
