"""kfp component of the GRPO stage: a thin wrapper from artifacts to paths.

The body imports inside the function: kfp ships its source to the pod (and to the kfp.local
subprocess), where only the installed `components` package is available.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from coldstart.common.images import stage_image


@dsl.component(base_image=stage_image("grpo"), install_kfp_package=False)
def grpo_op(
    config_json: str,
    pipeline_run_id: str,
    init_model: Input[Model],
    rl_data: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    run_name: str = "grpo",
    images: Input[Dataset] = None,
) -> None:
    """GRPO from `init_model` (SFT output, or the base model for the RL-only ablation) on `rl_data`
    (its image keys read from `images`, data_prep's image store)."""
    from coldstart.common.config import config_from_json
    from coldstart.grpo.cli import main

    summary = main(
        config_from_json(config_json),
        init_model.path,
        rl_data.path,
        model.path,
        pipeline_run_id,
        run_name,
        images.path if images is not None else None,
    )
    for name, value in summary.items():
        metrics.log_metric(name.replace("/", "_"), value)
    model.metadata["stage"] = run_name
