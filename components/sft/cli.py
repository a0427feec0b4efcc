"""`python -m coldstart.sft`: the SFT stage outside kfp, and `main`, which the component calls too.

Inputs and output may be local directories or `s3://` prefixes; the shared stage runner
(components/common/stage_runner.py) materialises them, relaunches under torchrun on several
GPUs, opens the MLflow run and uploads the result; `stage.run_sft` trains.
"""

from __future__ import annotations

from coldstart.common.config import PipelineConfig
from coldstart.common.image_store import STORE_FLAG
from coldstart.common.stage_runner import StageContext, TrainingStage, training_digest
from coldstart.sft.stage import SFTPaths, run_sft


def _train(cfg: PipelineConfig, ctx: StageContext) -> dict[str, float]:
    return run_sft(cfg, SFTPaths.of(ctx), ctx.tracker)


STAGE = TrainingStage(
    name="sft",
    description="Supervised fine-tuning (cold start) of the VLM on chain-of-thought answers.",
    inputs={
        "base-model": "model directory or s3:// prefix (weights + processor)",
        "data": "data_prep's sft/ folder (DatasetDict) or s3:// prefix",
        STORE_FLAG: "data_prep's images/ folder or s3:// prefix (for a dataset of image keys)",
    },
    optional=(STORE_FLAG,),
    # what decides SFT's weights: sft.*, the model settings and the pixel bounds
    digest=lambda cfg: training_digest(
        cfg, "sft", pixels=[cfg.data.min_pixels, cfg.data.max_pixels]
    ),
    train=_train,
)


def main(
    cfg: PipelineConfig,
    base_model_dir: str,
    data_dir: str,
    output_dir: str,
    run_id: str,
    images_dir: str | None = None,
) -> dict[str, float]:
    """Run SFT: under torchrun when the pod has several GPUs, else in this process.
    `images_dir` is data_prep's image store (needed when the dataset holds image keys)."""
    inputs = {"base-model": base_model_dir, "data": data_dir, STORE_FLAG: images_dir}
    return STAGE.run(cfg, inputs, output_dir, run_id)


def cli() -> int:
    return STAGE.cli()
