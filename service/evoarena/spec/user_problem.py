"""Problems of your own, named in the experiment file by import path:

    problem: {kind: "mypkg.tasks:CartPole", episodes: 3}

`kind` is "module:Name": a module importable where the run computes, and an object in it (a
class, a module or an instance) that offers problems.Problem's functions (problems/__init__.py).
The file's other fields are the problem's own; the spec keeps them as
`{kind: user, path: "mypkg.tasks:CartPole", fields: {episodes: 3}}` (the form it stores), and
checks them with the problem's `Spec` attribute, a pydantic model, where it has one, so a typo gets
one clear line as a built-in problem's would.

Who imports what. The master imports the problem the file it was given names (it reads that file
anyway). A worker imports only modules under the prefixes of its EVOARENA_PROBLEM_MODULES (empty
unless its operator lists them, as on a fleet): a task that names any other module is refused
before anything is imported, so a forged task cannot make a worker run code it was not told to
trust. `evoarena run` on one machine adds its spec's module to the workers it starts itself (api.py).
"""

from __future__ import annotations

import importlib
import re

PATH = re.compile(r"^(?P<module>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")
BUILT_IN = ("memorize", "atari", "gan")
FUNCTIONS = ("make_data", "architecture", "evaluate")  # problems.Problem's; evaluate_many and baseline optional


class UserProblemError(ValueError):
    """A user problem that cannot be named, imported or trusted here; `str()` is one line."""


def module_of(path: str) -> str:
    """The module of a user problem's import path ("pkg.tasks:Name" -> "pkg.tasks")."""
    match = PATH.match(path)
    if match is None:
        raise UserProblemError(f"{path!r} is neither a built-in problem ({', '.join(BUILT_IN)}) nor an import "
                               "path 'package.module:Name'")
    return match["module"]


def allowed(path: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    """Whether a worker whose EVOARENA_PROBLEM_MODULES is `prefixes` may import `path`'s module: it
    is one of them, or inside one as a package ("mypkg" allows "mypkg.tasks", not "mypkgx")."""
    module = module_of(path)
    return any(module == p or module.startswith(p + ".") for p in prefixes if p)


def load(path: str):
    """The problem object `path` names, imported (UserProblemError if it cannot be)."""
    module_name, name = module_of(path), path.rpartition(":")[2]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserProblemError(f"cannot import {module_name!r} ({exc}): install its package where the run "
                               "computes") from None
    problem = getattr(module, name, None)
    if problem is None:
        raise UserProblemError(f"module {module_name!r} has no {name!r}")
    missing = [f for f in FUNCTIONS if not callable(getattr(problem, f, None))]
    if missing:
        raise UserProblemError(f"{path} lacks {', '.join(missing)} (problems/__init__.py: Problem)")
    return problem


def check_fields(path: str, fields: dict) -> None:
    """Check a user problem's own fields with its `Spec` model, when it has one (UserProblemError
    naming the first field that does not fit)."""
    model = getattr(load(path), "Spec", None)
    if model is None:
        return
    from pydantic import ValidationError

    try:
        model.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "its fields"
        raise UserProblemError(f"{path}: {where}: {error['msg']}") from None
