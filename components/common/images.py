"""Container images of the components: the one place their names are written.

`docker/build.sh` reads these names to tag what it builds, and the pipeline sets each task's
image from here unless `cluster.resources.<stage>.image` overrides it, so the two cannot drift.
The registry prefix comes from COLDSTART_REGISTRY at build and compile time. DEFAULT_TAG is a
placeholder for the components' decorators (kfp.local ignores images): `coldstart compile` and
`submit` refuse it (pipelines/compile.py).
"""

from __future__ import annotations

import os

IMAGE_KINDS = ("cpu", "train", "rollout")
DEFAULT_REGISTRY = "ghcr.io/coldstart"
DEFAULT_TAG = "latest"

# Which image each stage runs in on the cluster.
STAGE_IMAGES = {
    "data_prep": "cpu",
    "base_model": "cpu",
    "sft": "train",
    "grpo": "train",
    "eval": "train",
}


def image_ref(kind: str, registry: str | None = None, tag: str | None = None) -> str:
    if kind not in IMAGE_KINDS:
        raise ValueError(f"unknown image kind {kind!r}; valid: {list(IMAGE_KINDS)}")
    registry = registry or os.environ.get("COLDSTART_REGISTRY", DEFAULT_REGISTRY)
    tag = tag or os.environ.get("COLDSTART_IMAGE_TAG", DEFAULT_TAG)
    return f"{registry}/coldstart-{kind}:{tag}"


def stage_image(stage: str) -> str:
    return image_ref(STAGE_IMAGES[stage])
