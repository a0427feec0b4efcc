"""SFT on several GPUs of one pod: the shared torchrun launcher with SFT's arguments."""

from __future__ import annotations

from components.common.config import PipelineConfig
from components.common.launcher import is_rank_zero, processes_to_launch
from components.common.launcher import run_under_torchrun as _launch

__all__ = ["is_rank_zero", "processes_to_launch", "run_under_torchrun", "stage_args"]


def stage_args(base_model_dir: str, data_dir: str, output_dir: str, run_id: str) -> dict[str, str]:
    return {
        "--base-model": base_model_dir,
        "--data": data_dir,
        "--output": output_dir,
        "--run-id": run_id,
    }


def run_under_torchrun(
    cfg: PipelineConfig,
    base_model_dir: str,
    data_dir: str,
    output_dir: str,
    run_id: str,
    nproc: int,
) -> dict[str, float]:
    """Train in `nproc` torchrun workers; returns rank 0's metrics."""
    args = stage_args(base_model_dir, data_dir, output_dir, run_id)
    return _launch("components.sft", cfg, args, nproc, result_flag="--metrics-json")
