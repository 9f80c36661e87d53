"""The Celery app of the fleet: JSON only, late acks, one task at a time per process.

Queues (all RabbitMQ quorum queues, which RabbitMQ 3.10 and 4.x both support):
- the shared queue (`EVOARENA_QUEUE`, default "evoarena"), which every worker consumes;
- a queue of each worker's own (`direct_queue`: `<node>.dq2`, deleted by the broker when unused
  for `EVOARENA_DIRECT_QUEUE_EXPIRES_S`), through which the scheduler sends a child to the worker
  that holds its parent;
- the dead-letter queue `<shared>.dead`: a task delivered `EVOARENA_DELIVERY_LIMIT` times without
  being acknowledged (each time, the process running it died), and one rejected as malformed or
  as a task the worker does not have (a benchmark task sent to a worker with a key), goes there
  instead of back to a worker; the master reads it and records the task's error once.
Tasks are thin: each calls `worker.run_on`, the same function the local executors call.

How the broker counts (DESIGN "Fleet"): x-delivery-limit is a limit on returns, not on
deliveries. A quorum queue counts the times a message came back to it and dead-letters it when
that count goes above x-delivery-limit, so x-delivery-limit L means L + 1 deliveries, and 0 means
one delivery, never a second. The queues are declared with EVOARENA_DELIVERY_LIMIT - 1, so that a
task runs at most EVOARENA_DELIVERY_LIMIT times (seen on 3.10: x-delivery-limit 0, 1, 2, 3 gave
1, 2, 3, 4 deliveries, for basic.reject, basic.nack and a closed channel alike; 4.x compares its
count with the limit the same way, and only a negative limit means none). Where the versions
differ is what counts as a return: up to 4.2, every return of a message to its queue; from 4.3,
only failed deliveries (basic.reject with requeue, which Celery sends when a worker process dies
mid-task, and a closed channel, when the whole worker dies), while basic.nack does not. Both count
the cases this limit is for.

Time limits: a task is killed after its op's hard limit; a group of siblings gets its op's limits
times its children, up to the longest op's (`message_limits`, sent with each message). RabbitMQ's
consumer_timeout (the time a delivery may stay unacknowledged; the chart sets it) must be longer
than the longest hard limit, or the broker closes the channel of a worker that is still busy.
"""

from __future__ import annotations

import functools
import logging
import os
import time

from celery import Celery
from celery.signals import celeryd_after_setup, setup_logging, worker_process_shutdown, worker_ready
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu import Exchange, Queue

from evoarena import logs, metrics
from evoarena.settings import FleetSettings
from evoarena.tasks import OPS, WORKER_OPS, is_group, task_id, task_key
from evoarena.worker import worker as work
from evoarena.worker.process import process_worker


SLEEP_LIMITS = (60.0, 120.0)  # bench/scale.py's stand-in for GPU work (tasks.OPS): it only sleeps


def time_limits(longest_s: float) -> dict[str, tuple[float, float]]:
    """(soft, hard) time limits in seconds per op (tasks.OPS), from the hard limit of the longest
    ops (the arena's, EVOARENA_TIME_LIMIT_S) and each op's share of it; each op's soft limit (an
    exception the task can still report) comes a sixth before its hard one (the process is killed).
    Long training is split into chunks well below these."""
    return {name: (longest_s * op.limit_share * 5 / 6, longest_s * op.limit_share) if op.worker_op else SLEEP_LIMITS
            for name, op in OPS.items()}


TIME_LIMITS = time_limits(FleetSettings.from_env().time_limit_s)
LONGEST_TASK_S = max(hard for _, hard in TIME_LIMITS.values())


