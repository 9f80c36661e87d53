"""Task payloads signed by the master, so that only it can enqueue work that gets written.

The master and every worker read one key from EVOARENA_TASK_KEY (the chart generates it once
into the release's env Secret, read by every pod). With a key, the CeleryExecutor adds
`signature` = HMAC-SHA256(key, the payload's canonical JSON without it) to each task, and a
worker refuses (writing nothing) a task whose signature is missing or wrong. Without a key
nothing is signed or checked: local runs, where no task crosses a broker.
"""

from __future__ import annotations

import hashlib
import hmac

from ..genome import canonical
from ..settings import Settings

KEY_VARIABLE = "EVOARENA_TASK_KEY"


def task_key() -> bytes | None:
    """The key from the environment (Settings.task_key), or None when none is set."""
    return Settings.from_env().task_key.encode() or None


def signature(task: dict, key: bytes) -> str:
    body = canonical({k: v for k, v in task.items() if k != "signature"}).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def sign(task: dict, key: bytes) -> dict:
    """`task` with its signature."""
    return {**task, "signature": signature(task, key)}


def signed_by(task: dict, key: bytes) -> bool:
    """Whether `task` carries the signature `key` gives it."""
    given = task.get("signature")
    return isinstance(given, str) and hmac.compare_digest(given, signature(task, key))
