"""The Celery app of the fleet: JSON only, late acks, one task at a time per process.

Workers consume the shared queue (`EVOARENA_QUEUE`, default "evoarena") and a queue of their
own (`direct_queue`: `<node>.dq2`, deleted by the broker when unused for an hour), through which
the scheduler sends a child to the worker that holds its parent. Tasks are thin: each calls `worker.run_on`, the same
function the local executors call.

Time limits: a task is killed after its op's hard limit. RabbitMQ's consumer_timeout (the time
a delivery may stay unacknowledged; the chart sets it) must be longer than the longest hard
limit, or the broker closes the channel of a worker that is still busy.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from celery import Celery
from celery.signals import celeryd_after_setup
from kombu import Exchange, Queue

from .. import worker as work

# (soft, hard) limits in seconds per op. Long training is split into chunks below these.
TIME_LIMITS = {
    "evaluate": (600, 900),
    "train_pair": (1500, 1800),
    "match": (1500, 1800),
    "cross_train": (1500, 1800),
}
LONGEST_TASK_S = max(hard for _, hard in TIME_LIMITS.values())


def broker_url() -> str:
    return os.environ.get("EVOARENA_BROKER_URL") or "amqp://guest:guest@127.0.0.1:5672//"


def shared_queue() -> str:
    return os.environ.get("EVOARENA_QUEUE") or "evoarena"


def direct_queue(node: str) -> Queue:
    """Worker `node`'s own queue (Celery's `<node>.dq2` on the C.dq2 exchange), which the broker
    deletes once nobody has used it for EVOARENA_DIRECT_QUEUE_EXPIRES_S seconds (default an hour):
    a worker that stopped, normally or not, leaves nothing behind for long. The worker and the
    master declare it through this one function, and must see the same setting (the chart gives
    both the same environment): RabbitMQ refuses a redeclaration with other arguments."""
    expires_s = float(os.environ.get("EVOARENA_DIRECT_QUEUE_EXPIRES_S") or 3600)
    return Queue(f"{node}.dq2", Exchange("C.dq2", type="direct"), routing_key=node, durable=True,
                 queue_arguments={"x-expires": int(expires_s * 1000)})


def make_app(broker: str | None = None, queue: str | None = None) -> Celery:
    queue = queue or shared_queue()
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
        task_queues=[Queue(queue, durable=True)],
        worker_direct=False,  # each worker adds direct_queue(its node) itself: Celery's has no expiry
        task_default_delivery_mode="persistent",
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        result_expires=3600,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,  # the per-task JSON lines go to stdout as they are
        worker_send_task_events=False,
    )
    for op in work.OPS:
        _register(app, op)

    @app.task(name="evoarena.noop", bind=True)
    def noop(self) -> dict:
        """Does nothing: bench/dispatch.py measures the fleet's per-task overhead with it."""
        return {"node": self.request.hostname}

    return app


@celeryd_after_setup.connect
def _consume_direct_queue(sender: str, instance, **kwargs) -> None:
    """A worker consumes its own direct queue besides the shared one."""
    instance.app.amqp.queues.select_add(direct_queue(sender))


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
        print(json.dumps({"rejected": task.name, "id": (message.headers or {}).get("id"), "why": problem}),
              file=sys.stdout, flush=True)
        message.reject_log_error(logging.getLogger(__name__), consumer.connection_errors, requeue=False)
        return None

    return checked


def _register(app: Celery, op: str) -> None:
    soft, hard = TIME_LIMITS[op]

    @app.task(name=f"evoarena.{op}", bind=True, soft_time_limit=soft, time_limit=hard,
              Strategy="evoarena.fleet.app:checked_strategy")
    def task(self, payload: dict) -> dict:
        started = time.perf_counter()
        worker = work.process_worker()
        worker.node = self.request.hostname
        # two JSON lines per task on stdout, for `kubectl logs`: this one, and the summary below
        print(json.dumps({"started": op, "task": self.request.id, "node": worker.node}), file=sys.stdout, flush=True)
        summary = work.run_on(worker, op, payload)
        summary["node"] = worker.node
        print(json.dumps({"op": op, "task": self.request.id, "genome": payload.get("genome", {}).get("id"),
                          "node": summary["node"], "build": summary.get("build"), "hit_rate": round(worker.hit_rate(), 4),
                          # a delivery the broker made before (its worker died before acknowledging it)
                          "redelivered": bool((self.request.delivery_info or {}).get("redelivered")),
                          "error": summary.get("error"),
                          "seconds": round(time.perf_counter() - started, 4)}), file=sys.stdout, flush=True)
        return summary


app = make_app()
logging.getLogger("celery").setLevel(os.environ.get("EVOARENA_LOG_LEVEL", "WARNING"))
