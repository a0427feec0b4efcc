"""`python -m components.sft`: the SFT stage outside kfp, and `main`, which the component calls too.

Inputs and output may be local directories or `s3://` prefixes; the shared stage runner
(components/common/stage_runner.py) materialises them, relaunches under torchrun on several
GPUs, opens the MLflow run and uploads the result; `stage.run_sft` trains.
"""

from __future__ import annotations

from components.common.config import PipelineConfig
from components.common.stage_runner import (
    StageContext,
    StageRequest,
    run_stage,
    stage_cli,
    training_digest,
)
from components.sft.stage import SFTPaths, run_sft

INPUTS = {
    "base-model": "model directory or s3:// prefix (weights + processor)",
    "data": "data_prep's sft/ folder (DatasetDict) or s3:// prefix",
}


def main(
    cfg: PipelineConfig,
    base_model_dir: str,
    data_dir: str,
    output_dir: str,
    run_id: str,
    run_name: str = "sft",
) -> dict[str, float]:
    """Run SFT: under torchrun when the pod has several GPUs, else in this process."""
    request = StageRequest(
        stage="sft",
        inputs={"base-model": str(base_model_dir), "data": str(data_dir)},
        output_dir=str(output_dir),
        run_id=run_id,
        run_name=run_name,
        digest=training_digest(cfg, "sft", pixels=[cfg.data.min_pixels, cfg.data.max_pixels]),
    )

    def train(ctx: StageContext) -> dict[str, float]:
        return run_sft(cfg, SFTPaths.of(ctx), ctx.tracker)

    return run_stage(cfg, request, train)


def _main(
    cfg: PipelineConfig, inputs: dict[str, str], output: str, run_id: str, run_name: str
) -> dict[str, float]:
    return main(cfg, inputs["base-model"], inputs["data"], output, run_id, run_name)


def cli() -> int:
    return stage_cli(
        "sft",
        "Supervised fine-tuning (cold start) of the VLM on chain-of-thought answers.",
        INPUTS,
        _main,
        default_name="sft",
    )
