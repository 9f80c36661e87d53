"""Every benchmark still starts: a bench that `make bench` runs, or the README quotes, cannot rot
unseen (bench/message.py once called scheduler functions that had been moved away)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHES = sorted(p.name for p in (ROOT / "bench").glob("*.py"))

# One interpreter for all of them (torch imported once): each script runs as __main__ with --help,
# which argparse answers by printing its usage and exiting 0; a library module is imported.
DRIVER = r"""
import contextlib, io, json, runpy, sys, traceback
sys.path.insert(0, "bench")
out = {}
for name in sys.argv[1:]:
    path = "bench/" + name
    text = open(path).read()
    script = 'if __name__ == "__main__"' in text
    sys.argv = [path, "--help"]
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            runpy.run_path(path, run_name="__main__" if script else name[:-3])
        out[name] = {"ok": not script, "why": "" if not script else "ran without exiting at --help",
                     "usage": printed.getvalue()}
    except SystemExit as exc:
        out[name] = {"ok": exc.code in (0, None), "why": f"exit {exc.code}", "usage": printed.getvalue()}
    except BaseException:
        out[name] = {"ok": False, "why": traceback.format_exc(limit=3), "usage": printed.getvalue()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def helped() -> dict:
    done = subprocess.run([sys.executable, "-c", DRIVER, *BENCHES], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", BENCHES)
def test_every_bench_imports_and_answers_help(helped, name):
    result = helped[name]
    assert result["ok"], f"bench/{name}: {result['why']}"
    if 'if __name__ == "__main__"' in (ROOT / "bench" / name).read_text():
        assert result["usage"].startswith("usage: "), result["usage"][:300]


def test_the_message_bench_runs_to_its_verdict():
    # a whole run (a few seconds: no broker, no noise table): it exercises the GA's task builder
    done = subprocess.run([sys.executable, "bench/message.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1].startswith("PASS: with checkpointing the task JSON is at most")
