# syntax=docker/dockerfile:1
# The evoarena image: a worker (`evoarena worker`) or a master (`evoarena run EXP --fleet`).
#
#   docker build -t evoarena .                           # CUDA (PyTorch's runtime image)
#   docker build --build-arg VARIANT=cpu -t evoarena:cpu .  # CPU only, for a laptop or kind
#
# No credentials are baked in: broker, store and S3 come from the environment at run time.

ARG VARIANT=cuda
# Pinned by tag; torch in both must satisfy pyproject's range so pip leaves it alone.
ARG CUDA_BASE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime
ARG PYTHON_BASE=python:3.11.13-slim-bookworm
ARG TORCH_CPU_VERSION=2.8.0

# --- build: the evoarena wheel (pure Python), nothing else ----------------------------------
FROM ${PYTHON_BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- the two runtimes; VARIANT picks one -------------------------------------------------------
FROM ${CUDA_BASE} AS runtime-cuda

FROM ${PYTHON_BASE} AS runtime-cpu
ARG TORCH_CPU_VERSION
# The CPU wheel from PyTorch's own index; PyPI's default torch is a multi-GB CUDA build.
RUN pip install --no-cache-dir "torch==${TORCH_CPU_VERSION}" --index-url https://download.pytorch.org/whl/cpu

# --- the image ------------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM runtime-${VARIANT}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EVOARENA_NOISE_DIR=/var/cache/evoarena/noise
COPY --from=build /wheels /wheels
# DL3013: this is the wheel built above; its dependencies are pinned by pyproject's ranges.
# hadolint ignore=DL3013
RUN set -- /wheels/evoarena-*.whl \
    && pip install --no-cache-dir "$1[monitor]" \
    && rm -rf /wheels \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin evoarena \
    && mkdir -p /var/cache/evoarena/noise \
    && chown -R 10001:10001 /var/cache/evoarena
USER 10001
WORKDIR /home/evoarena
ENTRYPOINT ["evoarena"]
CMD ["worker"]
