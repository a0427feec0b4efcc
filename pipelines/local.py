"""Run the pipeline on this machine with kfp.local: same DAG, subprocesses instead of pods."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from components.common.config import PipelineConfig
from components.common.tracking import resolve_tracking_uri
from pipelines.caching import run_local_pipeline
from pipelines.pipeline import build_pipeline

log = logging.getLogger(__name__)


def absolutize(cfg: PipelineConfig) -> PipelineConfig:
    """Components run with another working directory: make the output folder absolute."""
    if cfg.output_dir.startswith("s3://"):
        return cfg
    return cfg.model_copy(update={"output_dir": str(Path(cfg.output_dir).expanduser().resolve())})


def run_local(cfg: PipelineConfig, cache: bool = True) -> Path:
    """Run every stage through kfp.local; returns the pipeline root holding the artifacts.

    With `cache`, a stage whose config and inputs are unchanged since an earlier run under the
    same output folder is skipped and its outputs reused (kfp.local's cache). The run id that
    groups the stages in MLflow reaches the stage subprocesses through their inherited env.
    """
    cfg = absolutize(cfg)
    root = Path(cfg.output_dir) / "pipeline_root"
    root.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get("KFP_RUN_ID")
    os.environ["KFP_RUN_ID"] = time.strftime("local-%Y%m%d-%H%M%S")
    try:
        run_local_pipeline(build_pipeline(cfg), root, cache, config_json=cfg.to_json())
    finally:
        if previous is None:
            os.environ.pop("KFP_RUN_ID", None)
        else:
            os.environ["KFP_RUN_ID"] = previous
    return root


def describe_outputs(cfg: PipelineConfig, root: Path) -> str:
    cfg = absolutize(cfg)
    return f"artifacts: {root}\nMLflow:    {resolve_tracking_uri(cfg)}"
