"""The image's build, checked without building it: what lets the CPU image build offline from a
local base with either builder, and that scripts/image_check.sh (`make image-check`, which builds
and runs it in real containers; docs/DEPLOY.md has its figures) fails loudly when a build breaks.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SCRIPT = ROOT / "scripts" / "image_check.sh"


def stages(text: str) -> list[tuple[str, str | None, list[str]]]:
    """(base, name, instructions) for each FROM, continued lines joined, comments left out."""
    joined = re.sub(r"\\\n\s*", " ", re.sub(r"^\s*#.*\n", "", text, flags=re.MULTILINE))
    found = []
    for line in filter(str.strip, joined.splitlines()):
        if line.startswith("FROM "):
            base, _, name = line.removeprefix("FROM ").partition(" AS ")
            found.append((base, name or None, []))
        elif found:
            found[-1][2].append(line.split(" ", 1)[0])
    return found


def test_no_syntax_directive_sends_buildkit_to_a_registry_for_its_frontend():
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE, re.MULTILINE | re.IGNORECASE)


def test_the_legacy_builder_building_every_stage_builds_nothing_for_the_other_variant():
    """DOCKER_BUILDKIT=0 builds every stage, used or not: a CUDA stage that installed torch would
    cost a CPU build 5 GB. The variant stages hold environment only; torch is installed once, in
    the image's own stage, from the index its VARIANT names."""
    found = stages(DOCKERFILE)
    *others, (last_base, last_name, _) = found
    variants = {name: steps for _, name, steps in others if name and name.startswith("variant-")}

    assert (last_base, last_name) == ("variant-${VARIANT}", None)
    assert set(variants) == {"variant-cpu", "variant-cuda"}
    assert all(set(steps) <= {"ENV", "LABEL"} for steps in variants.values()), variants
    assert [name for _, name, steps in others if "RUN" in steps] == ["build"]  # the code's wheel, both variants'


def test_the_cpu_torch_index_is_a_build_argument_defaulting_to_pytorchs_cpu_index():
    assert re.search(r"^ARG TORCH_INDEX=https://download\.pytorch\.org/whl/cpu$", DOCKERFILE, re.MULTILINE)
    assert '--index-url "$TORCH_INDEX"' in DOCKERFILE


def test_the_image_runs_as_its_own_non_root_user():
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.MULTILINE)
    assert users == ["10001"]
    assert "useradd --uid 10001" in DOCKERFILE


def test_helm_targets_need_no_virtualenv_and_image_check_runs_the_script():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("helm-lint", "helm-template"):
        rule = re.search(rf"^{target}:(.*)\n((?:\t.*\n?)+)", makefile, re.MULTILINE)
        assert rule[1].strip() == "", f"{target} depends on {rule[1].strip()}"
        assert "$(PY)" not in rule[2] and "$(VENV)" not in rule[2]
    assert re.search(r"^image-check:\n\tscripts/image_check\.sh", makefile, re.MULTILINE)


def test_the_check_fails_loudly_when_docker_is_there_and_the_build_breaks(tmp_path):
    """A docker that answers but whose build fails: the script exits non-zero naming the build
    and quoting it, and never prints that it passed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        "  build) echo 'Step 7/16 : RUN pip install torch'; echo 'No matching distribution found for torch'\n"
        "         echo \"The command '/bin/bash -o pipefail -c pip install' returned a non-zero code: 1\"; exit 1;;\n"
        "  *) exit 0;;\n"  # info, image inspect: a running docker that holds the base
        "esac\n")
    (bin_dir / "debootstrap").write_text("#!/bin/sh\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "IMAGE_CHECK_LOGS": str(tmp_path / "logs"),
           "TORCH_INDEX": "http://127.0.0.1:9/"}

    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 1
    assert "IMAGE CHECK FAILED: docker build (build.log)" in done.stderr
    assert "No matching distribution found for torch" in done.stderr
    assert "PASSED" not in done.stdout
