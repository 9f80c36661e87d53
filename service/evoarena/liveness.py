"""A worker's liveness, told by the age of a file instead of a round trip through the broker.

The worker (`evoarena worker --alive-file FILE`) touches FILE every few seconds from its
consumer's event loop, from when it starts consuming until it stops: a wedged event loop, a
lost broker connection or a dead main process all stop the touches, and the file grows old.

The probe, `python3 -m evoarena.liveness FILE --max-age SECONDS`, exits 0 when FILE was touched
within SECONDS and 1 when it is older or missing, with one line saying which. It imports the
standard library only: the Celery ping it replaces imported torch with the fleet's app, every
minute, for 3.8 s and 306 MB (tests/test_liveness.py checks that no torch and no Celery load).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def touch(path: str) -> None:
    """Set `path`'s modification time to now, creating it if needed."""
    with open(path, "a", encoding="utf-8"):
        pass
    os.utime(path)


def age(path: str) -> float | None:
    """Seconds since `path` was last touched, or None when it does not exist."""
    try:
        return time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return None


def consumer_step(path: str, every: float):
    """A Celery consumer bootstep that touches `path` every `every` seconds while the worker
    consumes: it starts once the task consumer is up, and stops (the file then ages) when the
    consumer stops, on a lost connection or at shutdown."""
    from celery import bootsteps

    class AliveFile(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def __init__(self, parent, **kwargs):
            super().__init__(parent, **kwargs)
            self.timer_ref = None

        def start(self, parent) -> None:
            touch(path)
            self.timer_ref = parent.timer.call_repeatedly(every, touch, (path,), priority=10)

        def stop(self, parent) -> None:
            if self.timer_ref is not None:
                self.timer_ref.cancel()
                self.timer_ref = None

        shutdown = stop

    return AliveFile


def main(argv: list[str] | None = None) -> int:
    """The probe: 0 when the file is fresh, 1 when it is stale or missing (2: bad arguments)."""
    parser = argparse.ArgumentParser(prog="python3 -m evoarena.liveness", description=__doc__.splitlines()[0])
    parser.add_argument("file", help="the file the worker touches (evoarena worker --alive-file)")
    parser.add_argument("--max-age", type=float, required=True, help="seconds after which the worker is not alive")
    args = parser.parse_args(argv)
    seen = age(args.file)
    if seen is None:
        print(f"not alive: {args.file} does not exist (the worker has not started consuming)")
        return 1
    if seen > args.max_age:
        print(f"not alive: {args.file} was last touched {seen:.0f} s ago (more than {args.max_age:g} s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