def message_limits(op: str, task: dict, limits: dict[str, tuple[float, float]] = TIME_LIMITS) -> tuple[float, float]:
    """(soft, hard) time limits of one message: its op's, times its number of children for a group
    of siblings (tasks.py: its worker runs them all), and at most the longest op's limits, which
    the broker's consumer_timeout and the workers' grace period are set above. A group that needs
    longer needs a smaller ga.eval_group or a higher EVOARENA_TIME_LIMIT_S. The executor sends them
    with the message (Celery's per-message limits) and waits by them."""
    soft, hard = limits[op]
    longest = max(h for _, h in limits.values())
    scale = min(len(task["children"]) if is_group(task) else 1, longest / hard)
    return soft * scale, hard * scale


def broker_url() -> str:
    return FleetSettings.from_env().broker_url


def shared_queue() -> str:
    return FleetSettings.from_env().queue


def _task_queue_arguments(queue: str) -> dict:
    """A task queue's arguments: quorum, a delivery limit, and dead letters to `<queue>.dead`.
    RabbitMQ's x-delivery-limit counts returns, not deliveries (the module docstring): a task
    delivered at most EVOARENA_DELIVERY_LIMIT times is x-delivery-limit one less; 0 is one delivery."""
    return {"x-queue-type": "quorum", "x-delivery-limit": FleetSettings.from_env().delivery_limit - 1,
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead_letter_queue(queue).name}


def task_queue(queue: str) -> Queue:
    """The shared queue every worker of the fleet consumes."""
    return Queue(queue, durable=True, queue_arguments=_task_queue_arguments(queue))


def dead_letter_queue(queue: str) -> Queue:
    """Where the broker puts the tasks of `queue` and of its workers' direct queues that it gave
    up on; the master reads it (fleet/celery_executor.py), nobody else consumes it."""
    return Queue(f"{queue}.dead", durable=True, queue_arguments={"x-queue-type": "quorum"})


def direct_queue(node: str, queue: str) -> Queue:
    """Worker `node`'s own queue (`<node>.dq2` on the C.dq2 exchange) in the fleet of shared queue
    `queue`. The broker deletes it once nobody has used it for EVOARENA_DIRECT_QUEUE_EXPIRES_S
    seconds, so a worker that stopped, normally or not, leaves nothing behind for long. Only the
    worker declares it; the master publishes to the exchange with `mandatory` set, so a send to a
    queue that is gone comes back to it (fleet/celery_executor.py) instead of re-creating it."""
    expires_ms = int(FleetSettings.from_env().direct_queue_expires_s * 1000)
    return Queue(f"{node}.dq2", DIRECT_EXCHANGE, routing_key=node, durable=True,
                 queue_arguments={**_task_queue_arguments(queue), "x-expires": expires_ms})


DIRECT_EXCHANGE = Exchange("C.dq2", type="direct", durable=True)


class Consumer(CeleryConsumer):
    """Celery's consumer without native delayed delivery: quorum queues switch it on, and it
    declares 2 exchanges and 28 queues for ETA and countdown tasks, which the fleet never sends
    (a transient failure is retried in the worker, after a wait: worker.run_on).

    And a message it cannot run is dead-lettered with one short log line (`refuse`): one over
    EVOARENA_MESSAGE_MAX_BYTES or naming no task in its headers before anything decodes it, one
    that is not a task, names an unknown task or does not decode where Celery finds it. Celery's
    own handlers write the message's whole body into the log (a 20 MB body without headers wrote
    134 MB and doubled the worker's peak memory), and acknowledge, so drop, one they cannot decode."""

    class Blueprint(CeleryConsumer.Blueprint):
        default_steps = [s for s in CeleryConsumer.Blueprint.default_steps if "delayed_delivery" not in s]

    def create_task_handler(self, *args, **kwargs):
        on_task_received = super().create_task_handler(*args, **kwargs)
        limit = FleetSettings.from_env().message_max_bytes

        def on_checked_message(message):
            problem = unreadable(message, limit)
            if problem is not None:
                return refuse(message, problem, self.connection_errors)
            return on_task_received(message)

        return on_checked_message

    def on_unknown_message(self, body, message):
        refuse(message, "not a task message", self.connection_errors)

    def on_unknown_task(self, body, message, exc):
        refuse(message, "a task this worker does not have", self.connection_errors)

    def on_invalid_task(self, body, message, exc):
        refuse(message, f"an invalid task ({type(exc).__name__})", self.connection_errors)

    def on_decode_error(self, message, exc):
        refuse(message, f"an undecodable body ({type(exc).__name__})", self.connection_errors)


