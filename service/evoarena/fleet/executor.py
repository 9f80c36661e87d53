"""Executors: how the scheduler's tasks reach workers. The scheduler only ever calls `map`.

- InlineExecutor: one Worker in this process (tests, debugging).
- LocalExecutor: a pool of worker processes on this machine, each with its own parent cache.
- CeleryExecutor (fleet/, next): the same tasks on RabbitMQ for a fleet of worker pods.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Protocol

from ..worker import Worker, WorkerConfig, init_process, run_on, run_task


class Executor(Protocol):
    def map(self, op: str, tasks: list[dict]) -> Iterator[dict]:
        """Run `op` on every task; yield each task's summary as it finishes (any order)."""

    def close(self) -> None: ...


class InlineExecutor:
    """Runs tasks one after another in this process."""

    def __init__(self, config: WorkerConfig):
        self.worker = Worker(config)

    def map(self, op: str, tasks: list[dict]) -> Iterator[dict]:
        for task in tasks:
            yield run_on(self.worker, op, task)

    def close(self) -> None:
        pass


class LocalExecutor:
    """A pool of `workers` processes (spawned: no torch state crosses a fork), each a Worker.

    Tasks are handed out as processes free up, at most `workers` in flight, in the order given:
    the scheduler lists siblings together, so a process that just built a parent tends to get
    that parent's next child and finds it in its cache.
    """

    def __init__(self, config: WorkerConfig, workers: int):
        if config.threads == 0:  # share the cores instead of every process taking them all
            config = WorkerConfig(**{**config.__dict__, "threads": max(1, (os.cpu_count() or 1) // workers)})
        self.workers = workers
        self.pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_process,
            initargs=(config,),
        )

    def map(self, op: str, tasks: list[dict]) -> Iterator[dict]:
        pending, queue = set(), list(reversed(tasks))
        try:
            while queue or pending:
                while queue and len(pending) < self.workers:
                    pending.add(self.pool.submit(run_task, op, queue.pop()))
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
