"""`python -m components.sft`: the SFT stage outside kfp, and `main`, which the component calls too.

Inputs and output may be local directories or `s3://` prefixes: inputs are materialised into a
scratch cache, an `s3://` output is trained into a local staging directory (checkpoints published
to `<output>/checkpoints` as they are written) and the final model is uploaded at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from components.common import storage
from components.common.config import PipelineConfig
from components.common.stage_cli import config_from_args, default_run_id, stage_parser
from components.common.tracking import log_final_model, stage_run
from components.sft.checkpointing import (
    RESULT_FILE,
    finished_result,
    local_checkpoint_dir,
    remote_checkpoint_root,
    write_result,
)
from components.sft.launcher import is_rank_zero, processes_to_launch, run_under_torchrun
from components.sft.train import SFTPaths, run_sft

log = logging.getLogger(__name__)


def scratch_dir() -> Path:
    """Local room for downloaded inputs and an s3 output's staging copy ($COLDSTART_SCRATCH)."""
    return Path(os.environ.get("COLDSTART_SCRATCH") or Path(tempfile.gettempdir()) / "coldstart")


def local_output(output_dir: str) -> Path:
    """The directory training writes to: `output_dir` itself, or a stable staging dir for s3://."""
    if not storage.is_s3(output_dir):
        return Path(output_dir)
    return scratch_dir() / "sft-output" / hashlib.sha1(output_dir.encode()).hexdigest()[:16]


def stage_paths(
    cfg: PipelineConfig, base_model_dir: str, data_dir: str, output_dir: str, run_id: str
) -> SFTPaths:
    cache = scratch_dir() / "inputs"
    return SFTPaths(
        base_model=storage.materialize(base_model_dir, cache),
        data=storage.materialize(data_dir, cache),
        output=local_output(output_dir),
        remote_checkpoints=remote_checkpoint_root(cfg, output_dir, run_id),
    )


def upload_model(local: Path, output_dir: str) -> None:
    """Upload the final model to an s3 output (its checkpoints are already there), the result file last."""
    ckpt = local_checkpoint_dir(local)
    skip = (
        tuple(p.relative_to(local).as_posix() for p in ckpt.rglob("*") if p.is_file())
        if ckpt.is_dir()
        else ()
    )
    storage.sync_up(local, output_dir, exclude=(*skip, RESULT_FILE))
    storage.upload_file(local / RESULT_FILE, storage.join(output_dir, RESULT_FILE))


@contextmanager
def rank_zero_tracking(cfg: PipelineConfig, run_id: str) -> Iterator[Any | None]:
    """The stage's MLflow run on rank 0; None on other torchrun ranks (one run, not one per GPU)."""
    if not is_rank_zero():
        yield None
        return
    with stage_run(cfg, "sft", run_id) as tracker:
        yield tracker


def main(
    cfg: PipelineConfig, base_model_dir: str, data_dir: str, output_dir: str, run_id: str
) -> dict[str, float]:
    """Run SFT: under torchrun when the pod has several GPUs, else in this process."""
    base_model_dir, data_dir, output_dir = str(base_model_dir), str(data_dir), str(output_dir)
    done = finished_result(output_dir, cfg)
    if done is not None:
        log.info(
            "sft: %s already holds the trained model of this config; nothing to do", output_dir
        )
        return done
    nproc = processes_to_launch()
    if nproc > 1:
        return run_under_torchrun(cfg, base_model_dir, data_dir, output_dir, run_id, nproc)
    paths = stage_paths(cfg, base_model_dir, data_dir, output_dir, run_id)
    with rank_zero_tracking(cfg, run_id) as tracker:
        metrics = run_sft(cfg, paths, tracker)
        if tracker is not None:
            log_final_model(tracker, cfg, paths.output)
    if is_rank_zero():
        write_result(paths.output, cfg, metrics)
        if storage.is_s3(output_dir):
            upload_model(paths.output, output_dir)
    return metrics


def cli() -> int:
    parser = stage_parser(
        "sft", "Supervised fine-tuning (cold start) of the VLM on chain-of-thought answers."
    )
    parser.add_argument(
        "--base-model", required=True, help="model directory or s3:// prefix (weights + processor)"
    )
    parser.add_argument(
        "--data", required=True, help="data_prep's sft/ folder (DatasetDict) or s3:// prefix"
    )
    parser.add_argument(
        "--output", required=True, help="model output dir or s3:// prefix; rerun to resume"
    )
    parser.add_argument(
        "--metrics-json", default=None, help="also write the final metrics here (rank 0)"
    )
    args = parser.parse_args()
    metrics = main(
        config_from_args(args),
        args.base_model,
        args.data,
        args.output,
        args.run_id or default_run_id(),
    )
    if is_rank_zero():
        if args.metrics_json:
            Path(args.metrics_json).write_text(json.dumps(metrics))
        print(json.dumps(metrics, indent=2))
    return 0
