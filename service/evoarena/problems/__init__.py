"""What a fitness means: the problems, built in and your own.

A problem is anything offering these functions (`Problem`); the built-in ones are modules
(memorize.py, atari.py), and one of your own is named in the experiment file by import path
(spec/user_problem.py). `evolve/` never looks inside a problem: the GA and PSO ask it for the
network's architecture, and workers for its data and its scores.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from evoarena.problems import atari, memorize
from evoarena.spec.user_problem import UserProblemError, allowed, load

PROBLEMS = {"memorize": memorize, "atari": atari}


class Problem(Protocol):
    """What the GA, PSO and the workers ask of a problem. `problem` is the experiment's problem
    section as a dict (a problem of your own finds its fields in `problem["fields"]`); `network`
    the experiment's `network` section as a dict."""

    def make_data(self, problem: dict, device: torch.device | str) -> Any:
        """What scoring needs (data, an environment's settings), made once per worker process."""

    def architecture(self, problem: dict, network: dict) -> dict:
        """The network every genome encodes, as an architecture (encoding/arch.py, encoding/nets.py)."""

    def evaluate(self, arch: dict, flat: torch.Tensor, data: Any) -> dict:
        """One network's score: {"fitness": a float (higher is better), other metrics...}."""

    # Optional: evaluate_many(arch, stacked, data) -> [metrics, ...] scores a group of siblings in
    # batched passes (encoding/batched.py); evaluate_task(arch, flat, data, task) replaces evaluate
    # where the score depends on the task (atari: its episode seeds); baseline(...) trains the
    # network with gradients for `evoarena baseline`.


class ProblemRefused(UserProblemError):
    """A task names a problem this worker may not import (not in EVOARENA_PROBLEM_MODULES)."""


def problem_of(problem: dict, trusted: tuple[str, ...] | None = None):
    """The Problem of experiment problem section `problem`: a built-in one, or the user's by its
    import path. With `trusted` (a worker's EVOARENA_PROBLEM_MODULES), a user problem outside
    those modules is refused (ProblemRefused) before anything is imported."""
    if problem["kind"] in PROBLEMS:
        return PROBLEMS[problem["kind"]]
    if problem["kind"] != "user":
        raise UserProblemError(f"problem kind {problem['kind']!r} has no evaluation here (a gan problem runs "
                               "in an arena)")
    if trusted is not None and not allowed(problem["path"], trusted):
        raise ProblemRefused(f"problem {problem['path']!r} is not in this worker's EVOARENA_PROBLEM_MODULES "
                             f"({', '.join(trusted) or 'empty'}): it imports no module it was not told to trust")
    return load(problem["path"])
