"""InlineExecutor: the scheduler's tasks run one after another by one Worker in this process
(tests, debugging, and a tuning trial's nested experiment on the worker that runs it)."""

from __future__ import annotations

from collections.abc import Iterator

from evoarena.tasks import queue_of, unpack
from evoarena.worker.worker import Worker, WorkerConfig, run_on


class InlineExecutor:
    """Runs tasks one after another in this process."""

    def __init__(self, config: WorkerConfig):
        self.worker = Worker(config)

    def map(self, op: str, tasks: list[dict]) -> Iterator[dict]:
        queue = queue_of(tasks, op)
        while queue:
            yield from unpack(run_on(self.worker, op, queue.pop(0)))

    def close(self) -> None:
        pass
