"""What a newcomer sees first: `evoarena --help` and `--version`, and the README's and docs' links.

`--help` says in one sentence what the tool does and lists every command with a one-line
description; `--version` prints the installed package's version. Every relative link in README.md
and docs/*.md names a file of this repository, so that moving text between them cannot leave a dead
link (nor a path outside the repository, which a clone does not have).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def evoarena(*args: str) -> subprocess.CompletedProcess:
    # python -m evoarena: what the `evoarena` console script runs (pyproject.toml), on an 80-column terminal
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "evoarena", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def command_names() -> list[str]:
    """The subcommands the parser accepts, from its own refusal of one that does not exist."""
    done = evoarena("no-such-command")
    assert done.returncode == 2
    (choices,) = re.findall(r"choose from (.*?)\)", done.stderr)
    return [name.strip(" '\"") for name in choices.split(",")]


def test_version_is_the_installed_packages():
    done = evoarena("--version")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"evoarena {importlib.metadata.version('evoarena')}"


def test_help_says_what_the_tool_does_in_one_sentence_and_lists_every_command_in_one_line():
    done = evoarena("--help")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    names = command_names()

    description = done.stdout.split("\n\n")[1].replace("\n", " ").strip()
    assert description.startswith("evoarena ") and description.endswith(".")
    assert description.count(". ") == 0  # one sentence
    assert {"run", "status", "list", "export", "sample", "report", "baseline", "worker", "submit"} <= set(names)
    for name in names:
        (line,) = [i for i, text in enumerate(lines) if re.match(rf"\s+{re.escape(name)}\s{{2,}}\S", text)]
        description = lines[line].split(None, 1)[1]
        assert len(description) > 10, f"{name}: {description!r}"
        following = lines[line + 1] if line + 1 < len(lines) else ""
        # the next line is another command (or the end), not the description's continuation
        assert not following.strip() or re.match(r"\s+\S+\s{2,}\S", following), f"{name}: {following!r}"


def relative_links(path: Path) -> list[str]:
    """Markdown link and image targets that are not URLs or anchors, and `../` paths in code spans."""
    text = path.read_text()
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text) + re.findall(r"`(\.\./[^`\s]+)`", text)
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]


def test_every_relative_link_in_the_readme_and_docs_names_a_file_of_the_repository():
    dead = []
    for doc in DOCS:
        for target in relative_links(doc):
            resolved = (doc.parent / target).resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                dead.append(f"{doc.relative_to(ROOT)}: {target}")

    assert dead == []


def test_the_readme_links_every_doc():
    readme = (ROOT / "README.md").read_text()

    assert [doc.name for doc in DOCS[1:] if f"](docs/{doc.name})" not in readme] == []

