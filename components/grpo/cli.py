"""`python -m coldstart.grpo`: GRPO from an SFT (or base) model on the RL set, outside kfp, and
`main`, which the component calls too.

The shared stage runner (components/common/stage_runner.py) materialises the inputs, relaunches
under torchrun on several GPUs, opens the MLflow run and uploads the result; `stage.run_grpo`
trains.
"""

from __future__ import annotations

from coldstart.common.config import PipelineConfig
from coldstart.common.image_store import STORE_FLAG
from coldstart.common.stage_runner import StageContext, TrainingStage, training_digest
from coldstart.grpo.stage import GRPOPaths, report, run_grpo


def _train(cfg: PipelineConfig, ctx: StageContext) -> dict[str, float]:
    """GRPO, its steps logged as they come, and the summary, curve and model reported at the end."""
    paths, tracker = GRPOPaths.of(ctx), ctx.tracker
    summary, _ = run_grpo(cfg, paths, log_fn=tracker.log_metrics if tracker else None)
    if tracker is not None:
        report(tracker, summary, paths.output, cfg)
    return summary


STAGE = TrainingStage(
    name="grpo",
    description="GRPO with verifiable rewards on the RL set; writes a model dir.",
    inputs={
        "init-model": "model dir (SFT output or base model), local or s3://",
        "data": "RL dataset folder (data_prep's rl/), local or s3://",
        STORE_FLAG: "data_prep's images/ folder or s3:// prefix (for a dataset of image keys)",
    },
    optional=(STORE_FLAG,),
    digest=lambda cfg: training_digest(cfg, "grpo"),
    train=_train,
)


def main(
    cfg: PipelineConfig,
    init_model_dir: str,
    data_dir: str,
    output_dir: str,
    run_id: str,
    run_name: str = "grpo",
    images_dir: str | None = None,
) -> dict[str, float]:
    """GRPO as the component and the shell both call it; `run_name` names the MLflow run:
    "grpo" after SFT, "grpo_from_base" for the RL-only ablation. `images_dir` is data_prep's
    image store (needed when the dataset holds image keys)."""
    inputs = {"init-model": init_model_dir, "data": data_dir, STORE_FLAG: images_dir}
    return STAGE.run(cfg, inputs, output_dir, run_id, run_name)


def cli() -> int:
    return STAGE.cli()
