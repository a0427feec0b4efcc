"""Resolve a model reference to a local directory and load model + processor from it.

Every stage loads by path, whatever the source: the `tiny` preset is built into a directory
first, `s3://` prefixes are downloaded, hub ids are fetched only when the hub is reachable.
So the tiny CPU run exercises the same loading code as a Qwen2.5-VL-7B run on the cluster.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, PreTrainedModel

from coldstart.common.config import ModelConfig
from coldstart.common.errors import InputError
from coldstart.common.processor import ImageQwen2_5_VLProcessor

log = logging.getLogger(__name__)

TINY = "tiny"
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class ModelLoadError(InputError):
    """A model reference that cannot be turned into a usable model directory."""


def resolve_model_dir(
    model: ModelConfig, cache_dir: str | Path, min_pixels: int, max_pixels: int
) -> Path:
    """Return a local directory holding config, weights, tokenizer and processor for `model`."""
    ref = model.name_or_path
    if ref == TINY:
        return _cached_tiny_model(model, Path(cache_dir), min_pixels, max_pixels)
    if ref.startswith("s3://"):
        from coldstart.common.storage import materialize

        return materialize(ref, Path(cache_dir) / "models")
    if Path(ref).exists():
        return Path(ref)
    if os.environ.get("HF_HUB_OFFLINE") == "1" or "/" not in ref:
        raise ModelLoadError(
            f"model.name_or_path={ref!r}: not a local directory, not s3://, and not a reachable hub id "
            "(HF_HUB_OFFLINE=1 or no 'org/name'). Give a model directory or an s3:// prefix."
        )
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(ref, cache_dir=str(Path(cache_dir) / "hub")))


def _cached_tiny_model(
    model: ModelConfig, cache_dir: Path, min_pixels: int, max_pixels: int
) -> Path:
    """The tiny preset, built once per settings: the folder is named by the digest of what built it
    (sizes, seed, pixel bounds), and moved into place only when complete."""
    from coldstart.common.digests import json_digest
    from coldstart.common.tiny_model import build_tiny_model

    key = json_digest([model.tiny.model_dump(mode="json"), min_pixels, max_pixels])[:12]
    target = cache_dir / f"tiny-qwen2.5-vl-{key}"
    if not target.is_dir():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".building-") as tmp:
            build_tiny_model(Path(tmp) / "model", model.tiny, min_pixels, max_pixels)
            try:
                os.replace(Path(tmp) / "model", target)
            except OSError:  # another process built it a moment ago (the same bytes)
                if not target.is_dir():
                    raise
    return target


def check_model_dir(path: str | Path) -> Path:
    """Fail early, naming the missing file, instead of letting transformers guess a text-only setup."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path}: no config.json; is this a saved model directory?")
    if not any((path / f).exists() for f in PROCESSOR_FILES):
        raise ModelLoadError(
            f"{path}: no image processor ({' or '.join(PROCESSOR_FILES)}); save the processor "
            "next to the weights (processor.save_pretrained(dir)) or copy it from the base model."
        )
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise ModelLoadError(f"{path}: no tokenizer ({' or '.join(TOKENIZER_FILES)}).")
    return path


def load_processor(
    path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None
) -> ImageQwen2_5_VLProcessor:
    path = check_model_dir(path)
    return ImageQwen2_5_VLProcessor.from_pretrained(
        str(path), min_pixels=min_pixels, max_pixels=max_pixels
    )


def check_attn_implementation(name: str) -> None:
    """Refuse an attention kernel this environment cannot run, before any weights are read.

    Without this, transformers fails inside `from_pretrained` (after a multi-GB load), and a
    cluster task retries the same failure. flash_attention_2 needs the flash-attn package
    (only in a train image built with FLASH_ATTN=1) and a CUDA device; sdpa and eager are torch's.
    """
    if name in ("sdpa", "eager"):
        return
    if name != "flash_attention_2":
        raise ModelLoadError(
            f"model.attn_implementation={name!r}: unknown; valid: sdpa, eager, flash_attention_2"
        )
    from importlib.util import find_spec

    from transformers.utils import is_flash_attn_2_available

    if find_spec("flash_attn") is None:
        raise ModelLoadError(
            "model.attn_implementation=flash_attention_2 but the flash-attn package is not installed "
            "here (the default train image has none): set model.attn_implementation: sdpa, or build "
            "the train image with FLASH_ATTN=1 docker/build.sh train (docs/images.md)"
        )
    if not torch.cuda.is_available():
        raise ModelLoadError(
            "model.attn_implementation=flash_attention_2 needs a CUDA GPU and this process sees "
            "none: use sdpa on CPU, or give the task GPUs (cluster.resources.<stage>.accelerator_count)"
        )
    if not is_flash_attn_2_available():
        raise ModelLoadError(
            "model.attn_implementation=flash_attention_2: flash-attn is installed but transformers "
            "cannot use it (version < 2.3.3 or a build for another torch); rebuild the image"
        )


def load_model(
    path: str | Path, dtype: str = "float32", attn_implementation: str = "sdpa"
) -> PreTrainedModel:
    check_attn_implementation(attn_implementation)
    path = check_model_dir(path)
    return AutoModelForImageTextToText.from_pretrained(
        str(path), dtype=getattr(torch, dtype), attn_implementation=attn_implementation
    )
