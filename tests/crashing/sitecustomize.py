"""Loaded by the worker processes of tests that put this directory on PYTHONPATH: a task that
carries `"crash": true` kills the process evaluating it (SIGKILL from inside), as a genome whose
evaluation runs the process out of memory or into a native crash would. Nothing else changes."""

import os
import signal

from evoarena import worker

_evaluate = worker.Worker._evaluate


def _evaluate_or_crash(self, task, genome):
    if task.get("crash"):
        os.kill(os.getpid(), signal.SIGKILL)
    return _evaluate(self, task, genome)


worker.Worker._evaluate = _evaluate_or_crash
