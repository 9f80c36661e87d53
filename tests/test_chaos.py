"""The chaos benchmark with a short budget: workers, the master and the broker are killed during a
fleet run, and the run still completes with every result stored once and the same evolution as an
uninterrupted run (bench/chaos.py says how; its default budget is docs/BENCHMARKS.md's figure)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parent.parent / "bench" / "chaos.py"


def test_a_fleet_run_through_worker_master_and_broker_kills_loses_and_duplicates_nothing():
    done = subprocess.run([sys.executable, str(BENCH), "--generations", "40", "--reference", "--budget", "400"],
                          capture_output=True, text=True, timeout=600)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "lost 0, duplicated 0" in done.stdout
    assert "same evolution as the uninterrupted run: True" in done.stdout
