"""kfp components of the data_prep stage: thin wrappers from artifacts to paths.

Bodies import inside the function: kfp ships the function's source to the pod (and to the
kfp.local subprocess), where only the installed `components` package is available.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from coldstart.common.images import stage_image


@dsl.component(base_image=stage_image("data_prep"), install_kfp_package=False)
def data_prep_op(
    config_json: str,
    pipeline_run_id: str,
    sft_data: Output[Dataset],
    rl_data: Output[Dataset],
    eval_data: Output[Dataset],
    images: Output[Dataset],
    metrics: Output[Metrics],
) -> None:
    """Build the SFT, RL and eval datasets and the image store their rows point into."""
    from pathlib import Path

    from coldstart.common.config import config_from_json
    from coldstart.data_prep.cli import main
    from coldstart.data_prep.stage import DataPrepOutputs

    out = DataPrepOutputs(
        Path(sft_data.path), Path(rl_data.path), Path(eval_data.path), Path(images.path)
    )
    for name, value in main(config_from_json(config_json), out, pipeline_run_id).items():
        metrics.log_metric(name.replace("/", "_"), value)


@dsl.component(base_image=stage_image("data_prep"), install_kfp_package=False)
def data_prep_shard_op(config_json: str, shard_index: int, part: Output[Dataset]) -> None:
    """One shard of a sharded data_prep: its share of the input files, validated and resized."""
    from pathlib import Path

    from coldstart.common.config import config_from_json
    from coldstart.data_prep.cli import shard_main

    counts = shard_main(config_from_json(config_json), shard_index, Path(part.path))
    part.metadata.update(counts)


@dsl.component(base_image=stage_image("data_prep"), install_kfp_package=False)
def data_prep_merge_op(
    config_json: str,
    pipeline_run_id: str,
    parts: Input[list[Dataset]],
    sft_data: Output[Dataset],
    rl_data: Output[Dataset],
    eval_data: Output[Dataset],
    images: Output[Dataset],
    metrics: Output[Metrics],
) -> None:
    """Merge the shards: dedup across them, remove eval leaks, write the three datasets and
    their image store."""
    from pathlib import Path

    from coldstart.common.config import config_from_json
    from coldstart.data_prep.cli import merge_main
    from coldstart.data_prep.stage import DataPrepOutputs

    out = DataPrepOutputs(
        Path(sft_data.path), Path(rl_data.path), Path(eval_data.path), Path(images.path)
    )
    shard_dirs = [Path(part.path) for part in parts]
    cfg = config_from_json(config_json)
    for name, value in merge_main(cfg, shard_dirs, out, pipeline_run_id).items():
        metrics.log_metric(name.replace("/", "_"), value)


@dsl.component(base_image=stage_image("base_model"), install_kfp_package=False)
def base_model_op(config_json: str, base_model: Output[Model]) -> None:
    """Build the tiny preset or fetch the configured model into a Model artifact."""
    from pathlib import Path

    from coldstart.common.config import config_from_json
    from coldstart.data_prep.cli import base_model_main

    base_model_main(config_from_json(config_json), Path(base_model.path))
    base_model.metadata["name_or_path"] = config_from_json(config_json).model.name_or_path