def make_app(broker: str | None = None, queue: str | None = None) -> Celery:
    settings = FleetSettings.from_env()
    queue = queue or settings.queue
    app = Celery("evoarena", broker=broker or broker_url(), backend="rpc://")
    app.conf.update(
        # invariant 7: nothing but JSON crosses the broker, in either direction
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # a task is acknowledged when it is done, and requeued if its worker dies mid-way
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_default_queue=queue,
        task_queues=[task_queue(queue)],
        worker_direct=False,  # each worker adds direct_queue(its node) itself: Celery's has no expiry
        worker_consumer="evoarena.fleet.app:Consumer",
        # publisher confirms: a send returns once the broker has the task, and a `mandatory` send
        # to a direct queue that no longer exists fails at once (NO_ROUTE) instead of vanishing
        broker_transport_options={"confirm_publish": True},
        # a worker reports when it starts a task: the master's deadline counts from there
        task_track_started=True,
        task_default_delivery_mode="persistent",
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        result_expires=3600,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,  # the per-task JSON lines go to stdout as they are
        # task events for Flower (and `celery events`): received, started, succeeded, failed...
        # from the workers. Not "sent" from the master: one more confirmed publish per task
        # halved the master's dispatch ceiling (bench/scale.py), and Flower lists tasks without it.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=False,
        # events and remote control (pings) on exchanges of this fleet's own: another fleet on the
        # same broker neither answers our pings nor floods our Flower with its tasks
        event_exchange=f"{queue}.ev",
        control_exchange=queue,
    )
    # shared=False on every task: each app built here has its own tasks, and a process that builds
    # several (the tests) does not register one app's tasks in the next (Celery's
    # DuplicateTaskNameWarning)
    for op in WORKER_OPS:
        _register(app, op)

    # The benchmark tasks run whatever they are sent, unsigned (they store nothing, but sleep
    # holds a worker process for up to 2 minutes): a worker with a task key (tasks.py: signing)
    # does not have them, so it runs only the ops the master signs; the benchmarks and the tests
    # that use them run without a key. Celery rejects a task it does not have (dead-lettered).
    if task_key() is None:
        @app.task(name="evoarena.noop", bind=True, shared=False)
        def noop(self) -> dict:
            """Does nothing: bench/dispatch.py measures the fleet's per-task overhead with it."""
            return {"node": self.request.hostname}

        @app.task(name="evoarena.whoami", bind=True, shared=False)
        def whoami(self) -> dict:
            """Which pool process answered, and the device it computes on (tests/test_fleet.py checks
            that each process of a multi-GPU worker has its own)."""
            worker = process_worker()
            return {"node": self.request.hostname, "pid": os.getpid(), "device": worker.config.device}

        @app.task(name="evoarena.sleep", bind=True, shared=False, soft_time_limit=TIME_LIMITS["sleep"][0],
                  time_limit=TIME_LIMITS["sleep"][1], Strategy="evoarena.fleet.app:checked_strategy")
        def sleep(self, task: dict) -> dict:
            """Sleeps task["seconds"] and returns the summary an op returns, storing nothing: the stand-in
            for GPU work with which bench/scale.py measures how many workers one master keeps busy."""
            time.sleep(task["seconds"])
            return {"_id": task_id("sleep", task), "genome_id": task["genome"]["id"], "fitness": 0.0,
                    "build": None, "seconds": task["seconds"], "worker": None, "error": None,
                    "node": self.request.hostname}

    return app


