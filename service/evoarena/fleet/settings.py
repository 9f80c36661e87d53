"""The fleet's knobs, read from the environment in this one module (the chart sets the variables
from its values; docs/DEPLOY.md lists them). The master and the workers of one fleet must see the
same values: RabbitMQ refuses to redeclare a queue with other arguments.

    EVOARENA_BROKER_URL                amqp://guest:guest@127.0.0.1:5672//
    EVOARENA_QUEUE                     evoarena   the shared task queue
    EVOARENA_DELIVERY_LIMIT            3          deliveries of one task before the broker dead-letters it
    EVOARENA_DIRECT_QUEUE_EXPIRES_S    3600       a worker's own queue is deleted this long after its last use
    EVOARENA_HEARTBEAT_WINDOW_S        30         a worker silent this long (no ping answer, no result) is gone
    EVOARENA_LOG_LEVEL                 WARNING    for Celery's and evoarena's loggers
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class FleetSettings:
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    queue: str = "evoarena"
    delivery_limit: int = 3
    direct_queue_expires_s: float = 3600.0
    heartbeat_window_s: float = 30.0
    log_level: str = "WARNING"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FleetSettings:
        """The settings from `EVOARENA_<FIELD>` variables (os.environ by default); an unset or
        empty variable keeps the default. A value of the wrong type is a ValueError naming it."""
        env = os.environ if env is None else env
        values = {}
        for field in fields(cls):
            name = f"EVOARENA_{field.name.upper()}"
            raw = env.get(name)
            if not raw:
                continue
            kind = type(field.default)
            try:
                values[field.name] = kind(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not {'an integer' if kind is int else 'a number'}") from None
        settings = cls(**values)
        if settings.delivery_limit < 1:
            raise ValueError(f"EVOARENA_DELIVERY_LIMIT={settings.delivery_limit}: at least one delivery is needed")
        return settings
