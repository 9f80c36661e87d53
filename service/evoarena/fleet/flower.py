"""The Celery app Flower needs to watch the fleet, with only `celery` and `flower` installed:

    pip install --no-deps evoarena && pip install "evoarena[flower]"   # or: pip install celery flower
    celery --app evoarena.fleet.flower flower --port=5555

Flower finds the fleet's workers and tasks on the fleet's own exchanges, not Celery's defaults:
task events on `<queue>.ev` and remote control (the workers page's inspect calls) on `<queue>`
(fleet/app.py's `event_exchange` and `control_exchange`); with a plain `celery flower` it lists no
worker and no task. Flower needs none of the tasks' code, so this module imports Celery and
evoarena's settings (the standard library only): no torch, no store, no task module. It reads
the same EVOARENA_BROKER_URL and EVOARENA_QUEUE as the fleet (settings.py).
"""

from __future__ import annotations

from celery import Celery

from evoarena.settings import FleetSettings


def make_app(broker: str | None = None, queue: str | None = None) -> Celery:
    """An app that only listens: the fleet's broker, exchanges and serializer, no tasks."""
    settings = FleetSettings.from_env()
    queue = queue or settings.queue
    app = Celery("evoarena", broker=broker or settings.broker_url)
    app.conf.update(
        accept_content=["json"],  # what the fleet sends, and all it sends (fleet/app.py)
        event_exchange=f"{queue}.ev",
        control_exchange=queue,
        broker_connection_retry_on_startup=True,
    )
    return app


app = make_app()
