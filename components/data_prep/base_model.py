"""Bring the base model into the pipeline as a Model artifact.

Downstream stages (SFT, RL-only GRPO, eval of the base) all read the same artifact, so the
`tiny` preset is built once per run and a hub model is fetched once; an `s3://` base model is
imported by the pipeline with `dsl.importer` instead and never passes through here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from coldstart.common.config import PipelineConfig
from coldstart.common.models import TINY, check_model_dir, resolve_model_dir


def prepare_base_model(cfg: PipelineConfig, out_dir: Path, cache_dir: Path) -> Path:
    model = cfg.model
    if model.name_or_path == TINY:
        from coldstart.common.tiny_model import build_tiny_model

        return build_tiny_model(out_dir, model.tiny, cfg.data.min_pixels, cfg.data.max_pixels)
    source = check_model_dir(
        resolve_model_dir(model, cache_dir, cfg.data.min_pixels, cfg.data.max_pixels)
    )
    shutil.copytree(source, out_dir, dirs_exist_ok=True)
    return out_dir
