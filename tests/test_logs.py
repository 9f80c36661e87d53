"""Output that fits where it runs: a progress bar and text on a terminal, plain lines and JSON off one."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import datetime

import pytest

from evoarena.logs import ProgressLine, event, iso_time, setup
from evoarena.scheduler import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def progress(generation: int, generations: int = 10, line: str | None = None) -> Progress:
    return Progress(generation, generations, line or f"gen {generation:>3}/{generations}", 0.0, 0.0, 1.0, 1.0, 0)


def test_off_a_terminal_the_progress_is_a_plain_line_every_n_steps_and_the_last():
    out = io.StringIO()
    show = ProgressLine(out, every=4)
    for g in range(10):
        show(progress(g))
    assert out.getvalue().splitlines() == ["gen   3/10", "gen   7/10", "gen   9/10"]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_on_a_terminal_the_progress_is_a_bar_rewritten_in_place_and_the_last_line_stays():
    out = Terminal()
    show = ProgressLine(out, every=4)
    for g in range(10):
        show(progress(g))
    frames = out.getvalue().split("\r\x1b[2K")[1:]
    assert len(frames) == 10  # every step, each drawn over the one before
    assert frames[4] == "[##########..........] gen   4/10"
    assert frames[-1] == "[####################] gen   9/10\n"


def test_an_arena_rounds_match_line_stays_on_a_terminal():
    out = Terminal()
    ProgressLine(out)(progress(3, line="round 1 match  best 0.9"))
    assert out.getvalue().endswith("round 1 match  best 0.9\n")


def test_task_events_are_json_off_a_terminal_and_text_on_one():
    off, on = io.StringIO(), Terminal()
    fields = {"op": "evaluate", "task": "x:000001:evaluate:g1", "error": None}
    event(fields, off)
    event(fields, on)
    line = json.loads(off.getvalue())
    assert list(line)[:2] == ["time", "level"] and {k: line[k] for k in fields} == fields
    assert on.getvalue().endswith("op=evaluate task=x:000001:evaluate:g1\n")


@pytest.fixture
def loggers():
    """evoarena's and Celery's loggers as they were, after the test."""
    kept = {name: (logging.getLogger(name).handlers, logging.getLogger(name).level) for name in ("evoarena", "celery")}
    yield
    for name, (handlers, level) in kept.items():
        logger = logging.getLogger(name)
        logger.handlers = handlers
        logger.setLevel(level)


def test_logs_are_json_lines_off_a_terminal_at_the_one_level_set(loggers):
    out = io.StringIO()
    setup(out, level="INFO")
    logging.getLogger("evoarena.fleet.celery_executor").info("worker %s is gone", "w1")
    logging.getLogger("celery.worker").debug("not shown at INFO")
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert (record["level"], record["logger"], record["message"]) == ("INFO", "evoarena.fleet.celery_executor",
                                                                       "worker w1 is gone")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])  # ISO 8601, UTC


def test_times_are_iso_8601_in_utc():
    assert iso_time(0.25) == "1970-01-01T00:00:00.250Z"
    assert datetime.fromisoformat(iso_time(1_700_000_000.5)).timestamp() == 1_700_000_000.5
