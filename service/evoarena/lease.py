"""The master's lease: one master at a time runs an experiment.

Two `evoarena run` of one experiment on one store would both send every task. So a master takes
the experiment's lease in the store (`store.take_lease`, one atomic write) before it writes
anything, renews it with each heartbeat (heartbeat.py), and releases it when it stops, however it
stops short of `kill -9`. A second master is refused with ExperimentBusy while the lease is
fresh, having written nothing; a lease whose last beat is STALE_BEATS intervals old (its master
was killed, or its node lost) is taken over. A master whose lease was taken over while it was
silent (a paused process) learns it at its next beat and stops after its current step.

A lease whose master is known to be dead is taken over at once: one held on this host, in this
PID namespace (`pidns`: containers on one host share its name), by a pid that no longer exists
(`kill -9` of `evoarena run` on a laptop, then the same command again).

Stale means STALE_BEATS intervals of the slower of the two masters, so a master with a short
interval never takes over one that beats slowly. The holder's beat is its own clock's time, and
the taker compares it with its own: masters on different hosts need clocks that agree to within
the stale time.
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

from evoarena.heartbeat import HEARTBEAT_S, Heartbeat, STALE_BEATS

if TYPE_CHECKING:
    from .store import ResultStore


class ExperimentBusy(RuntimeError):
    """Another master holds the experiment's lease."""


class MasterLease:
    """While in its `with` block: this process holds experiment `name`'s lease, and beats every
    `every` seconds (a Heartbeat, which renews the lease). Entering raises ExperimentBusy, with
    nothing written, while another master's lease is fresh; leaving releases the lease."""

    def __init__(self, store: ResultStore, name: str, every: float = HEARTBEAT_S):
        self.store, self.name, self.every = store, name, every
        self.holder = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat_s": every,
                       "pidns": _pid_namespace()}
        self.heartbeat = Heartbeat(store, name, every, lease=self.holder["id"])

    def __enter__(self) -> MasterLease:
        now = time.time()
        held = self.store.take_lease(self.name, self.holder, math.inf, now)  # a lease no one holds
        if held is not None:  # someone's: stale by the slower interval, theirs or ours
            stale_s = STALE_BEATS * max(self.every, held.get("heartbeat_s", HEARTBEAT_S))
            if dead_here(held):  # its master is gone: no need to wait for its beats to go stale
                held = self.store.take_lease(self.name, self.holder, now - held["beat"] - 1e-3, now)
            else:
                held = self.store.take_lease(self.name, self.holder, stale_s, now)
            if held is not None:
                raise ExperimentBusy(busy_text(self.name, held, now, stale_s))
        try:
            self.heartbeat.__enter__()
        except BaseException:
            self.store.release_lease(self.name, self.holder["id"])
            raise
        return self

    def beat(self) -> None:
        """Beat now (renew the lease, write the heartbeat), not waiting for the next interval."""
        self.heartbeat.beat()

    def check(self) -> None:
        """Raise ExperimentBusy once another master has taken this lease over."""
        if self.heartbeat.lost:
            raise ExperimentBusy(
                f"experiment {self.name!r} was taken over by another master while this one's heartbeat was "
                f"over {STALE_BEATS * self.every:g} s old; this master stops (what it completed is stored)")

    def __exit__(self, *exc: object) -> None:
        try:
            self.heartbeat.__exit__(*exc)
        finally:
            self.store.release_lease(self.name, self.holder["id"])


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux: no namespace to tell apart, so no pid is trusted (dead_here is False)
        return None


def dead_here(held: dict[str, Any]) -> bool:
    """Whether lease `held` belongs to a master on this host and in this PID namespace whose process
    no longer exists."""
    if held.get("host") != socket.gethostname() or held.get("pidns") is None or held.get("pidns") != _pid_namespace():
        return False
    try:
        os.kill(int(held["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, TypeError, ValueError):
        return False
    return False


def busy_text(name: str, held: dict[str, Any], now: float, stale_s: float) -> str:
    """The one line that refuses a second master of experiment `name`, whose lease `held` is."""
    age = max(0.0, now - held["beat"])
    return (f"experiment {name!r} is being run by the master on {held.get('host', '?')} (pid {held.get('pid', '?')}), "
            f"last heartbeat {age:.0f} s ago; wait for it to finish, or stop it (a master whose heartbeat is over "
            f"{stale_s:g} s old is taken over)")
