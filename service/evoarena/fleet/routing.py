"""Cache-affinity routing: send a child to the worker that already holds its parent.

A worker that built a genome keeps it in its parent cache, so the genome's children cost one
delta there and a longer rebuild anywhere else. The router remembers which worker built what;
a worker with room for another task takes the first queued task whose parent it holds, and
the head of the queue when it holds none (an idle worker costs more than one rebuild).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


# Tasks that may wait on one worker (running plus queued) while it holds what they need. An
# evaluation takes milliseconds: a second one ready to start hides the round trip. Arena tasks
# take seconds: a queued second one only keeps an idle worker from taking it (bench/arena_fleet.py).
# The benchmark's stand-in op (bench/scale.py: a sleep for GPU work) holds no genome, so its tasks
# all go to the shared queue and its backlog is never reached; 1, as for the arena's long tasks.
BACKLOG = {"evaluate": 2, "train_pair": 1, "match": 1, "cross_train": 1, "trial": 1, "sleep": 1}


class AffinityRouter:
    def __init__(self, remember: int = 100_000):
        self.remember = remember
        self._holder: OrderedDict[str, int] = OrderedDict()

    def record(self, worker: Hashable, genome_id: str) -> None:
        """`worker` has built `genome_id` (and so caches it, for a while)."""
        self._holder[genome_id] = worker
        self._holder.move_to_end(genome_id)
        if len(self._holder) > self.remember:
            self._holder.popitem(last=False)

    def holder(self, genome_id: str) -> Hashable | None:
        return self._holder.get(genome_id)

    def pick(self, queue: list[dict], worker: Hashable, lookahead: int = 256) -> int:
        """Index in `queue` of the task `worker` should take next: the first task whose genome or
        parent it holds, else the head of the queue (an idle worker costs more than a rebuild)."""
        for i, task in enumerate(queue[:lookahead]):
            if any(self._holder.get(g) == worker for g in wanted(task)):
                return i
        return 0


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