def declare_dead_letter_queue(app: Celery) -> Queue:
    """Declare the dead-letter queue of `app`'s shared queue (the broker drops a dead letter that
    has no queue to go to): the master and every worker do, whoever starts first."""
    queue = dead_letter_queue(app.conf.task_default_queue)
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=10)
        queue(conn.default_channel).declare()
    return queue


@celeryd_after_setup.connect
def _consume_direct_queue(sender: str, instance, **kwargs) -> None:
    """A worker consumes its own direct queue besides the shared one."""
    instance.app.amqp.queues.select_add(direct_queue(sender, instance.app.conf.task_default_queue))
    declare_dead_letter_queue(instance.app)


@worker_process_shutdown.connect
def _forget_process(pid: int, **kwargs) -> None:
    metrics.process_ended(pid)


@setup_logging.connect
def _json_logs(loglevel: int | None = None, **kwargs) -> None:
    """A worker's every line is JSON (what `kubectl logs` shows: logs.py): Celery leaves logging
    to whoever receives this signal, so every library's records go through logs.setup; Celery's
    banner is off (`--quiet`, cli/main.py; `_ready` says the same in one line), and the lines its signal
    handlers write straight to stdout (`worker: Warm shutdown`) go through logs.say."""
    import celery.apps.worker

    logs.setup(level=loglevel or FleetSettings.from_env().log_level, everything=True)
    celery.apps.worker.safe_say = lambda message, f=None: logs.say(message)


@worker_ready.connect
def _ready(sender, **kwargs) -> None:
    """The one line that replaces Celery's banner: who is consuming what."""
    logs.event({"event": "worker ready", "node": sender.hostname, "broker": sender.connection.as_uri(),
                "queues": sorted(q.name for q in sender.task_consumer.queues),
                "concurrency": sender.controller.concurrency})


LOGGED_BYTES = 64
"""Of a refused message, a worker logs its size and at most this many of its first bytes."""


def unreadable(message, limit: int) -> str | None:
    """Why a message is refused before anything decodes it, or None: a body over `limit` bytes
    (EVOARENA_MESSAGE_MAX_BYTES), or headers that name no task (Celery would decode the whole body
    to look for a protocol-1 task in it; the master sends protocol 2, the name in the headers)."""
    size = len(message.body or b"")
    if size > limit:
        return f"a body of {size:,} bytes; at most {limit:,} are accepted (EVOARENA_MESSAGE_MAX_BYTES)"
    if not isinstance((message.headers or {}).get("task"), str):
        return "no task name in its headers"
    return None


def refuse(message, problem: str, connection_errors: tuple, task: str | None = None) -> None:
    """Reject `message` without requeueing it, so the broker dead-letters it to `<queue>.dead` for an
    operator to see, and log one JSON line: the task and id it names, why, its size and its first
    LOGGED_BYTES bytes, each cut short, never the whole message."""
    headers, body = message.headers or {}, message.body or b""
    logs.event({"rejected": _cut(task or headers.get("task")), "id": _cut(headers.get("id")), "why": problem,
                "bytes": len(body), "head": repr(body[:LOGGED_BYTES]) + ("..." if len(body) > LOGGED_BYTES else "")})
    message.reject_log_error(logging.getLogger(__name__), connection_errors, requeue=False)


def _cut(value, limit: int = 100):
    """A header value for a log line: a string cut to `limit` characters; of anything else, its type."""
    if value is None or (isinstance(value, str) and len(value) <= limit):
        return value
    return value[: limit - 3] + "..." if isinstance(value, str) else f"<{type(value).__name__}>"


