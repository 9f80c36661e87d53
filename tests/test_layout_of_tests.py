"""Test modules share code through helpers.py (plain helpers) and conftest.py (fixtures), never by
importing each other: a test module that imports another drags in its imports, fixtures and
module-level code, breaks when a helper there is renamed for that module's sake, and hides what
is shared. Nor does any module import conftest.py, which pytest loads itself."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, name) of every module `source` imports, top level or nested in a function:
    `import a.b` gives "a.b"; `from a import b` gives "a" and "a.b" (b may be a module);
    a relative import keeps its dots."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module.rstrip('.')}.{alias.name}") for alias in node.names]
    return found


def imports_of_test_modules(source: str) -> list[tuple[int, str]]:
    """The imports in `source` of a test module (test_*, however reached: `tests.test_x`, `.test_x`)
    or of conftest, which pytest loads itself and nothing imports."""
    return [(line, name) for line, name in imported_modules(source)
            if (last := name.split(".")[-1]).startswith("test_") or last == "conftest"]


def test_no_test_module_imports_another_or_conftest():
    offenders = {
        path.relative_to(TESTS).as_posix(): found
        for path in sorted(TESTS.rglob("*.py"))
        if (found := imports_of_test_modules(path.read_text()))
    }
    assert offenders == {}, "import what is shared from helpers.py (fixtures: conftest.py), not from a test module"


def test_the_check_catches_each_way_of_importing_a_test_module():
    caught = [
        "from test_fleet import spec_dict",
        "import test_deploy",
        "from conftest import Fleet",
        "from tests.test_arena import Run",
        "from tests import test_arena",
        "from .test_arena import Run",
        "from . import test_arena",
        "def f():\n    from test_atari import atari_spec\n",
    ]
    allowed = ["from helpers import tiny_ga", "import headless_chromium", "from evoarena import scheduler",
               "import pytest", "from evoarena.tasks import task_id"]

    assert [source for source in caught if not imports_of_test_modules(source)] == []
    assert [source for source in allowed if imports_of_test_modules(source)] == []
