#!/usr/bin/env bash
# The GPU figures of docs/BENCHMARKS.md in one short run on a machine with an NVIDIA GPU whose python3
# already holds torch (>= 2.9) and which cannot fetch packages: bench/batched.py's bar (batched at
# group 64 >= 10x one by one) and bench/atari.py's frames per second, one by one against batched.
#
#   scripts/gpu_check.sh wheels   here, with network: the wheels evoarena's benches need beyond
#                                 such a machine's image, in .whl/ (git-ignored; ~6 MB), at the
#                                 versions this checkout's .venv tested (make install first)
#   scripts/gpu_check.sh run      there, from the repository root: installs .whl/ into /tmp/site,
#                                 runs both benches on cuda, writes their output to $OUT (or /tmp)
#
# With this project's device tool: run `scripts/gpu_check.sh wheels` here, then
# device run with carry [".whl"], command `scripts/gpu_check.sh run`, timeout_s 600.
set -euo pipefail
cd "$(dirname "$0")/.."

# Packages the benches import that a GPU image with torch, numpy, PyYAML, OpenCV and cloudpickle lacks.
WHEELS=(pydantic pydantic-core annotated-types typing-inspection gymnasium farama-notifications ale-py)

case "${1:-}" in
wheels)
    pins=()
    for name in "${WHEELS[@]}"; do
        version=$(.venv/bin/python -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
        [[ -n $version ]] || { echo "$name is not installed in .venv: run make install first" >&2; exit 1; }
        pins+=("$name==$version")
    done
    rm -rf .whl && mkdir .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
    ls .whl
    ;;
run)
    out=${OUT:-/tmp}
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:service PYTHONUNBUFFERED=1
    nvidia-smi -L | tee "$out/gpu.txt"
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$out/gpu.txt"
    status=0
    python3 bench/batched.py --device cuda --repeats 3 2>&1 | tee "$out/batched.txt" || status=1
    python3 bench/atari.py --throughput-only --device cuda --networks 16 2>&1 | tee "$out/atari.txt" || status=1
    exit $status
    ;;
*)
    echo "usage: $0 wheels|run" >&2
    exit 2
    ;;
esac
