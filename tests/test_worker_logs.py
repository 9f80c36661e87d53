"""What `kubectl logs` shows of a worker: every line a real `evoarena worker` writes (stdout and
stderr together, from its start to its shutdown) during an arena run on the real RabbitMQ is one
JSON object with an ISO 8601 UTC time and a level; each task has a start and an end line with its
id, op, experiment and outcome under the same keys; a train_pair's end line carries its losses."""

from __future__ import annotations

import json
import signal
from datetime import datetime, timezone

import pytest

from evoarena import scheduler
from evoarena.spec.experiment import parse_spec

pytestmark = pytest.mark.slow

LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def tiny_arena(name: str) -> dict:
    """2 rounds of 2 players x (2 generators + 2 discriminators) on the ring: 7 steps, a few seconds."""
    return {
        "name": name,
        "problem": {"kind": "gan", "latent": 4, "metric_samples": 200,
                    "data": {"kind": "ring", "train": 2000, "heldout": 500}},
        "arena": {"rounds": 2, "players": 2, "generators": 2, "discriminators": 2,
                  "generator": {"hidden": [16]}, "discriminator": {"hidden": [16]},
                  "train_steps": 40, "chunk_steps": 20, "cross_train_steps": 10, "batch_size": 32,
                  "match_samples": 128, "match_block": 2},
        "noise": {"size": 65536},
    }


def parsed(text: str, where: str) -> list[dict]:
    """Every line of `text` as JSON, with where it came from in the message of a failure."""
    lines = []
    for n, line in enumerate(text.splitlines(), start=1):
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"{where} line {n} is not JSON: {line[:200]!r}")
        assert isinstance(lines[-1], dict), f"{where} line {n}: {line[:200]!r}"
    return lines


def test_every_line_a_worker_writes_during_an_arena_run_is_json_with_time_level_and_task_fields(fleet):
    fleet.start("alpha")
    fleet.start("beta")
    fleet.wait_ready()
    spec = parse_spec(tiny_arena("logs-arena"))
    scheduler.run(spec, fleet.store, fleet.executor())
    for proc in fleet.workers.values():  # as Kubernetes stops a pod: SIGTERM to its main process
        proc.send_signal(signal.SIGTERM)
    for proc in fleet.workers.values():
        proc.wait(timeout=30)

    lines = [line for name in ("alpha", "beta") for line in parsed(fleet.log(name), f"worker {name}")]
    for line in lines:
        assert list(line)[:2] == ["time", "level"], line
        assert line["level"] in LEVELS, line
        when = datetime.fromisoformat(line["time"])
        assert line["time"].endswith("Z") and when.utcoffset() == timezone.utc.utcoffset(None), line
    assert [line.get("event") for line in lines].count("worker ready") == 2  # the banner, as one line each
    assert not any("celery@" in str(v) or "-------" in str(v) for line in lines for v in line.values())

    starts = {line["task"]: line for line in lines if line.get("event") == "task started"}
    ends = {line["task"]: line for line in lines if line.get("event") == "task done"}
    stored = {d["_id"]: d for d in fleet.store.find_results(spec.name)}
    assert set(starts) == set(ends) == set(stored)  # each task: one start line and one end line
    for task, end in ends.items():
        start = starts[task]
        for key in ("task", "op", "experiment", "outcome"):
            assert key in start and key in end, (key, start, end)
        assert (start["op"], start["experiment"], start["outcome"]) == (stored[task]["op"], spec.name, "started")
        assert (end["op"], end["experiment"], end["outcome"]) == (stored[task]["op"], spec.name, "ok")
        if end["op"] == "train_pair":
            assert end["losses"] == pytest.approx(stored[task]["last"], rel=1e-5)
            assert {"g_loss", "d_loss"} <= set(end["losses"])
    assert {line["op"] for line in ends.values()} == {"train_pair", "match", "cross_train"}
    shutdown = [line for line in lines if "shutdown" in line.get("message", "").lower()]
    assert len(shutdown) >= 2 and all(line["level"] in LEVELS for line in shutdown)
