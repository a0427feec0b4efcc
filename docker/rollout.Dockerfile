# syntax=docker/dockerfile:1
# coldstart-rollout: the train image plus vllm (the project's `gpu` extra), for GRPO with vLLM
# rollouts, eval and distillation with backend: vllm.
# Build from the repository root after the train image (docker/build.sh passes TRAIN_IMAGE, the
# train image of the same commit):
#   docker build -f docker/rollout.Dockerfile --build-arg TRAIN_IMAGE=<registry>/coldstart-train:<sha> -t coldstart-rollout .
#
# One stage on top of train, not a builder + copy: copying the venv into a fresh stage would
# ship all of train's packages again as a new layer; here nodes that pulled train fetch only the
# vllm layer. docker/constraints-rollout.txt agrees with docker/constraints-train.txt on every
# package the two share (torch 2.14.0 included; a test checks it), so nothing of train is rebuilt.
ARG TRAIN_IMAGE
FROM ${TRAIN_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="coldstart-rollout" \
      org.opencontainers.image.description="coldstart GRPO with vLLM rollouts / eval with vLLM on CUDA GPUs" \
      org.opencontainers.image.revision="${GIT_SHA}"

USER 0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY docker/constraints-rollout.txt /tmp/lock/constraints-rollout.txt
COPY pyproject.toml README.md /tmp/src/
COPY components /tmp/src/components
COPY pipelines /tmp/src/pipelines
# `.[gpu]` under the rollout lock: installs vllm and what it needs at the pinned versions.
RUN pip install --no-build-isolation -c /tmp/lock/constraints-rollout.txt "/tmp/src[gpu]" \
 && pip check \
 && python -c "import torch, vllm, deepspeed, coldstart.common.config; assert torch.__version__.startswith('2.14.0')" \
 && rm -rf /tmp/src /tmp/lock

ARG UID=10001
USER ${UID}
