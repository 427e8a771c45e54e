# kubetrain images. Three targets from one file (`make images` builds them; images/build.sh documents the flags):
#   control  the operator and the REST API: kubetrain with its control extra only (no torch, Ray, transformers)
#   runtime  what the Ray head and workers run (KubeRay starts `ray start`, the RayJob runs `python -m kubetrain.runtime`):
#            Ray, torch (CPU or CUDA), DeepSpeed, transformers, PEFT, MLflow and kubetrain
#   mlflow   the Helm chart's MLflow tracking server (MLflow + the PostgreSQL driver + boto3)
#
#   docker build --target control -t ghcr.io/kubetrain/kubetrain-control:0.1.0 .
#   docker build --target runtime -t ghcr.io/kubetrain/kubetrain:0.1.0 .                      # CPU torch
#   docker build --target runtime --build-arg VARIANT=cuda -t ghcr.io/kubetrain/kubetrain:0.1.0-cuda .
#
# Versions: every package is pinned by images/<target>.lock (images/lock.sh writes them from tested builds) and
# constraints.txt (torch, DeepSpeed).
# Nothing secret is baked in: pip settings arrive as PIP_ARGS (index URLs, find-links, a CA file path) and the
# files they name are mounted for the build only (images/build.sh does this with buildah --volume).

# The public default; a machine without a registry passes a local Debian base (images/base.sh).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/home/kubetrain
# uid 1000 written directly: a debootstrap minbase has no useradd; Ray's own images also run as uid 1000.
# profile.d: a login shell (KubeRay's ENABLE_LOGIN_SHELL runs `bash -lc`) resets PATH; keep the venv on it.
RUN echo 'kubetrain:x:1000:1000:kubetrain:/home/kubetrain:/bin/sh' >> /etc/passwd \
 && echo 'kubetrain:x:1000:' >> /etc/group \
 && mkdir -p /home/kubetrain && chown 1000:1000 /home/kubetrain \
 && python3 -m venv /opt/venv \
 && echo 'PATH=/opt/venv/bin:$PATH' > /etc/profile.d/kubetrain-venv.sh
WORKDIR /home/kubetrain

# ---------------------------------------------------------------------------------------------------------
# The control plane's virtualenv, built apart so the final image carries neither the sources nor pip's build files.
FROM base AS control-build
ARG PIP_ARGS=""
# yes: install under images/<target>.lock; no: newest versions pyproject.toml allows (images/lock.sh then re-pins)
ARG LOCKED=yes
COPY pyproject.toml constraints.txt images/requirements.py images/control.lock /src/
RUN python /src/requirements.py /src/pyproject.toml control > /src/requirements.txt \
 && if [ "$LOCKED" = yes ]; then lock="-c /src/control.lock"; else lock=""; fi \
 && pip install -q $PIP_ARGS -U pip \
 && pip install -q $PIP_ARGS -c /src/constraints.txt $lock -r /src/requirements.txt
# the sources last: a change to them rebuilds only this layer
COPY README.md /src/
COPY service /src/service
RUN pip install -q $PIP_ARGS --no-deps /src \
 && ! python -c "import torch" 2>/dev/null \
 && kubetrain --help >/dev/null

# ---------------------------------------------------------------------------------------------------------
FROM base AS control
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/kubetrain/kubetrain
LABEL org.opencontainers.image.title="kubetrain-control" \
      org.opencontainers.image.description="kubetrain operator and REST API (no training stack)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=control-build /opt/venv /opt/venv
USER 1000:1000
ENTRYPOINT ["kubetrain"]
CMD ["operator"]

# ---------------------------------------------------------------------------------------------------------
# The chart's MLflow tracking server: MLflow with the PostgreSQL driver and boto3 (S3 artifact stores).
FROM base AS mlflow-build
ARG PIP_ARGS=""
ARG LOCKED=yes
COPY images/mlflow.lock /src/
RUN if [ "$LOCKED" = yes ]; then lock="-c /src/mlflow.lock"; else lock=""; fi \
 && pip install -q $PIP_ARGS $lock mlflow "psycopg[binary]" boto3 \
 && mlflow server --help >/dev/null

FROM base AS mlflow
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/kubetrain/kubetrain
LABEL org.opencontainers.image.title="kubetrain-mlflow" \
      org.opencontainers.image.description="MLflow tracking server with PostgreSQL and S3 support, for the kubetrain chart" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=mlflow-build /opt/venv /opt/venv
USER 1000:1000
EXPOSE 5000
ENTRYPOINT ["mlflow"]
CMD ["server", "--host", "0.0.0.0", "--port", "5000"]

# ---------------------------------------------------------------------------------------------------------
FROM base AS runtime
# cpu: torch's CPU build; cuda: a CUDA build (its CUDA libraries come as pip packages; the node brings the driver)
ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
# where torch comes from; empty picks download.pytorch.org's index for VARIANT
ARG TORCH_INDEX_URL=""
ARG PIP_ARGS=""
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/kubetrain/kubetrain
# a C/C++ compiler stays in the image: DeepSpeed JIT-builds its CPU ops on first use, netifaces (BOHB) builds
# from source; wget for KubeRay's health probes
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      build-essential python3-dev wget ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN case "$VARIANT" in \
      cpu) index=https://download.pytorch.org/whl/cpu ;; \
      cuda) index=https://download.pytorch.org/whl/$TORCH_CUDA ;; \
      *) echo "VARIANT must be cpu or cuda, got '$VARIANT'" >&2; exit 1 ;; \
    esac \
 && pip install -q $PIP_ARGS -U pip setuptools wheel \
 && pip install -q $PIP_ARGS --extra-index-url "${TORCH_INDEX_URL:-$index}" "torch==${TORCH_VERSION}"
COPY pyproject.toml constraints.txt images/requirements.py images/runtime.lock /src/
# torch stays as installed (constraints.txt pins it); DeepSpeed builds without isolation against that torch
ARG LOCKED=yes
RUN python /src/requirements.py /src/pyproject.toml train > /src/requirements.txt \
 && if [ "$LOCKED" = yes ]; then lock="-c /src/runtime.lock"; else lock=""; fi \
 && pip install -q $PIP_ARGS -c /src/constraints.txt $lock -r /src/requirements.txt \
 && DS_BUILD_OPS=0 pip install -q $PIP_ARGS -c /src/constraints.txt $lock --no-build-isolation deepspeed
# the sources last: a change to them rebuilds only this layer
COPY README.md /src/
COPY service /src/service
RUN pip install -q $PIP_ARGS --no-deps /src \
 && rm -rf /src \
 && python -c "import torch, ray, deepspeed, transformers, peft, mlflow, kubetrain.runtime"
LABEL org.opencontainers.image.title="kubetrain" \
      org.opencontainers.image.description="kubetrain runtime for KubeRay pods (Ray ${VARIANT} image)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 1000:1000
CMD ["python", "-m", "kubetrain.runtime", "--help"]
