"""The pipeline's own kfp components (the stages' are in components/<stage>/component.py).

Bodies import their logic inside the function from kfp-free modules (pipelines/run_params.py,
pipelines/trainjob.py): in the pod, kfp's runtime has no `dsl.component`, so a module that
defines components cannot be imported there. (No `from __future__ import annotations` here:
kfp reads the real annotation objects.)
"""

import functools
import json
from typing import Any

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from coldstart.common.config import PipelineConfig
from coldstart.common.images import stage_image
from coldstart.pipelines.cluster_config import cluster_config


@dsl.component(base_image=stage_image("data_prep"), install_kfp_package=False)
def resolve_config_op(
    config_json: str,
    model_uri: str,
    sft_data_uri: str,
    rl_data_uri: str,
    sft_learning_rate: float,
    sft_epochs: float,
    grpo_learning_rate: float,
    grpo_total_steps: int,
    eval_max_new_tokens: int,
) -> str:
    """The config every stage of this run gets: config_json with the typed parameters written in."""
    from coldstart.pipelines.run_params import apply_knobs

    knobs = {
        "model_uri": model_uri,
        "sft_data_uri": sft_data_uri,
        "rl_data_uri": rl_data_uri,
        "sft_learning_rate": sft_learning_rate,
        "sft_epochs": sft_epochs,
        "grpo_learning_rate": grpo_learning_rate,
        "grpo_total_steps": grpo_total_steps,
        "eval_max_new_tokens": eval_max_new_tokens,
    }
    return apply_knobs(config_json, knobs)


@dsl.component(base_image=stage_image("data_prep"), install_kfp_package=False)
def sft_trainjob_op(
    config_json: str,
    cluster_json: str,
    pipeline_run_id: str,
    base_model: Input[Model],
    sft_data: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    images: Input[Dataset] = None,
) -> None:
    """SFT on several nodes: launch a Kubeflow Trainer TrainJob that writes `model`, and wait for it.

    `cluster_json` is the config's cluster section (the training config in `config_json` has none).
    """
    import json

    from coldstart.common.config import config_from_json
    from coldstart.common.run_id import require_run_id
    from coldstart.pipelines.trainjob import TrainJobInputs, launch_and_wait, trainjob_name

    store = images.uri if images is not None else ""
    inputs = TrainJobInputs(
        require_run_id(pipeline_run_id), base_model.uri, sft_data.uri, model.uri, store
    )
    cfg = config_from_json(config_json)
    cfg.cluster = json.loads(cluster_json)
    for name, value in launch_and_wait(cfg, inputs).items():
        metrics.log_metric(name.replace("/", "_"), value)
    model.metadata["trainjob"] = trainjob_name(inputs)


def select_sft_op(cfg: PipelineConfig) -> Any:
    """The SFT component the DAG should use: in-pod (default) or the TrainJob launcher, which
    also gets the cluster section (as a constant input: it renders the TrainJob's pods from it)."""
    if cluster_config(cfg).sft_launcher == "trainjob":
        return functools.partial(sft_trainjob_op, cluster_json=json.dumps(cfg.cluster))
    from coldstart.sft.component import sft_op

    return sft_op
