"""LocalExecutor: the scheduler's tasks on a pool of worker processes on this machine, each with
its own parent cache. The other executors (tasks.Executor): worker/inline.py's InlineExecutor
runs them in this process, celery_executor.py's CeleryExecutor on RabbitMQ for a fleet."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace

from evoarena.encoding.arithmetic import mode as arithmetic_mode
from evoarena.fleet.routing import AffinityRouter, BACKLOG
from evoarena.tasks import built, error_summary, queue_of, task_id, unpack
from evoarena.worker.process import die_with_parent, init_process, run_task
from evoarena.worker.worker import WorkerConfig


class LocalExecutor:
    """A pool of `workers` processes on this machine, each a Worker with its own parent cache.

    Each process is its own single-worker pool (spawned: no torch state crosses a fork) so that
    the AffinityRouter can send a child to the process that built its parent. Each dies with
    this process, `kill -9` included (process.die_with_parent): create and use the executor from
    one thread that outlives it (the main thread), since the kernel ties them to the thread that
    started them.

    Its processes compute in `arithmetic` (arithmetic.py), applied before their first torch
    operation; None: the arithmetic this process computes in when `map` is first called (the
    run's: scheduler.register applies it), fast if it has chosen none.
    """

    def __init__(self, config: WorkerConfig, workers: int, affinity: bool = True, arithmetic: str | None = None):
        if config.threads == 0:  # share the cores instead of every process taking them all
            config = WorkerConfig(**{**config.__dict__, "threads": max(1, (os.cpu_count() or 1) // workers)})
        self.config = config
        self.workers = workers
        self.arithmetic = arithmetic
        self.pools: list[ProcessPoolExecutor] = []  # made by the first map, once the run's arithmetic is known
        self.router = AffinityRouter() if affinity else None

    def _pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_init_pool_process,
                                   initargs=(self.config, os.getpid(), self.arithmetic))

    def map(self, op: str, tasks: list[dict]) -> Iterator[dict]:
        if not self.pools:
            self.arithmetic = self.arithmetic or arithmetic_mode() or "fast"
            if self.arithmetic == "reproducible":  # one torch thread a process (arithmetic.py)
                self.config = replace(self.config, threads=1)
            self.pools = [self._pool() for _ in range(self.workers)]
        backlog = [0] * len(self.pools)
        pending: dict[Future, tuple[int, dict, int]] = {}  # future -> (worker, task, order sent)
        queue = queue_of(tasks, op)
        sent = itertools.count()
        try:
            while queue or pending:
                for worker in range(len(self.pools)):
                    while queue and backlog[worker] < BACKLOG[op]:
                        task = queue.pop(self.router.pick(queue, worker) if self.router else 0)
                        pending[self.pools[worker].submit(run_task, op, task)] = (worker, task, next(sent))
                        backlog[worker] += 1
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: pending[f][2]):
                    if future not in pending:  # already handled with its broken pool
                        continue
                    worker, task, _ = pending[future]
                    if isinstance(future.exception(), BrokenProcessPool):
                        yield from unpack(self._crashed(op, worker, pending, queue))
                        backlog[worker] = 0
                        continue
                    del pending[future]
                    backlog[worker] -= 1
                    summary = future.result()
                    for genome_id in built(task, summary) if self.router else ():
                        self.router.record(worker, genome_id)
                    yield from unpack(summary)
        finally:
            for future in pending:
                future.cancel()

    def _crashed(self, op: str, worker: int, pending: dict, queue: list[dict]) -> dict:
        """Worker process `worker` died (killed, out of memory, a crash in native code): the task it
        was running, its oldest, gets an error summary (the scheduler records it once, as the fleet's
        deadline does, so it is never sent again); the task queued behind it goes back to the queue;
        the worker gets a fresh process."""
        own = sorted((order, f, task) for f, (w, task, order) in pending.items() if w == worker)
        for _, future, _ in own:
            del pending[future]
        (_, _, culprit), *behind = own
        queue[:0] = [task for _, _, task in behind]
        self.pools[worker].shutdown(wait=False, cancel_futures=True)
        self.pools[worker] = self._pool()
        return error_summary(task_id(op, culprit), culprit,
                             "the worker process died running this task (killed, out of memory, or a crash)")

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=True, cancel_futures=True)


def _init_pool_process(config: WorkerConfig, master: int, arithmetic: str) -> None:
    # Ctrl-C reaches the whole process group; the scheduler handles it and closes the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(master)  # kill -9 of the master reaches nobody: the kernel ends this process with it
    init_process(config, arithmetic)
