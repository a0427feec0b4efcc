# syntax=docker/dockerfile:1
# coldstart-cpu: data_prep, base_model, eval on CPU, the `coldstart` CLI, and the MLflow tracking
# server of k8s/ (mlflow + boto3 + the Postgres driver). CPU torch from the PyTorch CPU index.
# Build from the repository root (docker/build.sh does):
#   docker build -f docker/cpu.Dockerfile -t coldstart-cpu .
ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

# ---------------------------------------------------------------- builder: the venv in /opt/venv
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
ARG PIP_VERSION=26.3
RUN python -m venv /opt/venv && pip install "pip==${PIP_VERSION}"

# torch first, from the CPU index, at the version of the repo's constraints-cpu.txt (the lock
# agrees: a test checks it); the lock's `torch==` line is then satisfied by the +cpu build, and
# the lock installs torch's own dependencies from PyPI at their pinned versions.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY constraints-cpu.txt /tmp/lock/repo-constraints-cpu.txt
COPY docker/constraints-cpu.txt /tmp/lock/constraints-cpu.txt
RUN pip install --no-deps --index-url "${TORCH_INDEX_URL}" -c /tmp/lock/repo-constraints-cpu.txt torch \
 && pip install -r /tmp/lock/constraints-cpu.txt

# The project itself, no dependencies (all pinned above): a code change rebuilds only this layer.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
RUN pip install --no-deps --no-build-isolation . \
 && pip check \
 && python -c "import torch, coldstart.common.config, coldstart.pipelines.cli; assert not torch.cuda.is_available()"

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="coldstart-cpu" \
      org.opencontainers.image.description="coldstart data_prep / CPU eval / CLI / MLflow server" \
      org.opencontainers.image.revision="${GIT_SHA}"

# Non-root user (numeric, so runAsNonRoot can verify it) in group 0, for clusters that run
# containers under an arbitrary UID. The KFP launcher writes artifacts below /s3, /minio, /gcs.
ARG UID=10001
RUN useradd --uid "${UID}" --gid 0 --create-home --home-dir /home/coldstart --shell /usr/sbin/nologin coldstart \
 && mkdir -p /app /workspace /s3 /minio /gcs /oci \
 && chown -R "${UID}:0" /app /workspace /s3 /minio /gcs /oci /home/coldstart \
 && chmod -R g=u /app /workspace /s3 /minio /gcs /oci /home/coldstart

COPY --from=builder /opt/venv /opt/venv
COPY --chown=${UID}:0 configs /app/configs
# TOKENIZERS_PARALLELISM trips the "sensitive data" rule (TOKEN); it holds no secret.
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/coldstart \
    HF_HOME=/workspace/.cache/huggingface \
    TORCH_EXTENSIONS_DIR=/workspace/.cache/torch_extensions \
    MPLCONFIGDIR=/tmp/matplotlib \
    TOKENIZERS_PARALLELISM=false \
    GIT_PYTHON_REFRESH=quiet
WORKDIR /app
USER ${UID}
CMD ["coldstart", "--help"]
