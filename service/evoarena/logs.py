"""Output that fits where it runs: on a terminal, a progress bar and readable text; off one
(`kubectl logs`, CI, a file), plain lines that never use carriage returns, and logs and task
events as JSON lines. One log level for evoarena's and Celery's loggers: EVOARENA_LOG_LEVEL.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

from .settings import FleetSettings


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": round(record.created, 3), "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup(stream: TextIO | None = None, level: str | None = None) -> None:
    """Send evoarena's and Celery's log records to `stream` (stderr): JSON lines off a terminal,
    text on one, at EVOARENA_LOG_LEVEL (or `level`)."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
                         if _tty(stream) else JsonFormatter())
    level = level or FleetSettings.from_env().log_level
    for name in ("evoarena", "celery"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)


def event(fields: dict, stream: TextIO | None = None) -> None:
    """A line for each thing a worker does (a task started, a task done, a message rejected):
    JSON off a terminal, `key=value` text on one."""
    stream = stream or sys.stdout
    if _tty(stream):
        stream.write(time.strftime("%H:%M:%S ") + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None) + "\n")
    else:
        stream.write(json.dumps(fields) + "\n")
    stream.flush()


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
            self._emit(f"resumed at generation {p.resumed_from}", final=True)
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
