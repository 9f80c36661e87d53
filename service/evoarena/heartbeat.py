"""The master's heartbeat, and how a reader tells a running experiment from one whose master is gone.

An experiment's document says `running` from the moment a master registers it until that master
writes `complete` or `failed`. A master that dies without a word (`kill -9`, a lost node, an
out-of-memory kill) or stops on Ctrl-C leaves `running` behind. So, while `evoarena run` works at
an experiment, a thread of the master writes the time into the document every `every` seconds:

    heartbeat     the time of the last beat (seconds since the epoch, the master's clock)
    heartbeat_s   the master's interval between beats

Each beat is `store.touch_experiment`: it sets these two fields alone, in one atomic write, so it
never undoes a status the master wrote meanwhile. A reader (`evoarena list`, `status`, `report`)
calls a `running` experiment stale when its last beat is more than STALE_BEATS intervals old.
A document written before heartbeats existed counts its `updated` time as its last beat.

The same beat renews the master's lease on the experiment (lease.py), which keeps a second master
from running it: a lease whose beat is STALE_BEATS intervals old is taken over.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from evoarena.settings import HEARTBEAT_S

if TYPE_CHECKING:
    from .store import ResultStore

log = logging.getLogger(__name__)

STALE_BEATS = 6  # beats missed before `running` reads as stale: 30 s at the default interval


class Heartbeat:
    """While in its `with` block: experiment `name`'s heartbeat, written every `every` seconds by a
    daemon thread (the first beat on entering). A failed write is logged and the next one tried:
    a store that hiccups must not stop the run it watches.

    `lease`: the id of the lease holder this master is (lease.MasterLease); each beat renews that
    lease first. Once another master has taken it over, `lost` is true and the beats stop."""

    def __init__(self, store: ResultStore, name: str, every: float = HEARTBEAT_S, lease: str | None = None):
        if not every > 0:
            raise ValueError(f"heartbeat interval (EVOARENA_MASTER_HEARTBEAT_S) = {every!r}: must be a number of "
                             "seconds greater than 0")
        self.store, self.name, self.every, self.lease = store, name, every, lease
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{name}", daemon=True)

    def beat(self) -> None:
        now = time.time()
        if self.lease is not None and not self.store.renew_lease(self.name, self.lease, now):
            self.lost = True
            return
        self.store.touch_experiment(self.name, heartbeat=now, heartbeat_s=self.every)

    def _run(self) -> None:
        while not self.lost and not self._stop.wait(self.every):
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 (any store error: the run goes on, the next beat may land)
                log.warning("heartbeat of %s not written: %s: %s", self.name, type(exc).__name__, exc)
        if self.lost:
            log.error("the lease of experiment %s was taken over by another master: this one stops after its "
                      "current step", self.name)

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def silence(experiment: dict, now: float | None = None) -> float | None:
    """Seconds since the last beat of a `running` experiment whose master has missed STALE_BEATS
    beats; None while it beats, and for an experiment that is complete or failed."""
    if experiment.get("status") != "running":
        return None
    last = experiment.get("heartbeat", experiment.get("updated"))
    if last is None:
        return None
    quiet = (time.time() if now is None else now) - last
    return quiet if quiet > STALE_BEATS * experiment.get("heartbeat_s", HEARTBEAT_S) else None


def stale_text(seconds: float) -> str:
    """What list and status show for a run whose master went silent `seconds` ago."""
    return f"stale (no heartbeat for {seconds:.0f} s)"
