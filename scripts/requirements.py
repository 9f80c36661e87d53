"""Print requirements from pyproject.toml, one a line, for `pip install -r`, so that an install
can take the dependencies in a step of their own, before the code (the Dockerfile's layers) or
without the rest (`make submit`'s light virtualenv).

    python scripts/requirements.py [PYPROJECT] [--extra NAME]... [--extras-only]

The project's dependencies, less torch, then those of each --extra; --extras-only leaves out the
project's own. torch is never printed: it is installed first, from the index that has the build
the machine needs (Dockerfile, Makefile), and at the version of torch-version.txt.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: dict, extras: list[str], extras_only: bool = False) -> list[str]:
    """The requirement strings of the project (unless `extras_only`) and of `extras`, less torch."""
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [name for name in extras if name not in optional]
    if unknown:
        raise ValueError(f"extra {unknown[0]!r} is not in pyproject.toml; accepted: {', '.join(optional)}")
    found = [] if extras_only else list(project["dependencies"])
    for name in extras:
        found += optional[name]
    return [r for r in dict.fromkeys(found) if _name(r) != "torch"]


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement)[0].lower()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", nargs="?", default=Path(__file__).resolve().parent.parent / "pyproject.toml")
    parser.add_argument("--extra", action="append", default=[], help="an optional-dependencies group")
    parser.add_argument("--extras-only", action="store_true", help="only the extras' requirements")
    args = parser.parse_args(argv)
    with open(args.pyproject, "rb") as f:
        pyproject = tomllib.load(f)
    try:
        print("\n".join(requirements(pyproject, args.extra, args.extras_only)))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
