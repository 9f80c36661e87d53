"""Loaded by the worker processes of tests that put this directory on PYTHONPATH: a task that
carries `"crash": true` kills the process evaluating it (SIGKILL from inside), as a genome whose
evaluation runs the process out of memory or into a native crash would.

Where a test leaves the task as the master planned it, it marks the genome instead: with
CRASHING_GENOMES=DIR in the workers' environment, a genome whose id names a file in DIR kills
the process on its first K evaluations, K being the file's content. Each evaluation of it appends
a line to DIR/<id>.evaluations (which outlives the killed process); the evaluations after the
K-th run as usual, as a task that died on a bad node and then succeeds would. Nothing else changes."""

import os
import signal
from pathlib import Path

from evoarena.worker import worker

_evaluate = worker.Worker._evaluate


def _marked_to_crash(genome_id: str) -> bool:
    """Whether this evaluation of `genome_id` is one of the first K its mark asks to die."""
    marks = os.environ.get("CRASHING_GENOMES")
    mark = Path(marks) / genome_id if marks else None
    if mark is None or not mark.exists():
        return False
    with open(f"{mark}.evaluations", "a+") as counted:
        counted.write("evaluated\n")
        counted.flush()
        counted.seek(0)
        evaluation = len(counted.readlines())
    return evaluation <= int(mark.read_text())


def _evaluate_or_crash(self, task, genome):
    if task.get("crash") or _marked_to_crash(str(task.get("genome", {}).get("id"))):
        os.kill(os.getpid(), signal.SIGKILL)
    return _evaluate(self, task, genome)


worker.Worker._evaluate = _evaluate_or_crash
