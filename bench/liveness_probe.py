"""What the worker's liveness probe costs each time the kubelet runs it (every minute, per pod).

  probe       `python3 -m evoarena.liveness FILE --max-age 60` (the chart's probe), on a fresh file
  old import  `python -c "import evoarena.fleet.app"`: what `celery -A evoarena.fleet.app inspect
              ping`, the probe before it, loaded before it even sent its ping (torch among it)

For each: the median wall time over `--runs` runs and the peak resident memory of one run (the
child's ru_maxrss). Bar: the probe takes under 0.5 s and 50 MB, and a fifth of the old import's
memory or less. Prints PASS, or FAIL and exits 1.

    python bench/liveness_probe.py
    python bench/liveness_probe.py --runs 20
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def measure(command: list[str], runs: int) -> tuple[float, float]:
    """(median seconds, peak MB) of `command` over `runs` runs, each in a fresh child."""
    seconds, peak_mb = [], 0.0
    for _ in range(runs):
        # ru_maxrss of RUSAGE_CHILDREN is the largest of all children waited for: measure each in a child of its own
        wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
                   "rc = subprocess.run(sys.argv[1:]).returncode; s = time.perf_counter() - t; "
                   "print(rc, s, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        out = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True, check=True)
        rc, took, kb = out.stdout.split()
        if rc != "0":
            raise SystemExit(f"{command} exited with {rc}")
        seconds.append(float(took))
        peak_mb = max(peak_mb, int(kb) / 1024)
    return statistics.median(seconds), peak_mb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        alive = Path(tmp) / "alive"
        alive.touch()
        probe = measure([sys.executable, "-m", "evoarena.liveness", str(alive), "--max-age", "60"], args.runs)
        old = measure([sys.executable, "-c", "import evoarena.fleet.app"], args.runs)

    print(f"{'':12} {'median s':>9} {'peak MB':>8}")
    for name, (took, mb) in (("probe", probe), ("old import", old)):
        print(f"{name:12} {took:9.3f} {mb:8.0f}")
    failures = []
    if probe[0] >= 0.5:
        failures.append(f"probe takes {probe[0]:.3f} s (bar: under 0.5 s)")
    if probe[1] >= 50:
        failures.append(f"probe peaks at {probe[1]:.0f} MB (bar: under 50 MB)")
    if probe[1] * 5 > old[1]:
        failures.append(f"probe's {probe[1]:.0f} MB is more than a fifth of the old import's {old[1]:.0f} MB")
    for failure in failures:
        print(f"FAIL: {failure}")
    if not failures:
        print("PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
