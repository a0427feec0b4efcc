"""GRPO on several GPUs of one pod: the shared torchrun launcher with GRPO's arguments."""

from __future__ import annotations

from components.common.config import PipelineConfig
from components.common.launcher import is_rank_zero, processes_to_launch
from components.common.launcher import run_under_torchrun as _launch

__all__ = ["is_rank_zero", "processes_to_launch", "run_under_torchrun"]


def run_under_torchrun(
    cfg: PipelineConfig,
    init_model: str,
    data_dir: str,
    output_dir: str,
    run_id: str,
    run_name: str,
    nproc: int,
) -> dict[str, float]:
    """Train in `nproc` data-parallel torchrun workers; returns rank 0's summary metrics."""
    args = {
        "--init-model": init_model,
        "--data": data_dir,
        "--output": output_dir,
        "--run-id": run_id,
        "--run-name": run_name,
    }
    return _launch("components.grpo", cfg, args, nproc, result_flag="--summary-json")
