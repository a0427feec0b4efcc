"""kfp component of the sft stage: a thin wrapper from artifacts to paths.

The body imports inside the function: kfp ships the function's source to the pod (and to the
kfp.local subprocess), where only the installed `components` package is available. Several GPUs
in the pod are used through torchrun, started by `coldstart.sft.cli.main` itself.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from coldstart.common.images import stage_image


@dsl.component(base_image=stage_image("sft"), install_kfp_package=False)
def sft_op(
    config_json: str,
    pipeline_run_id: str,
    base_model: Input[Model],
    sft_data: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    images: Input[Dataset] = None,
) -> None:
    """Fine-tune the base model on the SFT set (its image keys read from `images`, data_prep's
    image store); write the model dir and the final metrics."""
    from coldstart.common.config import config_from_json
    from coldstart.sft.cli import main

    cfg = config_from_json(config_json)
    store = images.path if images is not None else None
    results = main(cfg, base_model.path, sft_data.path, model.path, pipeline_run_id, store)
    for name, value in results.items():
        metrics.log_metric(name.replace("/", "_"), value)
    model.metadata["stage"] = "sft"
    model.metadata["base_model"] = base_model.metadata.get("name_or_path", base_model.uri)
