"""Algorithms: what the master runs. The master (scheduler.py) knows none of them.

An algorithm turns the stored state of the last complete step into the next step's tasks, and
that step's results into the next state:

    state = None                                   (nothing done yet)
    for index in range(algorithm.steps):
        step  = algorithm.plan(index, state)       an op and a JSON payload per task
        results = run every task of step           (workers write the result documents)
        state = algorithm.advance(index, state, step, results)   stored as step `index`

An event-driven algorithm (the arena's asynchronous fight) has no steps: it reacts to each
task's result as it arrives and may send new tasks at once, so a slow worker never holds the
others back:

    state = algorithm.start()                      its `inflight` tasks are sent
    until algorithm.finished(state):
        task, result = the next task to finish
        state = algorithm.react(state, task, result)   stored; new tasks in its `inflight` are sent

A state is a JSON document; the scheduler stores it once every task of its step has a result,
and starts from the newest stored one after a crash. Algorithms never touch the store: a state
that `advance` or `react` returns may hold, under DOCUMENTS, other documents to store
({collection: [documents with their ids]}, the arena's pure_gen / pure_disc / pure_match_trace);
the scheduler takes them out of the state and writes them before it stores the state. `plan` must be a pure function of
(index, state) so that an interrupted step is planned again identically, and only the tasks
whose results are missing are sent again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

ELO_START = 1500.0
"""The Elo rating a member has before its first match (fitness.elo's `start`)."""

DOCUMENTS = "documents"
"""The key of a returned state under which an algorithm hands the scheduler documents to store."""


def valid(fitness: float | None) -> bool:
    """Whether a fitness may rank a genome: a number, not None (no result) and not NaN (a failed one)."""
    return fitness is not None and not math.isnan(fitness)


def ranked_value(fitness: float | None) -> float:
    """A fitness as a sort key: itself if `valid`, else minus infinity (ranked below every valid one)."""
    return fitness if valid(fitness) else -math.inf


@dataclass(frozen=True)
class Step:
    """One step's work: every task runs `op`; a payload's result id is `tasks.task_id(op, payload)`."""

    op: str
    tasks: list[dict]
    about: list = field(default_factory=list)
    """The algorithm's own objects behind the tasks, in task order (never sent; tasks may be altered in flight)."""


class Algorithm(Protocol):
    steps: int
    """How many steps the experiment has in all."""

    def plan(self, index: int, state: dict | None) -> Step:
        """The tasks of step `index`, from the state after step index - 1 (None before step 0)."""

    def advance(self, index: int, state: dict | None, step: Step, results: list[dict]) -> dict:
        """The state after step `index`; `results` are the stored result documents, one per task, in order."""

    def line(self, index: int, state: dict) -> str:
        """One line saying what step `index` achieved, for the progress output."""


class EventAlgorithm(Protocol):
    op: str
    """The op of every task."""

    def start(self) -> dict:
        """The first state; the tasks of its `inflight` list are sent."""

    def react(self, state: dict, task: dict, result: dict) -> dict:
        """The state after `task`'s result: `task` leaves `inflight`, the tasks it causes join it."""

    def finished(self, state: dict) -> bool:
        """Whether the run is over (nothing in flight, nothing more to send)."""

    def line(self, index: int, state: dict) -> str:
        """One line saying what event `index` changed."""
