"""Output that fits where it runs: on a terminal, a progress bar and readable text; off one
(`kubectl logs`, CI, a file), plain lines that never use carriage returns, and logs and task
events as JSON lines. One log level for evoarena's and Celery's loggers: EVOARENA_LOG_LEVEL.

Every JSON line starts with the same two keys: `time` (ISO 8601, UTC, milliseconds:
"2025-01-31T12:00:00.123Z") and `level` (DEBUG ... CRITICAL); a log record adds `logger` and
`message`, a task event its own fields (fleet/app.py: `event`, `task`, `op`, `experiment`,
`outcome` on both the start and the end line of a task).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone
from typing import TextIO

from evoarena.settings import FleetSettings


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": iso_time(record.created), "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line)


def iso_time(seconds: float) -> str:
    """`seconds` since the epoch as ISO 8601 in UTC, to the millisecond: 2025-01-31T12:00:00.123Z."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def setup(stream: TextIO | None = None, level: str | None = None, everything: bool = False) -> None:
    """Send evoarena's and Celery's log records to `stream` (stderr): JSON lines off a terminal,
    text on one, at EVOARENA_LOG_LEVEL (or `level`). With `everything` (a worker: what `kubectl
    logs` shows must be JSON only), every other library's records too (kombu, amqp, billiard),
    through the root logger, and Python's warnings as records of the logger "py.warnings"."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
                         if _tty(stream) else JsonFormatter())
    level = level or FleetSettings.from_env().log_level
    for name in ("evoarena", "celery"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)
    if everything:
        logging.captureWarnings(True)
        root = logging.getLogger()
        root.handlers = [handler]
        root.setLevel(level)
        for name in ("evoarena", "celery"):  # their records reach the root's handler: once, not twice
            logging.getLogger(name).handlers = []
        # billiard's "multiprocessing" logger does not propagate (Celery's pool: "Process ... exited"),
        # and a logger without a handler would print its bare message through logging.lastResort
        logging.getLogger("multiprocessing").handlers = [handler]
        logging.lastResort = handler


def event(fields: dict, stream: TextIO | None = None, level: str = "INFO") -> None:
    """A line for each thing a worker does (a task started, a task done, a message rejected):
    JSON off a terminal (`time` and `level` first, then `fields`), `key=value` text on one."""
    stream = stream or sys.stdout
    if _tty(stream):
        stream.write(time.strftime("%H:%M:%S ") + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None) + "\n")
    else:
        stream.write(json.dumps({"time": iso_time(time.time()), "level": level, **fields}) + "\n")
    stream.flush()


def say(message: str, stream: TextIO | None = None) -> None:
    """What Celery's worker writes straight to its stdout (`worker: Warm shutdown (MainProcess)`),
    as a JSON line off a terminal. Signal handlers call it: one os.write, no lock."""
    import os

    stream = stream or sys.__stdout__
    text = message.strip()
    line = text if _tty(stream) else json.dumps({"time": iso_time(time.time()), "level": "WARNING",
                                                "logger": "celery.apps.worker", "message": text})
    try:
        os.write(stream.fileno(), (line + "\n").encode())
    except OSError:  # like Celery's own: losing this line must never stop a shutdown
        pass


class ProgressLine:
    """The master's progress. On a terminal: a bar with the step's line, rewritten in place (the
    last line, an arena round's match line and each fight's event stay). Off a terminal: the line
    of every `every`-th step and of the last, each on its own line."""

    WIDTH = 20

    def __init__(self, stream: TextIO | None = None, every: int = 1):
        self.stream = stream or sys.stdout  # the stdout of the moment, not of the import (pytest swaps it)
        self.tty = _tty(self.stream)
        self.every = max(1, every)

    def __call__(self, p) -> None:
        if p.resumed_from is not None:
            self._emit(f"resumed at generation {p.resumed_from + 1}", final=True)  # from 1, as each step's line
        last = p.generation + 1 == p.generations
        keep = last or " match " in p.line or p.line.startswith("fight ")
        if self.tty:
            done = min(self.WIDTH, round(self.WIDTH * (p.generation + 1) / max(1, p.generations)))
            self._emit(f"[{'#' * done}{'.' * (self.WIDTH - done)}] {p.line}", final=keep)
        elif keep or (p.generation + 1) % self.every == 0:
            self._emit(p.line, final=True)

    def _emit(self, line: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _tty(stream: TextIO) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()
