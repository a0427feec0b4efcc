# syntax=docker/dockerfile:1
# coldstart-train: SFT and GRPO with HF-generate rollouts, eval with the HF backend, on NVIDIA GPUs.
# CUDA 13.0 (the CUDA of the torch 2.14.0 wheels that vllm 0.33.0 pins), DeepSpeed with its fused
# Adam op prebuilt, flash-attention optional (FLASH_ATTN=1: a long compile).
# Build from the repository root (docker/build.sh does):
#   docker build -f docker/train.Dockerfile [--build-arg FLASH_ATTN=1] -t coldstart-train .
#
# The runtime stage keeps the CUDA *devel* base on purpose: DeepSpeed ops other than fused Adam
# (e.g. cpu_adam for ZeRO-Offload), Triton and flashinfer (vllm, in the rollout image) compile
# kernels at first use and need nvcc and a C++ compiler. Pass a -runtime- image as CUDA_RUNTIME_IMAGE
# for a smaller image if you use none of them. No -cudnn- base: torch's pip wheels bring cuDNN
# (nvidia-cudnn-cu13 in the lock), a second copy in the base image would only add gigabytes.
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:13.0.2-devel-ubuntu24.04
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:13.0.2-devel-ubuntu24.04

# ---------------------------------------------------------------- builder: the venv in /opt/venv
FROM ${CUDA_DEVEL_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev build-essential ninja-build \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
ARG PIP_VERSION=26.3
RUN python3.12 -m venv /opt/venv && pip install "pip==${PIP_VERSION}"

# Everything but DeepSpeed (torch 2.14.0 + cu130 wheels from PyPI, transformers, ...) ...
COPY docker/constraints-train.txt /tmp/lock/constraints-train.txt
RUN grep -v '^deepspeed==' /tmp/lock/constraints-train.txt > /tmp/lock/without-deepspeed.txt \
 && pip install -r /tmp/lock/without-deepspeed.txt

# ... then DeepSpeed, built against that torch with the fused Adam op compiled ahead of time
# for the GPU generations listed (A100 8.0, H100/H200 9.0, B200 10.0). There is no GPU during
# `docker build`: without DS_ACCELERATOR=cuda DeepSpeed builds for the cpu accelerator and every
# pod JIT-compiles FusedAdam. check_deepspeed_build.py fails the build unless cuda + fused_adam.
ARG TORCH_CUDA_ARCH_LIST="8.0;9.0;10.0"
ARG DS_BUILD_FUSED_ADAM=1
ARG DS_ACCELERATOR=cuda
COPY docker/check_deepspeed_build.py /tmp/lock/check_deepspeed_build.py
RUN TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}" DS_BUILD_FUSED_ADAM="${DS_BUILD_FUSED_ADAM}" \
    DS_ACCELERATOR="${DS_ACCELERATOR}" \
    pip install --no-deps --no-build-isolation -c /tmp/lock/constraints-train.txt deepspeed \
 && python /tmp/lock/check_deepspeed_build.py fused_adam

# Optional flash-attention 2 (configs with model.attn_implementation: flash_attention_2 need it).
# flash-attn reads its own list of architectures (FLASH_ATTN_CUDA_ARCHS), not TORCH_CUDA_ARCH_LIST.
ARG FLASH_ATTN=0
ARG FLASH_ATTN_VERSION=2.8.3.post2
ARG FLASH_ATTN_CUDA_ARCHS="80;90;100"
ARG MAX_JOBS=8
RUN if [ "${FLASH_ATTN}" = "1" ]; then \
      TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}" FLASH_ATTN_CUDA_ARCHS="${FLASH_ATTN_CUDA_ARCHS}" \
      MAX_JOBS="${MAX_JOBS}" FLASH_ATTENTION_FORCE_BUILD=TRUE \
      pip install --no-deps --no-build-isolation "flash-attn==${FLASH_ATTN_VERSION}"; \
    fi

# The project itself, no dependencies (all pinned above): a code change rebuilds only this layer.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
RUN pip install --no-deps --no-build-isolation . \
 && pip check \
 && python -c "import torch, deepspeed, transformers, coldstart.common.config; assert torch.version.cuda.startswith('13.')"

# ---------------------------------------------------------------- runtime
FROM ${CUDA_RUNTIME_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-dev build-essential ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="coldstart-train" \
      org.opencontainers.image.description="coldstart SFT / GRPO (HF rollouts) / eval on CUDA GPUs" \
      org.opencontainers.image.revision="${GIT_SHA}"

# Non-root user (numeric, so runAsNonRoot can verify it; 1000 is taken by ubuntu) in group 0 for
# clusters that run containers under an arbitrary UID. The KFP launcher writes below /s3, /minio, /gcs.
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
    TRITON_CACHE_DIR=/workspace/.cache/triton \
    MPLCONFIGDIR=/tmp/matplotlib \
    TOKENIZERS_PARALLELISM=false \
    GIT_PYTHON_REFRESH=quiet
WORKDIR /app
USER ${UID}
CMD ["coldstart", "--help"]
