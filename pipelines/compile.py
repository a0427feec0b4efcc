"""Compile a pipeline for a cluster, refusing images a run could not reproduce.

A mutable tag (`:latest`, or none, which means latest) lets two runs of one compiled pipeline pull
different code, and defeats KFP's cache, which keys a task on the image *name*: a cached result of
old code is reused after a push. So `compile`, `submit` and `rerun --host` read the image of every
task from the compiled YAML and refuse `latest` and untagged ones (a digest, `@sha256:...`, is
fine), naming the task and the fix. `--image-tag` sets `cluster.image_tag` for the run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from coldstart.common.errors import InputError
from coldstart.common.images import DEFAULT_REGISTRY

MUTABLE_TAGS = ("latest",)


def image_tag(image: str) -> str | None:
    """The tag of an image reference; '' for a digest reference, None when it has no tag."""
    if "@" in image:
        return ""
    name = image.rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else None


def package_images(package: str | Path) -> dict[str, str]:
    """{executor: image} of a compiled pipeline YAML."""
    spec = next(yaml.safe_load_all(Path(package).read_text()))
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    return {name: ex["container"]["image"] for name, ex in executors.items() if "container" in ex}


def mutable_images(images: dict[str, str]) -> dict[str, str]:
    return {ex: img for ex, img in images.items() if image_tag(img) in (None, *MUTABLE_TAGS)}


def check_package_images(package: str | Path) -> None:
    """Raise naming every task whose image is untagged or `latest`; warn about the default
    registry, which is a placeholder until docker/build.sh pushes there."""
    images = package_images(package)
    bad = mutable_images(images)
    if bad:
        lines = "\n".join(f"  {ex}: {img}" for ex, img in sorted(bad.items()))
        raise InputError(
            f"images with a mutable tag (a run could pull other code, and KFP's cache would reuse "
            f"results of old code):\n{lines}\nbuild with docker/build.sh and pass the tag it "
            "printed: --image-tag TAG (or COLDSTART_IMAGE_TAG, or cluster.image_tag in the config)"
        )
    defaults = sorted({img for img in images.values() if img.startswith(f"{DEFAULT_REGISTRY}/")})
    if defaults:
        print(
            f"warning: images under the default registry {DEFAULT_REGISTRY} ({', '.join(defaults)}): "
            "set COLDSTART_REGISTRY or cluster.image_registry to where docker/build.sh pushed",
            file=sys.stderr,
        )


def compile_package(pipeline_func: Any, package: str | Path) -> None:
    """Compile `pipeline_func` to `package`; remove it again if its images are refused."""
    from kfp import compiler

    compiler.Compiler().compile(pipeline_func, str(package))
    try:
        check_package_images(package)
    except InputError:
        Path(package).unlink(missing_ok=True)
        raise


class _ImageTag(argparse.Action):
    """`--image-tag T` is `--set cluster.image_tag=T` (so every command loads it the same way)."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest, None) or [])
        setattr(namespace, self.dest, [*items, f"cluster.image_tag={values}"])


def add_image_tag_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image-tag",
        dest="overrides",
        action=_ImageTag,
        default=argparse.SUPPRESS,  # the list is --set's
        metavar="TAG",
        help="tag of the coldstart images (the one docker/build.sh printed); "
        "default: cluster.image_tag, else $COLDSTART_IMAGE_TAG. `latest` is refused",
    )
