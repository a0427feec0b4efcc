"""`python -m components.grpo`: GRPO from an SFT (or base) model on the RL set, outside kfp."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from components.common import storage
from components.common.config import PipelineConfig, flatten
from components.common.stage_cli import config_from_args, default_run_id, run_cli, stage_parser
from components.common.tracking import log_final_model, stage_run
from components.grpo.launcher import is_rank_zero, processes_to_launch, run_under_torchrun
from components.grpo.stage import GRPOPaths, run_grpo


def scratch_dir() -> Path:
    """Local room for downloads and checkpoint staging ($COLDSTART_SCRATCH, else the temp dir)."""
    return Path(os.environ.get("COLDSTART_SCRATCH") or Path(tempfile.gettempdir()) / "coldstart")


def checkpoint_root(cfg: PipelineConfig, output_dir: str, run_id: str, run_name: str) -> str:
    """`<output>/checkpoints` for a local or s3 output; under an s3 `output_dir` when the output is a
    local artifact folder on a pod (its disk does not survive a restart, the object store does)."""
    if not storage.is_s3(output_dir) and storage.is_s3(cfg.output_dir):
        return storage.join(cfg.output_dir, run_id, run_name, "checkpoints")
    return storage.join(output_dir, "checkpoints")


def stage_paths(
    cfg: PipelineConfig, init_model: str, data_dir: str, output_dir: str, run_id: str, run_name: str
) -> GRPOPaths:
    scratch = (
        scratch_dir()
        / f"grpo-{hashlib.sha1(f'{output_dir}|{run_id}|{run_name}'.encode()).hexdigest()[:12]}"
    )
    output = scratch / "output" if storage.is_s3(output_dir) else Path(output_dir)
    return GRPOPaths(
        init_model=storage.materialize(init_model, scratch_dir() / "inputs"),
        data=storage.materialize(data_dir, scratch_dir() / "inputs"),
        output=output,
        checkpoint_root=checkpoint_root(cfg, output_dir, run_id, run_name),
        scratch=scratch,
    )


def main(
    cfg: PipelineConfig,
    init_model_dir: str,
    data_dir: str,
    output_dir: str,
    run_id: str,
    run_name: str = "grpo",
) -> dict[str, float]:
    """The stage as the component and the shell both call it: GRPO + MLflow logging.

    `run_name` names the MLflow run: "grpo" after SFT, "grpo_from_base" for the RL-only ablation.
    Several GPUs: re-run under torchrun (launcher.py); rank 0 logs and uploads.
    """
    init_model_dir, data_dir, output_dir = str(init_model_dir), str(data_dir), str(output_dir)
    nproc = processes_to_launch()
    if nproc > 1:
        return run_under_torchrun(
            cfg, init_model_dir, data_dir, output_dir, run_id, run_name, nproc
        )
    paths = stage_paths(cfg, init_model_dir, data_dir, output_dir, run_id, run_name)
    with rank_zero_tracking(cfg, run_name, run_id) as tracker:
        if tracker is None:  # a torchrun worker other than rank 0
            summary, _ = run_grpo(cfg, paths)
            return summary
        tracker.log_params(
            {k: v for k, v in flatten(cfg).items() if k.startswith(("grpo.", "model."))}
        )
        tracker.log_params(
            {"grpo.init_model": init_model_dir, "grpo.checkpoint_root": paths.checkpoint_root}
        )
        summary, _ = run_grpo(cfg, paths, log_fn=tracker.log_metrics)
        # At the last step: its keys repeat the last step's metrics, and at step 0 they would
        # add a false first point to the reward curves.
        tracker.log_metrics(summary, step=int(summary.get("grpo/steps", 0)))
        for name in ("reward_curve.png", "grpo_history.json"):
            if (paths.output / name).exists():
                tracker.log_artifact(paths.output / name)
        log_final_model(tracker, cfg, paths.output)
    if storage.is_s3(output_dir):
        storage.sync_up(paths.output, output_dir, exclude=tuple(_checkpoint_files(paths.output)))
    return summary


@contextmanager
def rank_zero_tracking(cfg: PipelineConfig, run_name: str, run_id: str) -> Iterator[Any | None]:
    """The stage's MLflow run on rank 0; None on the other torchrun ranks (one run, not one per GPU)."""
    if not is_rank_zero():
        yield None
        return
    with stage_run(cfg, run_name, run_id) as tracker:
        yield tracker


def _checkpoint_files(output: Path) -> list[str]:
    ckpt = output / "checkpoints"
    return (
        [p.relative_to(output).as_posix() for p in ckpt.rglob("*") if p.is_file()]
        if ckpt.is_dir()
        else []
    )


def cli() -> int:
    parser = stage_parser("grpo", "GRPO with verifiable rewards on the RL set; writes a model dir.")
    parser.add_argument(
        "--init-model", required=True, help="model dir (SFT output or base model), local or s3://"
    )
    parser.add_argument(
        "--data", required=True, help="RL dataset folder (data_prep's rl/), local or s3://"
    )
    parser.add_argument(
        "--output", required=True, help="folder (or s3:// prefix) for the trained model"
    )
    parser.add_argument(
        "--run-name", default="grpo", help="MLflow run name: grpo (after SFT) or grpo_from_base"
    )
    parser.add_argument(
        "--summary-json", default=None, help="also write the summary metrics here (rank 0)"
    )
    args = parser.parse_args()
    cfg = config_from_args(args)
    summary = main(
        cfg, args.init_model, args.data, args.output, args.run_id or default_run_id(), args.run_name
    )
    if is_rank_zero():
        if args.summary_json:
            Path(args.summary_json).write_text(json.dumps(summary))
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    run_cli(cli)
