"""Cache-affinity routing: send a child to the worker that already holds its parent.

A worker that built a genome keeps it in its parent cache, so the genome's children cost one
delta there and a longer rebuild anywhere else. The router remembers which worker built what;
a worker with room for another task takes the first queued task whose parent it holds, and
the head of the queue when it holds none (an idle worker costs more than one rebuild).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from evoarena.tasks import OPS, wanted


BACKLOG = {name: op.backlog for name, op in OPS.items()}  # tasks.OPS says why


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
