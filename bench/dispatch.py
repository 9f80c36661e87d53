"""What the fleet costs per task: no-op tasks through the real RabbitMQ, with one and two workers.

Starts worker processes the way a pod does (`python -m evoarena worker --name ...`, the
prefork pool, one task process each) on a private shared queue, then sends them
`evoarena.noop`, a task that does nothing but return its worker's name, through the same app
configuration the scheduler uses (JSON, persistent messages, late acks, prefetch 1, rpc://
results). For one worker, then two:

  overhead    round-trip time of one no-op task, from send_task to its result in this process,
              one task at a time (nothing else in flight): p50 and p99 over `--samples` tasks.
              The `send` column is the part spent in send_task (publishing the message).
  tasks/s     `--tasks` no-op tasks all sent at once, divided by the time from the first send
              to the last result; and how many each worker ran.

Bar: p50 overhead below 10 ms (with one worker and with two). Prints PASS, or FAIL and exits 1.
The workers and their queues are removed at the end, also when the bench fails or is stopped.

    python bench/dispatch.py                 # RabbitMQ on $EVOARENA_BROKER_URL or 127.0.0.1:5672
    python bench/dispatch.py --tasks 2000 --samples 500

Worker processes come from `evoarena.fleet.local_workers`, as in bench/affinity.py and the tests.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from celery.result import ResultSet

from evoarena.fleet.app import broker_url
from evoarena.fleet.local_workers import LocalWorkers

P50_BAR_MS = 10.0


def stop_on_sigterm() -> None:
    """A SIGTERM unwinds like Ctrl-C, so that the workers and queues are cleaned up."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def round_trips(app, samples: int) -> tuple[list[float], list[float]]:
    """(send, round trip) seconds of `samples` no-op tasks sent one at a time."""
    sends, trips = [], []
    for _ in range(samples):
        started = time.perf_counter()
        result = app.send_task("evoarena.noop")
        sent = time.perf_counter()
        result.get(timeout=30)
        trips.append(time.perf_counter() - started)
        sends.append(sent - started)
    return sends, trips


def throughput(app, tasks: int) -> tuple[float, Counter]:
    """(tasks/s, tasks per worker) for `tasks` no-op tasks all in flight at once."""
    started = time.perf_counter()
    results = ResultSet([app.send_task("evoarena.noop") for _ in range(tasks)])
    nodes = Counter(meta["result"]["node"] for _, meta in app.backend.iter_native(results, timeout=120))
    return tasks / (time.perf_counter() - started), nodes


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000, help="no-op tasks in flight for tasks/s (default 1000)")
    parser.add_argument("--samples", type=int, default=300, help="one-at-a-time round trips for p50/p99 (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed round trips first (default 30)")
    args = parser.parse_args()
    stop_on_sigterm()

    print(f"broker {broker_url().split('@')[-1]}; {os.cpu_count()} CPU cores; "
          f"{args.samples} one-at-a-time round trips, then {args.tasks} tasks in flight")
    header = f"{'workers':>7} {'send p50 ms':>12} {'overhead p50 ms':>16} {'p99 ms':>8} {'max ms':>8} {'tasks/s':>8}  tasks per worker"
    print(header)
    print("-" * len(header))
    failures = []
    with tempfile.TemporaryDirectory() as tmp, LocalWorkers(Path(tmp), label="bench") as fleet:
        for count, name in enumerate(("alpha", "beta"), start=1):
            fleet.start(name)
            fleet.wait_ready()
            round_trips(fleet.app, args.warmup)
            sends, trips = round_trips(fleet.app, args.samples)
            rate, nodes = throughput(fleet.app, args.tasks)
            p50, p99 = 1000 * statistics.median(trips), 1000 * percentile(trips, 99)
            print(f"{count:>7} {1000 * statistics.median(sends):>12.2f} {p50:>16.2f} {p99:>8.2f} "
                  f"{1000 * max(trips):>8.2f} {rate:>8.0f}  "
                  + ", ".join(f"{node.split('-')[0]} {n}" for node, n in sorted(nodes.items())), flush=True)
            if len(nodes) != count:
                failures.append(f"FAIL: with {count} workers, {len(nodes)} ran tasks")
            if p50 >= P50_BAR_MS:
                failures.append(f"FAIL: with {count} worker(s), p50 overhead {p50:.2f} ms (bar: below {P50_BAR_MS:.0f} ms)")
    print()
    for line in failures:
        print(line)
    if failures:
        return 1
    print(f"PASS: p50 overhead of a no-op task below {P50_BAR_MS:.0f} ms with one and with two workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
