"""This process's Worker: the one per worker process that keeps the caches between tasks.

A local pool's processes get theirs from the pool's initializer (`init_process`); a Celery pool
process makes its own from the environment on its first task (`process_worker`), after the
process started, so that CUDA is never touched in the parent. Either way the process computes in
its CPU arithmetic (arithmetic.py) before the Worker is made: the run's, given to a local pool's
initializer; the fleet worker's EVOARENA_ARITHMETIC, applied by `evoarena worker` before it forks.

A local pool's process also dies with the master that started it (`die_with_parent`): `kill -9`
of `evoarena run` tells nobody, and a pool process never learns it from its queues (it holds their
write ends itself), so it would run on under PID 1, finish its task and store its results.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

from evoarena.encoding.arithmetic import apply, mode
from evoarena.settings import WorkerSettings
from evoarena.worker.worker import Worker, WorkerConfig, run_on, worker_config

_process_worker: Worker | None = None


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """End this process the moment process `parent`, which started it, ends, however it ends.

    On Linux the kernel does it: PR_SET_PDEATHSIG sends this process SIGKILL when its parent dies
    (strictly, when the parent's thread that started it exits: a pool must be started and used
    by a thread that lives as long as the pool). Elsewhere a daemon thread looks at the parent's
    pid every second. Either way, a parent that died before this was set up (this process then
    already belongs to another) ends this one at once."""
    if not _kill_on_parent_death():
        threading.Thread(target=_watch_parent, args=(parent,), name="exit-with-parent", daemon=True).start()
    if os.getppid() != parent:
        os._exit(1)  # the master is gone already: nobody will read what this process computes


def _kill_on_parent_death() -> bool:
    """Ask the kernel for SIGKILL at the parent's death; whether it was granted (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, every: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def init_process(config: WorkerConfig, arithmetic: str | None = None) -> None:
    """Set up this process's Worker (a pool initializer), having made the process compute in
    `arithmetic` first (arithmetic.apply: before its first torch operation); None: the
    arithmetic the process computes in already, or EVOARENA_ARITHMETIC's (fast if unset)."""
    global _process_worker
    apply(arithmetic or mode() or WorkerSettings.from_env().arithmetic or "fast")
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
