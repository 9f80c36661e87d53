"""Whether the fleet's broker answers: the check `evoarena run --fleet` and `evoarena worker` make
before anything else, so that a broker that is down, or a URL that names the wrong one, is one
line within seconds instead of Celery's and kombu's retries for ever (fleet/app.py: once a worker
runs, it does retry a lost broker for ever, and the master's executor too).

One try: a connection opened and closed at once, at most CONNECT_TIMEOUT_S to connect and as
long again for AMQP's handshake (a failover list "amqp://a//;amqp://b//" tries each URL once).
Told to wait (EVOARENA_BROKER_WAIT=true or --wait-for-broker: on Kubernetes the broker may start
after its clients), it tries again every WAIT_EVERY_S seconds, with a line each time.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Mapping

CONNECT_TIMEOUT_S = 3.0
WAIT_EVERY_S = 5.0
VARIABLE = "EVOARENA_BROKER_URL"


def broker_problem(url: str, env: Mapping[str, str] | None = None, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when the broker at `url` accepts a connection; else the one line that says which
    broker (password masked), what went wrong, and which variable sets it (read from `env`)."""
    from amqp.exceptions import AccessRefused, NotAllowed
    from kombu import Connection

    tries = len([part for part in url.split(";") if part.strip()])
    try:
        with Connection(url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=max(0, tries - 1), interval_start=0, interval_step=0, interval_max=0)
        return None
    except AccessRefused:
        what = "refuses the login (wrong user or password)"
    except NotAllowed as exc:
        what = f"refuses the connection ({_reason(exc)})"
    except Exception as exc:  # noqa: BLE001 - whatever kombu, the socket or the resolver raise: no broker there
        what = f"does not answer ({_reason(exc)})"
    env = os.environ if env is None else env
    origin = f"{VARIABLE} sets it" if env.get(VARIABLE) else f"{VARIABLE} is not set (this is its default)"
    return f"the broker at {where(url)} {what}; {origin}"


def wait_for_broker(url: str, wait: bool, say: Callable[[str], None] | None = None,
                    every: float = WAIT_EVERY_S) -> str | None:
    """None once the broker at `url` answers. Not told to `wait`: the problem of the first try.
    Told to: `say` a line after each failed try (stderr by default), and try again `every` seconds."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    while (problem := broker_problem(url)) is not None and wait:
        say(f"waiting: {problem}; next try in {every:g} s")
        time.sleep(every)
    return problem


def where(url: str) -> str:
    """A broker URL, or each URL of a failover list, with its password masked by store.redact's
    rule (the last "@" ends the user info), without importing the store (and torch): the check
    comes before them, so that its line comes within seconds."""
    masked = []
    for part in filter(None, (p.strip() for p in url.split(";"))):
        scheme, sep, rest = part.partition("://")
        if sep and "@" in rest:
            user_info, _, rest = rest.rpartition("@")
            user, colon, _password = user_info.partition(":")
            rest = f"{user}{colon and ':***'}@{rest}"
        masked.append(f"{scheme}{sep}{rest}")
    return ";".join(masked)


def _reason(exc: BaseException) -> str:
    """What an exception says, in a few words: "connection refused", not "[Errno 111] Connection refused"."""
    text = getattr(exc, "reply_text", None) or str(exc) or type(exc).__name__
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text.strip().splitlines()[0])
    if text == "timed out":
        return "no answer in time"
    return text[:1].lower() + text[1:] if text[1:2].islower() else text
