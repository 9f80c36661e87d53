"""CeleryExecutor: the scheduler's tasks on RabbitMQ, for a fleet of worker processes or pods.

Routing (DESIGN "Fleet"): a task whose genome or parent a live worker holds goes to that
worker's direct queue while its backlog there is short; a task nobody holds goes to the shared
queue, which every worker consumes. A worker with nothing to do takes queued tasks of busy
holders (an idle GPU costs more than one rebuild).

Completion: Celery's result backend (rpc://, JSON) reports each task as it starts and as it
finishes; the store is the source of truth, so pending ids are also looked up there every few
seconds (this carries a run through a broker restart, when replies in flight are lost).

Failures, and who records them (the scheduler writes each once, never over a stored result):
- a task whose worker process dies is delivered again, up to the queues' delivery limit; then the
  broker dead-letters it, and the master reads the dead-letter queue here;
- a task that a worker started and that has not finished a deadline later (twice its op's hard
  time limit, plus a minute) is given up; time spent waiting in a queue does not count;
- a worker is gone when it has not shown itself alive (a heartbeat, a result, a started task, an
  answer to a ping) for the heartbeat window; its direct tasks are sent again on the shared queue under the
  same ids (writes are idempotent), and its queue is deleted. A worker that answers again is
  used again, through the fresh queue it declares when its consumer is cancelled;
- a send to a direct queue that no longer exists comes back from the broker (mandatory publish
  with publisher confirms) and goes to the shared queue instead.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from amqp.exceptions import AMQPError, ChannelError
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.events.event import get_exchange
from celery.result import AsyncResult, ResultSet
from kombu import Queue
from kombu.exceptions import OperationalError

from evoarena import metrics
from evoarena.fleet.app import DIRECT_EXCHANGE, declare_dead_letter_queue, direct_queue, message_limits
from evoarena.fleet.routing import AffinityRouter, BACKLOG
from evoarena.settings import FleetSettings
from evoarena.store import ResultStore
from evoarena.tasks import Feed, built, error_summary, queue_of, sign, stored_summary, task_key, unpack, wanted
from evoarena.tasks import task_id as result_id_of

log = logging.getLogger(__name__)

# what talking to a broker that is restarting raises: kombu's, the socket's, and py-amqp's own
# (CONNECTION_FORCED while RabbitMQ shuts down is none of the first two)
BROKER_ERRORS = (OperationalError, ConnectionError, OSError, AMQPError)
RETRY_POLICY = {"max_retries": None, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 5}


@dataclass
class Sent:
    task: dict
    result: AsyncResult
    node: str | None  # None: on the shared queue
    started: float | None = None  # when a worker reported starting it (time.monotonic)


class CeleryExecutor:
    def __init__(self, app: Celery, store: ResultStore, affinity: bool | None = None, backlog: int | None = None,
                 ping_every: float = 3.0, store_every: float = 2.0, heartbeat_window: float | None = None):
        """`affinity`, `backlog` and `heartbeat_window` default to the fleet's settings (settings.py)."""
        settings = FleetSettings.from_env()
        self.app = app
        self.store = store
        self.router = AffinityRouter() if (settings.affinity if affinity is None else affinity) else None
        self.key = task_key()  # with a key (EVOARENA_TASK_KEY), every task is signed: tasks.py
        self.backlog = backlog or settings.backlog or None
        self.ping_every = ping_every
        self.store_every = store_every
        self.window = heartbeat_window or settings.heartbeat_window_s
        self.dead_letters = declare_dead_letter_queue(app)
        self.heartbeats = self._heartbeat_queue()
        # Live workers, learned from their heartbeats on the fleet's own event exchange and from the
        # tasks they start and finish. Nothing is asked up front: a first ping waits its whole
        # timeout (1 s, 13% of a short arena run in bench/arena_fleet.py).
        self.seen: dict[str, float] = {}  # node -> when it last showed itself alive (time.monotonic)
        self.deadline: float | None = None  # seconds from a task's start; None: from its op's time limit
        # how each task's outcome reached the master: "backend" (the reply queue, the normal way),
        # "store" (a result found by polling the store), "dead" (dead-lettered), "deadline"
        self.outcomes: Counter[str] = Counter()
        self.found_in_store = False  # the last look in the store found pending results
        self.resubscribe = False  # the reply queue must be consumed again (_resubscribe)

    @property
    def nodes(self) -> set[str]:
        """The workers that direct tasks may go to."""
        return set(self.seen)

    def close(self) -> None:
        pass

    def map(self, op: str, tasks: list[dict]) -> Iterator[dict]:
        # siblings that asked for it travel as one message (tasks.py); each child's summary comes back
        for summary in self._map(op, queue_of(tasks, op)):
            yield from unpack(summary)

    def _map(self, op: str, queue: list[dict]) -> Iterator[dict]:
        pending: dict[str, Sent] = {}
        started: set[str] = set()
        # a task running this long after a worker started it has outlived its hard time limit
        # on two deliveries: whatever holds it, it will not finish (a queued task has no deadline)
        deadline = lambda task: self.deadline or message_limits(op, task)[1] * 2 + 60  # noqa: E731
        last_ping = last_store = time.monotonic()
        while queue or pending:
            self._dispatch(op, queue, pending, started)
            metrics.PENDING.set(len(queue) + len(pending))
            # with tasks waiting (or a feed that may grow), return after one result so they go out at once
            yield from self._collect(pending, timeout=0.25, first_only=bool(queue) or isinstance(queue, Feed))
            now = time.monotonic()
            if now - last_store > self.store_every:
                yield from self._from_store(pending)
                yield from self._dead(pending)
                self._hear_workers()
                last_store = now
            if now - last_ping > self.ping_every:
                self._rescue(op, pending)
                last_ping = now
            for task_id in [t for t, s in pending.items() if s.started is not None and now - s.started > deadline(s.task)]:
                sent = pending.pop(task_id)
                self.outcomes["deadline"] += 1
                yield error_summary(task_id, sent.task, f"no result {deadline(sent.task):.0f} s after a worker started it",
                                    transient=True)

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
        payload = sign(task, self.key) if self.key else task
        if node is not None:
            # to the worker's queue through its exchange, never declaring it: a queue that is gone
            # must not be re-created with nobody to read it
            options = {"exchange": DIRECT_EXCHANGE.name, "routing_key": node, "declare": [], "mandatory": True}
            try:
                result = self._publish(op, payload, _id, **options)
            except ChannelError as exc:  # NO_ROUTE: the queue is gone, and the worker with it for now
                log.warning("worker %s has no queue (%s); sending %s to the shared queue", node, exc, _id)
                self.seen.pop(node, None)
                node = None
        if node is None:
            result = self._publish(op, payload, _id)
        pending[_id] = Sent(task, result, node)

    def _publish(self, op: str, payload: dict, _id: str, **options) -> AsyncResult:
        # argsrepr: what monitoring shows of the arguments; without it Celery formats the whole
        # task for display on every send (0.3 ms a task, bench/scale.py)
        soft, hard = message_limits(op, payload)  # a sibling group's scale with its children
        return self.app.send_task(f"evoarena.{op}", args=(payload,), task_id=_id, retry=True, retry_policy=RETRY_POLICY,
                                  argsrepr=f"({_id!r},)", kwargsrepr="{}", soft_time_limit=soft, time_limit=hard, **options)

    # --- receiving --------------------------------------------------------------------------

    def _collect(self, pending: dict[str, Sent], timeout: float, first_only: bool) -> Iterator[dict]:
        """Yield results as they arrive, for up to `timeout` s; with `first_only`, return after the
        first so that the freed worker gets its next task at once."""
        if not pending:
            return
        if self.resubscribe:
            self._resubscribe(pending)
        try:
            for task_id, meta in self.app.backend.iter_native(
                ResultSet([s.result for s in pending.values()]), timeout=timeout, no_ack=True,
                on_message=lambda meta: self._on_state(meta, pending),
            ):
                sent = pending.pop(task_id, None)
                if sent is not None:
                    self.outcomes["backend"] += 1
                    yield self._summary(task_id, sent, meta)
                    if first_only:
                        return
        except CeleryTimeout:
            pass
        except (*BROKER_ERRORS, RuntimeError) as exc:  # RuntimeError: Celery's own reconnection gave up
            if isinstance(exc, RuntimeError) and "reconnect" not in str(exc):
                raise
            log.warning("result backend unreachable (%s); reading results from the store", exc)
            self.resubscribe = True
            time.sleep(timeout)

    def _resubscribe(self, pending: dict[str, Sent]) -> None:
        """Consume the reply queue again, on a fresh connection, declaring the queue first: it is
        auto-delete, so a broker restart that closed our connection may have deleted it, and
        Celery's own reconnection then consumes nothing (results came only from the store, and a
        generation took 8x as long). Replies sent while it was gone are read from the store."""
        backend = self.app.backend
        try:
            with self.app.connection_for_write() as conn:
                backend.binding(conn.default_channel).declare()
            backend.result_consumer.on_after_fork()  # Celery's reset: forget the old connection and consumer
            backend.result_consumer.consume_from(next(iter(pending)))  # one queue carries every reply
        except BROKER_ERRORS as exc:
            log.warning("cannot subscribe to the reply queue yet (%s)", exc)
            return
        self.resubscribe = False
        log.warning("subscribed to the reply queue %s again", backend.oid)

    def _on_state(self, meta: dict, pending: dict[str, Sent]) -> None:
        """Every state a worker reports: STARTED starts the task's deadline, and names a live node."""
        if meta.get("status") == "STARTED" and (sent := pending.get(meta.get("task_id"))) is not None:
            sent.started = time.monotonic()
            node = (meta.get("result") or {}).get("hostname")
            if node:
                self.seen[node] = sent.started

    def _summary(self, task_id: str, sent: Sent, meta: dict) -> dict:
        if meta.get("status") == "SUCCESS":
            summary = meta["result"]
            self._learn(summary.get("node"), sent.task, summary)
            return summary
        return error_summary(task_id, sent.task, f"task failed on the worker: {meta.get('result')}")

    def _learn(self, node: str | None, task: dict, summary: dict | None = None) -> None:
        if not node:
            return
        self.seen[node] = time.monotonic()
        if self.router:
            for genome_id in built(task, summary):
                self.router.record(node, genome_id)

    def _from_store(self, pending: dict[str, Sent]) -> Iterator[dict]:
        """Pending results that are in the store. A result is stored a moment before its reply is
        sent, so one look may find one first; finding some on two looks in a row means replies
        are not arriving, and the reply queue is subscribed to again."""
        found = 0
        for task_id in list(pending):
            summary = stored_summary(self.store, task_id, pending[task_id].task)
            if summary is not None:
                found += 1
                sent = pending.pop(task_id)
                self.outcomes["store"] += 1
                self._learn(summary.get("node"), sent.task, summary)
                yield summary
        if found and self.found_in_store:
            self.resubscribe = True
        self.found_in_store = bool(found)

    def _dead(self, pending: dict[str, Sent]) -> Iterator[dict]:
        """Summaries of our pending tasks that the broker dead-lettered: delivered up to the delivery
        limit with each worker dying on them, or rejected as malformed. Dead letters of tasks this
        master is not waiting for (an earlier master's, a malformed message) are logged and dropped."""
        try:
            with self.app.connection_for_write() as conn:
                queue = self.dead_letters(conn.default_channel)
                while (message := queue.get(no_ack=False, accept=["application/json"])) is not None:
                    task_id = (message.headers or {}).get("id")
                    death = ((message.headers or {}).get("x-death") or [{}])[0]
                    sent = pending.pop(task_id, None)
                    if sent is None:
                        log.warning("dead letter %s (%s): not a task this run is waiting for", task_id, death.get("reason"))
                    else:
                        reason = ("delivered as many times as the delivery limit allows, and the worker process "
                                  "died each time (killed, out of memory, or a crash)"
                                  if death.get("reason") == "delivery_limit" else f"dead-lettered ({death.get('reason')})")
                        self.outcomes["dead"] += 1
                        yield error_summary(task_id, sent.task, reason)
                    message.ack()
        except BROKER_ERRORS as exc:
            log.warning("cannot read the dead-letter queue (%s)", exc)

    # --- liveness ---------------------------------------------------------------------------

    def _heartbeat_queue(self) -> Queue:
        """A queue of this master's own on the fleet's event exchange, for the workers' heartbeats
        (every 2 s, from each worker's main process, however busy its pool), their start and their
        warm shutdown. A worker that KEDA adds is known from its first heartbeat, before it has run
        a task. The broker deletes the queue a minute after this master stops reading it."""
        app = self.app
        with app.connection_for_write() as conn:
            exchange = get_exchange(conn, name=app.conf.event_exchange)
            queue = Queue(f"{app.conf.task_default_queue}.master-{uuid.uuid4().hex[:8]}", exchange,
                          routing_key="worker.#", durable=False, queue_arguments={"x-expires": 60_000})
            exchange(conn.default_channel).declare()
            queue(conn.default_channel).declare()
        return queue

    def _hear_workers(self) -> None:
        """Read the workers' heartbeats since the last look: each names a live worker (a new one
        included); a worker that went offline (a warm shutdown) is dropped at once."""
        try:
            with self.app.connection_for_write() as conn:
                queue = self.heartbeats(conn.default_channel)
                queue.declare()  # again: a broker restart loses it (it is not durable)
                while (message := queue.get(no_ack=True, accept=["application/json"])) is not None:
                    event, node = message.payload, message.payload.get("hostname")
                    if not node:
                        continue
                    if event.get("type") == "worker-offline":
                        self.seen.pop(node, None)
                    else:
                        self.seen[node] = time.monotonic()
        except BROKER_ERRORS as exc:
            log.warning("cannot read the workers' heartbeats (%s)", exc)

    def _ping(self, nodes: list[str]) -> set[str]:
        """The workers among `nodes` that answer within a second (all of them while the broker is down)."""
        try:
            replies = self.app.control.ping(destination=nodes, timeout=1.0, limit=len(nodes))
        except BROKER_ERRORS as exc:
            log.warning("cannot ping workers (%s)", exc)
            return set(nodes)  # the broker is down, not necessarily the workers
        return {node for reply in replies for node in reply}

    def _rescue(self, op: str, pending: dict[str, Sent]) -> None:
        """Ping the workers we wait on that have been quiet for a while; send the direct tasks of
        those quiet for the whole heartbeat window again, on the shared queue."""
        now = time.monotonic()
        waiting_on = {s.node for s in pending.values() if s.node is not None}
        quiet = sorted(n for n in waiting_on if now - self.seen.get(n, 0.0) > self.ping_every)
        if not quiet:
            return
        for node in self._ping(quiet):
            self.seen[node] = time.monotonic()
        dead = {n for n in quiet if now - self.seen.get(n, 0.0) > self.window}
        for node in dead:
            self.seen.pop(node, None)
        for task_id, sent in list(pending.items()):
            if sent.node in dead:
                log.warning("worker %s is gone (silent for %.0f s); sending %s to the shared queue",
                            sent.node, self.window, task_id)
                del pending[task_id]
                self._send(op, sent.task, None, pending, set())
        for node in dead:
            self._delete_direct_queue(node)

    def _delete_direct_queue(self, node: str) -> None:
        """Once a dead worker's tasks are re-sent, nothing should read its queue: a worker that was
        only slow then finds its consumer cancelled and declares a fresh, empty one."""
        try:
            with self.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(direct_queue(node, self.app.conf.task_default_queue).name)
        except BROKER_ERRORS as exc:
            log.warning("could not delete the queue of %s (%s)", node, exc)


def _parent(task: dict) -> str | None:
    """The one parent of an evaluation's mutation child or of a sibling group (None for founders,
    crossover children and arena tasks)."""
    if "parent" in task:
        return task["parent"]["id"]
    parents = task.get("genome", {}).get("parents", [])
    return parents[0] if len(parents) == 1 else None

