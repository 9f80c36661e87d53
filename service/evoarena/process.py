"""This process's Worker: the one per worker process that keeps the caches between tasks.

A local pool's processes get theirs from the pool's initializer (`init_process`); a Celery pool
process makes its own from the environment on its first task (`process_worker`), after the
process started, so that CUDA is never touched in the parent.
"""

from __future__ import annotations

from .settings import worker_config
from .worker import Worker, WorkerConfig, run_on

_process_worker: Worker | None = None


def init_process(config: WorkerConfig) -> None:
    """Set up this process's Worker (a pool initializer)."""
    global _process_worker
    _process_worker = Worker(config)


def run_task(op: str, task: dict) -> dict:
    """Run one task in this process's Worker."""
    if _process_worker is None:
        raise RuntimeError("this process has no worker: call init_process(config) first")
    return run_on(_process_worker, op, task)


def process_worker() -> Worker:
    """This process's Worker, created from the environment on first use, on its pool slot's GPU."""
    if _process_worker is None:
        init_process(worker_config(pool_slot()))
    return _process_worker


def pool_slot() -> int:
    """This process's slot in its worker's pool (Celery prefork numbers its processes 0..N-1 and
    gives a replacement the slot of the process it replaces); 0 outside a pool."""
    from billiard.process import current_process

    return getattr(current_process(), "index", 0) or 0
