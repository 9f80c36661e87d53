"""CeleryExecutor: the scheduler's tasks on RabbitMQ, for a fleet of worker processes or pods.

Routing (DESIGN "Fleet"): a task whose genome or parent a live worker holds goes to that
worker's direct queue while its backlog there is short; a task nobody holds goes to the shared
queue, which every worker consumes. A worker with nothing to do takes queued tasks of busy
holders (an idle GPU costs more than one rebuild).

Completion: Celery's result backend (rpc://, JSON) reports each task as it finishes; the store
is the source of truth, so pending ids are also looked up there every few seconds (this is what
carries a run through a broker restart, when replies in flight are lost).

Dead workers: a worker's direct queue is deleted with its connection, and the tasks in it with
it. Workers holding direct tasks are pinged; one that does not answer is dropped and its tasks
are sent again on the shared queue under the same ids (writes are idempotent).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult, ResultSet
from kombu.exceptions import OperationalError

from ..store import ResultStore
from ..worker import error_summary
from ..worker import task_id as result_id_of
from .app import TIME_LIMITS, direct_queue
from .executor import Feed, queue_of
from .routing import BACKLOG, AffinityRouter, built, wanted
from .signing import sign, task_key

log = logging.getLogger(__name__)

RETRY_POLICY = {"max_retries": None, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 5}


@dataclass
class Sent:
    task: dict
    result: AsyncResult
    node: str | None  # None: on the shared queue
    at: float


class CeleryExecutor:
    def __init__(self, app: Celery, store: ResultStore, affinity: bool = True, backlog: int | None = None,
                 ping_every: float = 3.0, store_every: float = 2.0):
        self.app = app
        self.store = store
        self.router = AffinityRouter() if affinity else None
        self.key = task_key()  # with a key (EVOARENA_TASK_KEY), every task is signed: fleet/signing.py
        self.backlog = backlog
        self.ping_every = ping_every
        self.store_every = store_every
        # Live workers, learned from the results they return: a worker that ran a task of ours
        # consumes our queue. Nothing is asked up front: a first ping waits its whole timeout
        # (1 s, 13% of a short arena run in bench/arena_fleet.py), may be answered by another
        # fleet's workers on the same broker, and is useless while nobody holds anything yet.
        self.nodes: set[str] = set()

    def close(self) -> None:
        pass

    def map(self, op: str, tasks: list[dict]) -> Iterator[dict]:
        queue = queue_of(tasks)
        pending: dict[str, Sent] = {}
        started: set[str] = set()
        deadline = TIME_LIMITS[op][1] * 2 + 60  # a task this late crashed every worker that took it
        last_ping = last_store = time.monotonic()
        while queue or pending:
            self._dispatch(op, queue, pending, started)
            # with tasks waiting (or a feed that may grow), return after one result so they go out at once
            yield from self._collect(pending, timeout=0.25, first_only=bool(queue) or isinstance(queue, Feed))
            now = time.monotonic()
            if now - last_store > self.store_every:
                yield from self._from_store(pending)
                last_store = now
            if now - last_ping > self.ping_every:
                self._rescue(op, pending)
                last_ping = now
            for task_id in [t for t, s in pending.items() if now - s.at > deadline]:
                sent = pending.pop(task_id)
                yield error_summary(task_id, sent.task,
                                    f"no result after {deadline:.0f} s: the task may crash the workers that take it")

    # --- sending ----------------------------------------------------------------------------

    def _dispatch(self, op: str, queue: list[dict], pending: dict[str, Sent], started: set[str]) -> None:
        """Send what can be sent now. `started`: parents with a child already sent in this map call."""
        live = sorted(self.nodes)
        held = {n: sum(1 for s in pending.values() if s.node == n) for n in live}
        shared_busy = any(s.node is None for s in pending.values())
        # tasks nobody live holds go to the shared queue at once
        for task in [t for t in queue if self._holder(t) is None]:
            queue.remove(task)
            self._send(op, task, None, pending, started)
        for node in live:
            while queue and held[node] < (self.backlog or BACKLOG[op]):
                index = self.router.pick(queue, node) if self.router else 0
                if self._holder(queue[index]) != node:
                    if held[node] > 0 or shared_busy:
                        break  # only an idle worker takes another holder's task
                    # It takes a whole sibling group the holder has not started (else the task the
                    # holder would reach last), and the group's parent with it: the siblings then
                    # follow it through its direct queue, which runs in order, and find the parent cached.
                    index = next((i for i, t in enumerate(queue) if _parent(t) not in started), len(queue) - 1)
                    if self.router and (parent := _parent(queue[index])):
                        self.router.record(node, parent)
                self._send(op, queue.pop(index), node, pending, started)
                held[node] += 1

    def _holder(self, task: dict) -> str | None:
        if not self.router:
            return None
        for genome_id in wanted(task):
            node = self.router.holder(genome_id)
            if node in self.nodes:
                return node
        return None

    def _send(self, op: str, task: dict, node: str | None, pending: dict[str, Sent], started: set[str]) -> None:
        started.add(_parent(task))
        _id = result_id_of(op, task)
        options = {"queue": direct_queue(node)} if node else {}
        payload = sign(task, self.key) if self.key else task
        result = self.app.send_task(f"evoarena.{op}", args=(payload,), task_id=_id, retry=True,
                                    retry_policy=RETRY_POLICY, **options)
        pending[_id] = Sent(task, result, node, time.monotonic())

    # --- receiving --------------------------------------------------------------------------

    def _collect(self, pending: dict[str, Sent], timeout: float, first_only: bool) -> Iterator[dict]:
        """Yield results as they arrive, for up to `timeout` s; with `first_only`, return after the
        first so that the freed worker gets its next task at once."""
        if not pending:
            return
        try:
            for task_id, meta in self.app.backend.iter_native(
                ResultSet([s.result for s in pending.values()]), timeout=timeout, no_ack=True
            ):
                sent = pending.pop(task_id, None)
                if sent is not None:
                    yield self._summary(task_id, sent, meta)
                    if first_only:
                        return
        except CeleryTimeout:
            pass
        except (OperationalError, ConnectionError, OSError) as exc:
            log.warning("result backend unreachable (%s); reading results from the store", exc)
            time.sleep(timeout)

    def _summary(self, task_id: str, sent: Sent, meta: dict) -> dict:
        if meta.get("status") == "SUCCESS":
            summary = meta["result"]
            self._learn(summary.get("node"), sent.task, summary)
            return summary
        return error_summary(task_id, sent.task, f"task failed on the worker: {meta.get('result')}")

    def _learn(self, node: str | None, task: dict, summary: dict | None = None) -> None:
        if not node:
            return
        self.nodes.add(node)
        if self.router:
            for genome_id in built(task, summary):
                self.router.record(node, genome_id)

    def _from_store(self, pending: dict[str, Sent]) -> Iterator[dict]:
        for task_id in list(pending):
            doc = self.store.get_result(task_id)
            if doc is not None:
                sent = pending.pop(task_id)
                summary = {k: doc.get(k) for k in ("_id", "genome_id", "fitness", "build", "seconds", "worker", "error",
                                                   "node", "holds")}
                self._learn(doc.get("node"), sent.task, summary)
                yield summary

    # --- liveness ---------------------------------------------------------------------------

    def _ping(self, nodes: list[str] | None = None) -> set[str]:
        """The workers among `nodes` (all, for None) that answer within a second."""
        try:
            replies = self.app.control.ping(destination=nodes, timeout=1.0, limit=len(nodes) if nodes else None)
        except (OperationalError, ConnectionError, OSError) as exc:
            log.warning("cannot ping workers (%s)", exc)
            return set(nodes or ())  # the broker is down, not necessarily the workers
        return {node for reply in replies for node in reply}

    def _rescue(self, op: str, pending: dict[str, Sent]) -> None:
        """Send again, on the shared queue, the direct tasks of workers that stopped answering."""
        waiting_on = sorted({s.node for s in pending.values() if s.node is not None})
        if not waiting_on:
            return
        alive = self._ping(waiting_on)
        dead = set(waiting_on) - alive
        self.nodes -= dead
        for task_id, sent in list(pending.items()):
            if sent.node in dead:
                log.warning("worker %s is gone; sending %s to the shared queue", sent.node, task_id)
                del pending[task_id]
                self._send(op, sent.task, None, pending, set())
        for node in dead:
            self._delete_direct_queue(node)

    def _delete_direct_queue(self, node: str) -> None:
        """A dead worker's direct queue is durable; once its tasks are re-sent, nothing should read it."""
        try:
            with self.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(direct_queue(node).name)
        except (OperationalError, ConnectionError, OSError) as exc:
            log.warning("could not delete the queue of %s (%s)", node, exc)


def _parent(task: dict) -> str | None:
    """The one parent of an evaluation's mutation child (None for founders, crossover children
    and arena tasks)."""
    parents = task.get("genome", {}).get("parents", [])
    return parents[0] if len(parents) == 1 else None

