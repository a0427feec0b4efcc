"""`python -m components.grpo`: GRPO from an SFT (or base) model on the RL set, outside kfp, and
`main`, which the component calls too.

The shared stage runner (components/common/stage_runner.py) materialises the inputs, relaunches
under torchrun on several GPUs, opens the MLflow run and uploads the result; `stage.run_grpo`
trains.
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
from components.grpo.stage import GRPOPaths, report, run_grpo

INPUTS = {
    "init-model": "model dir (SFT output or base model), local or s3://",
    "data": "RL dataset folder (data_prep's rl/), local or s3://",
}


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
    """
    request = StageRequest(
        stage="grpo",
        inputs={"init-model": str(init_model_dir), "data": str(data_dir)},
        output_dir=str(output_dir),
        run_id=run_id,
        run_name=run_name,
        digest=training_digest(cfg, "grpo"),
    )

    def train(ctx: StageContext) -> dict[str, float]:
        tracker = ctx.tracker
        paths = GRPOPaths.of(ctx)
        summary, _ = run_grpo(cfg, paths, log_fn=tracker.log_metrics if tracker else None)
        if tracker is not None:
            report(tracker, summary, paths.output, cfg)
        return summary

    return run_stage(cfg, request, train)


def _main(
    cfg: PipelineConfig, inputs: dict[str, str], output: str, run_id: str, run_name: str
) -> dict[str, float]:
    return main(cfg, inputs["init-model"], inputs["data"], output, run_id, run_name)


def cli() -> int:
    return stage_cli(
        "grpo",
        "GRPO with verifiable rewards on the RL set; writes a model dir.",
        INPUTS,
        _main,
        default_name="grpo",
    )
