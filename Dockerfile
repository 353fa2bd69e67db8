# syntax=docker/dockerfile:1
#
# VAE serving image (default target) and trainer image (`--target trainer`).
#
#   docker build -t vae-serve .                                # GPU serving image (CUDA 13 + cuDNN 9)
#   docker build --target trainer -t vae-trainer .             # torch image for train / export jobs
#   docker build --build-arg ORT_PACKAGE=onnxruntime ...       # CPU-only serving image
#   docker build --build-arg MODEL_PATH=models/vae ...         # bake an exported model into /models
#
# The CUDA runtime images ship no Python, so every stage installs the distribution's python3 on top of
# BASE_IMAGE (Ubuntu 24.04 -> 3.12, Debian 12 -> 3.11; the project needs >= 3.11). The virtualenv is
# built in a builder stage and copied into a runtime stage made FROM the same base, so its interpreter
# symlink (/opt/venv/bin/python3 -> /usr/bin/python3) resolves in both, with no compiler or pip cache
# left in the image.
#
# pip behind a proxy or mirror: pass the pip config and the CA bundle as build secrets (never baked):
#   --secret id=pip_conf,src=/etc/pip.conf --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt

# onnxruntime-gpu 1.31 is built against CUDA 13 and cuDNN 9.
ARG BASE_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS python
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Versions come from the base's distribution (Ubuntu or Debian), so they cannot be pinned here
# without tying the Dockerfile to one base; the base image tag pins them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A numeric user with a passwd entry (libraries that look up $HOME or the user name need one). Written
# directly because minimal bases have no useradd.
RUN echo "vae:x:10001:10001:vae:/home/vae:/usr/sbin/nologin" >> /etc/passwd \
    && echo "vae:x:10001:" >> /etc/group \
    && mkdir -p /home/vae /models \
    && chown 10001:10001 /home/vae

# ---------------------------------------------------------------------------------------------------
FROM python AS builder
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scripts/image_requirements.py scripts/
COPY contracts/ contracts/
COPY trainer/ trainer/
COPY exporter/ exporter/
COPY service/ service/
COPY client/ client/
COPY protos/ protos/
COPY vae_cli/ vae_cli/
RUN python3 -m venv /opt/venv

# ---------------------------------------------------------------------------------------------------
FROM builder AS build-serve
# The serving stack: the `serve` extra with its CPU onnxruntime swapped for ORT_PACKAGE (the `gpu`
# extra's onnxruntime-gpu by default). Both wheels install the same `onnxruntime` module, so only one
# may be present; the project itself goes in with --no-deps for the same reason. No torch.
ARG ORT_PACKAGE=onnxruntime-gpu==1.31.1
# pip reads an optional config and CA bundle from build secrets; absent secrets leave pip's defaults.
RUN --mount=type=secret,id=pip_conf --mount=type=secret,id=pip_ca \
    set -eu; \
    if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi; \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    python3 scripts/image_requirements.py serve --drop onnxruntime --drop onnxruntime-gpu \
        --add "${ORT_PACKAGE}" > /tmp/requirements.txt; \
    /opt/venv/bin/pip install -r /tmp/requirements.txt; \
    /opt/venv/bin/pip install --no-deps /src; \
    /opt/venv/bin/pip check; \
    if /opt/venv/bin/python -c "import torch" 2>/dev/null; then echo "torch must not be in the serving image" >&2; exit 1; fi; \
    /opt/venv/bin/python -c "import onnxruntime, contracts.manifest, service, client, protos; print('onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"

# ---------------------------------------------------------------------------------------------------
FROM builder AS build-train
# torch is pinned (an unpinned torch resolves to whatever is newest); TORCH_INDEX_URL selects a
# wheel index (e.g. https://download.pytorch.org/whl/cu130), empty for PyPI's default build.
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=
# pip reads an optional config and CA bundle from build secrets; absent secrets leave pip's defaults.
RUN --mount=type=secret,id=pip_conf --mount=type=secret,id=pip_ca \
    set -eu; \
    if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi; \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    if [ -n "${TORCH_INDEX_URL}" ]; then export PIP_EXTRA_INDEX_URL="${TORCH_INDEX_URL}"; fi; \
    /opt/venv/bin/pip install "${TORCH_SPEC}"; \
    python3 scripts/image_requirements.py train --drop torch > /tmp/requirements.txt; \
    /opt/venv/bin/pip install -r /tmp/requirements.txt; \
    /opt/venv/bin/pip install --no-deps /src; \
    /opt/venv/bin/pip check; \
    /opt/venv/bin/python -c "import torch, trainer, exporter; print('torch', torch.__version__)"

# ---------------------------------------------------------------------------------------------------
# Training and export jobs: `vae train ...`, `vae export RUN --out /models/NAME`, DDP through
# `torchrun --no-python vae train ...`. Runs and models go to mounted volumes.
FROM python AS trainer
COPY --from=build-train /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH} \
    HOME=/home/vae \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /work
USER 10001:10001
ENTRYPOINT ["vae"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------------
# The serving image (default target). Reads the model from /models: a mounted volume, or one baked in
# with --build-arg MODEL_PATH=<folder inside the build context> (an exported model folder).
FROM python AS serve
ARG MODEL_PATH=deploy/model-placeholder
COPY --from=build-serve /opt/venv /opt/venv
COPY --chown=10001:10001 ${MODEL_PATH}/ /models/
# Every setting is a VAE_* variable (see `vae serve --help`); these are the defaults the probes, the
# compose file and the Kubernetes manifests rely on.
ENV PATH=/opt/venv/bin:${PATH} \
    HOME=/home/vae \
    VAE_MODEL_DIR=/models \
    VAE_HOST=0.0.0.0 \
    VAE_PORT=50051 \
    VAE_METRICS_PORT=8000 \
    VAE_PROVIDER=auto \
    VAE_GRACE_SECONDS=30
EXPOSE 50051 8000
WORKDIR /home/vae
USER 10001:10001
# The project's own health command: exit 0 only when the gRPC health service answers SERVING. The
# shell form expands VAE_PORT, so the check follows a port changed at run time.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/bin/sh", "-c", "exec vae health --target 127.0.0.1:${VAE_PORT:-50051}"]
# SIGTERM starts the service's drain (VAE_GRACE_SECONDS); give `docker stop` a longer timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["vae", "serve"]