def malformed(message) -> str | None:
    """Why a task message is not one our master sends (Celery's protocol 2 with one JSON object as
    the only argument), or None. Celery itself unpacks the body in the worker's main process, so a
    body of another shape (`{"hello": "world"}`) would stop the worker, and every worker after it."""
    headers = message.headers or {}
    if not isinstance(headers.get("id"), str):
        return "no task id in its headers"
    try:
        body = message.payload
    except Exception as exc:  # noqa: BLE001 - whatever the decoder says, the message is unreadable
        return f"an undecodable body ({type(exc).__name__})"
    if not (isinstance(body, (list, tuple)) and len(body) == 3):
        return "a body that is not [args, kwargs, embed]"
    args, kwargs, embed = body
    if not (isinstance(args, list) and len(args) == 1 and isinstance(args[0], dict)):
        return "arguments that are not one JSON object (the task)"
    if kwargs or not isinstance(kwargs, dict) or not isinstance(embed, dict):
        return "keyword arguments, or an embed that is not an object"
    return None


def checked_strategy(task, app, consumer, **kwargs):
    """Celery's default strategy behind `malformed`: a message of the wrong shape is rejected
    (dead-lettered where the queue has a dead-letter exchange, else dropped) with one log line,
    before Celery parses it, and the worker goes on."""
    from celery.worker.strategy import default

    handler = default(task, app, consumer, **kwargs)

    def checked(message, body, ack, reject, callbacks, **kw):
        problem = malformed(message)
        if problem is None:
            return handler(message, body, ack, reject, callbacks, **kw)
        return refuse(message, problem, consumer.connection_errors, task=task.name)

    return checked


def _register(app: Celery, op: str) -> None:
    soft, hard = TIME_LIMITS[op]

    @app.task(name=f"evoarena.{op}", bind=True, shared=False, soft_time_limit=soft, time_limit=hard,
              Strategy="evoarena.fleet.app:checked_strategy")
    def task(self, payload: dict) -> dict:
        started = time.perf_counter()
        worker = process_worker()
        worker.node = self.request.hostname
        # two JSON lines per task on stdout, for `kubectl logs`, with the same keys first: this one
        # (outcome "started"), and the end line (outcome ok, error, transient or refused: metrics.outcome)
        which = {"task": self.request.id, "op": op, "experiment": payload.get("experiment"), "node": worker.node}
        logs.event({"event": "task started", **which, "outcome": "started",
                    # a delivery the broker made before (its worker died before acknowledging it)
                    "redelivered": bool((self.request.delivery_info or {}).get("redelivered"))})
        summary = work.run_on(worker, op, payload)
        summary["node"] = worker.node
        metrics.record_task(op, summary, time.perf_counter() - started, worker.cache_bytes())
        logs.event({"event": "task done", **which, "outcome": metrics.outcome(summary),
                    "genome": payload.get("genome", {}).get("id"),
                    "children": len(payload.get("children", [])),  # a sibling group (tasks.py); 0: a single task
                    "build": summary.get("build"), "hit_rate": round(worker.hit_rate(), 4),
                    **({"losses": _losses(worker, summary)} if op == "train_pair" else {}),
                    "error": summary.get("error"), "seconds": round(time.perf_counter() - started, 4)},
                   level="INFO" if summary.get("error") is None else "ERROR")
        return summary


def _losses(worker, summary: dict) -> dict | None:
    """How a train_pair chunk ended (the mean of its last steps' losses and accuracies), from its
    stored result: the summary the master gets does not carry it."""
    if summary.get("error"):
        return None
    try:
        doc = worker.store.get_result(summary["_id"])
    except Exception as exc:  # noqa: BLE001 - the task is done and stored: a log line must not undo it
        logging.getLogger(__name__).warning("losses of %s not read back: %s", summary["_id"], exc)
        return None
    return {k: round(v, 6) for k, v in (doc or {}).get("last", {}).items()} or None


@functools.cache
def default_app() -> Celery:
    """This process's Celery app from the environment (make_app()), built the first time it is asked for."""
    return make_app()


def __getattr__(name: str):
    # `app` (what `celery -A evoarena.fleet.app` and `evoarena worker` use) is built when first read,
    # not when the module is imported: importing it reads no setting and builds no connection pool
    if name == "app":
        return default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
