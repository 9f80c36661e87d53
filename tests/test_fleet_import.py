"""The fleet's Celery app is built when first asked for, not when its module is imported."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_fleet_app_module_builds_no_celery_app_until_app_is_read():
    code = ("import evoarena.fleet.app as m; before = m.default_app.cache_info().currsize; "
            "a = m.app; print(before, m.default_app.cache_info().currsize, a is m.app, a.main)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "1", "True", "evoarena"]
