"""What the Python API and MLflow tracking cost: wall time, interleaved, paired ratios.

1. API against the command line: experiments/tiny.yaml at TINY_GENERATIONS generations (its 5
   take 0.05 s here, too short to time) run to its end in this process (inline) by
   `evoarena.run` and by `evoarena run` (cli.main), each repetition in a fresh store, the two in a
   rotating order, plus the command line against itself (the A/A control: how far a ratio strays
   when nothing differs). Bar: the median of (API seconds / command-line seconds) at most
   1 + API_MARGIN: the API adds no time beyond this run's noise.
2. MLflow on against off: experiments/memorize.yaml's GA (its 200 generations, or `--generations`,
   on its 2 local workers) with `tracking: {mlflow: ...}` against the same run untracked, after one
   untimed run of each, interleaved, each in a fresh store, against an MLflow server this bench
   starts (SQLite backend in a temporary folder). Tracking logs the spec, every generation's
   summary, and at the end the report page and the best network: a cost per generation and about
   two seconds at the end, so a shorter run shows a larger share. Bar: the median of (tracked
   seconds / untracked seconds) below 1 + MLFLOW_BAR.

    python bench/api_overhead.py                      # both, about 25 minutes on 2 cores
    python bench/api_overhead.py --generations 60 --mlflow-repeats 2   # shorter; a larger share
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import redirect_stdout
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
API_MARGIN = 0.03
MLFLOW_BAR = 0.02
TINY_GENERATIONS = 200


def timed(action) -> float:
    started = time.perf_counter()
    with redirect_stdout(io.StringIO()):
        action()
    return time.perf_counter() - started


def api_against_cli(folder: Path, repeats: int) -> tuple[float, float]:
    """(median API / CLI, median CLI / CLI again) over `repeats` interleaved repetitions."""
    import evoarena
    from evoarena.cli.main import main

    doc = yaml.safe_load((ROOT / "experiments" / "tiny.yaml").read_text())
    doc["ga"]["generations"] = TINY_GENERATIONS
    spec_file = folder / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(doc))
    counter = iter(range(10**6))

    def store() -> str:
        return f"sqlite:///{folder / f'api-{next(counter)}.db'}"

    modes = {"api": lambda: evoarena.run(spec_file, executor="inline", store=store(), out=None),
             "cli": lambda: main(["run", str(spec_file), "--inline", "--store", store()]),
             "cli again": lambda: main(["run", str(spec_file), "--inline", "--store", store()])}
    timed(modes["cli"])  # the warm-up: imports, the noise table
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(repeats):
        order = list(modes)[r % 3:] + list(modes)[: r % 3]
        for mode in order:
            seconds[mode].append(timed(modes[mode]))
    ratio = statistics.median(a / c for a, c in zip(seconds["api"], seconds["cli"]))
    aa = statistics.median(a / c for a, c in zip(seconds["cli again"], seconds["cli"]))
    print(f"tiny.yaml, {TINY_GENERATIONS} generations inline: API {statistics.median(seconds['api']):.2f} s, command line "
          f"{statistics.median(seconds['cli']):.2f} s (medians of {repeats})")
    return ratio, aa


def mlflow_server(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                               "--artifacts-destination", str(folder / "mlflow-artifacts")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).close()
            return server, uri
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("mlflow server did not start (pip install mlflow: the test extra has it)")
            time.sleep(0.5)


def mlflow_on_against_off(folder: Path, generations: int, repeats: int) -> float:
    """The median of tracked / untracked seconds of memorize.yaml's GA over `repeats` pairs."""
    import evoarena

    server, uri = mlflow_server(folder)
    try:
        spec = yaml.safe_load((ROOT / "experiments" / "memorize.yaml").read_text())
        spec["ga"]["generations"] = generations or spec["ga"]["generations"]
        tracking = {"mlflow": {"uri": uri, "experiment": "api-overhead"}}
        for mode in ("off", "on"):  # the warm-up: the noise table, the pools' first start, MLflow's first run
            warm = {**spec, "name": f"warm-{mode}", "ga": {**spec["ga"], "generations": 2}}
            if mode == "on":
                warm["tracking"] = tracking
            timed(lambda: evoarena.run(warm, store=f"sqlite:///{folder / f'warm-{mode}.db'}", out=None))
        seconds: dict[str, list[float]] = {"off": [], "on": []}
        for r in range(repeats):
            for mode in (["off", "on"] if r % 2 == 0 else ["on", "off"]):
                run_spec = {**spec, "name": f"overhead-{mode}-{r}"}
                if mode == "on":
                    run_spec["tracking"] = tracking
                store = f"sqlite:///{folder / f'mlflow-{mode}-{r}.db'}"
                seconds[mode].append(timed(lambda: evoarena.run(run_spec, store=store, out=None)))
                print(f"  {mode:>3}: {seconds[mode][-1]:.1f} s", flush=True)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    print(f"memorize.yaml, {spec['ga']['generations']} generations on 2 local workers: untracked "
          f"{statistics.median(seconds['off']):.1f} s, tracked {statistics.median(seconds['on']):.1f} s "
          f"(medians of {repeats})")
    return statistics.median(on / off for on, off in zip(seconds["on"], seconds["off"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions of the API comparison")
    parser.add_argument("--mlflow-repeats", type=int, default=3, help="tracked/untracked pairs")
    parser.add_argument("--generations", type=int, default=0, help="generations of the memorize GA (default: the file's 200)")
    parser.add_argument("--skip-mlflow", action="store_true", help="only the API against the command line")
    args = parser.parse_args()
    failed = []
    with tempfile.TemporaryDirectory(prefix="evoarena-api-bench-") as tmp:
        folder = Path(tmp)
        os.environ.setdefault("EVOARENA_NOISE_DIR", str(folder / "noise"))
        os.environ.setdefault("EVOARENA_ARTIFACTS", str(folder / "artifacts"))
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        ratio, aa = api_against_cli(folder, args.repeats)
        print(f"API / command line: {ratio:.3f} (A/A: {aa:.3f}); bar <= {1 + API_MARGIN:.2f}")
        if ratio > 1 + API_MARGIN:
            failed.append("the API is slower than the command line")
        if not args.skip_mlflow:
            overhead = mlflow_on_against_off(folder, args.generations, args.mlflow_repeats)
            print(f"MLflow on / off: {overhead:.3f}; bar < {1 + MLFLOW_BAR:.2f}")
            if overhead >= 1 + MLFLOW_BAR:
                failed.append(f"MLflow tracking adds {100 * (overhead - 1):.1f}% (bar {100 * MLFLOW_BAR:.0f}%)")
    for reason in failed:
        print(f"FAIL: {reason}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
