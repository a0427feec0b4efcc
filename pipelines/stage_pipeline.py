"""One stage as a pipeline of its own, on artifacts that already exist (`coldstart rerun`).

Each given input URI becomes a `dsl.importer` task, so the stage's component receives the same
typed artifacts it gets inside the full DAG; a missing base model is built from the config by
`base_model_op`, as in the DAG. The same pipeline function is compiled for a cluster or called
under kfp.local. (No `from __future__ import annotations` here: kfp reads the annotations.)
"""

import importlib
from dataclasses import dataclass
from typing import Any

from kfp import dsl
from kfp.dsl import Dataset, Model

from coldstart.common.config import PipelineConfig
from coldstart.common.digests import json_digest
from coldstart.common.errors import InputError
from coldstart.pipelines.caching import import_metadata
from coldstart.pipelines.resources import configure_task


@dataclass(frozen=True)
class StageInput:
    """One artifact input of a stage's component."""

    name: str  # the component's parameter
    kind: type  # Model or Dataset
    required: bool = False
    from_config: bool = False  # missing: build it with base_model_op from model.name_or_path


@dataclass(frozen=True)
class StageSpec:
    module: str
    op: str
    inputs: tuple = ()
    one_model: bool = False  # needs at least one of its Model inputs (eval: only those given)

    def component(self, cfg: PipelineConfig) -> Any:
        if self.module == "coldstart.sft.component":
            from coldstart.pipelines.ops import select_sft_op

            return select_sft_op(cfg)
        return getattr(importlib.import_module(self.module), self.op)


STAGES = {
    "data_prep": StageSpec("coldstart.data_prep.component", "data_prep_op"),
    "sft": StageSpec("coldstart.sft.component", "sft_op", (
        StageInput("base_model", Model, from_config=True),
        StageInput("sft_data", Dataset, required=True),
        StageInput("images", Dataset),
    )),
    "grpo": StageSpec("coldstart.grpo.component", "grpo_op", (
        StageInput("init_model", Model, required=True),
        StageInput("rl_data", Dataset, required=True),
        StageInput("images", Dataset),
    )),
    "eval": StageSpec("coldstart.eval.component", "eval_op", (
        StageInput("eval_data", Dataset, required=True),
        StageInput("base_model", Model),
        StageInput("sft_model", Model),
        StageInput("rl_model", Model),
        StageInput("sft_rl_model", Model),
        StageInput("images", Dataset),
    ), one_model=True),
}  # fmt: skip


def check_inputs(stage: str, uris: dict) -> StageSpec:
    """The stage exists, every required input is given, and no unknown one is."""
    if stage not in STAGES:
        raise InputError(f"unknown stage {stage!r}; valid: {sorted(STAGES)}")
    spec = STAGES[stage]
    names = {i.name for i in spec.inputs}
    unknown = sorted(set(uris) - names)
    if unknown:
        raise InputError(f"{stage} has no input {unknown}; its inputs: {sorted(names) or 'none'}")
    missing = [i.name for i in spec.inputs if i.required and i.name not in uris]
    if missing:
        raise InputError(
            f"rerun {stage} needs {missing} (existing artifacts, e.g. from an earlier run)"
        )
    models = [i.name for i in spec.inputs if i.kind is Model]
    if spec.one_model and not set(models) & set(uris):
        raise InputError(
            f"rerun {stage} evaluates only the models it is given: pass at least one "
            "--model NAME=URI (NAME: base, sft, rl, sft_rl)"
        )
    return spec


def rerun_run_id(cfg: PipelineConfig, stage: str, uris: dict) -> str:
    """A stable id: the same stage, config and inputs map to the same id (a retry resumes its
    checkpoints); a local input written again (the fingerprint its importer carries into
    kfp.local's cache key) to another. s3 inputs are keyed by URI here (the submitting machine
    may hold no S3 keys): the stage itself keys its state by their contents (eval's progress
    logs) or refuses another training's checkpoints.

    Passing the KFP job id instead would change the task's inputs on every run, and the cluster's
    cache (which fingerprints resolved inputs) would never hit.
    """
    inputs = {name: import_metadata(uri) for name, uri in uris.items()}
    digest = json_digest([stage, cfg.digest(), inputs])
    return f"rerun-{stage.replace('_', '-')}-{digest[:12]}"


def build_stage_pipeline(cfg: PipelineConfig, stage: str, uris: dict, run_id: str | None = None):
    """A pipeline that imports `uris` ({input name: URI}) and runs `stage` on them.

    `run_id` groups the stage's MLflow run; None = the KFP job id (a fresh group every run).
    """
    spec = check_inputs(stage, uris)
    op = spec.component(cfg)
    pipeline_run_id = run_id or dsl.PIPELINE_JOB_ID_PLACEHOLDER

    name = f"{cfg.name}-rerun-{stage.replace('_', '-')}"

    @dsl.pipeline(name=name, description=f"{stage} alone on existing artifacts")
    def stage_pipeline(config_json: str = cfg.to_json()):
        args = {}
        for inp in spec.inputs:
            if inp.name in uris:
                args[inp.name] = _import(inp, uris[inp.name])
            elif inp.from_config:
                args[inp.name] = _base_model(cfg, config_json)
        task = op(
            config_json=config_json, pipeline_run_id=pipeline_run_id, **args
        ).set_display_name(stage)
        configure_task(task, cfg, stage)

    return stage_pipeline


def _import(inp: StageInput, uri: str):
    task = dsl.importer(
        artifact_uri=uri, artifact_class=inp.kind, reimport=False, metadata=import_metadata(uri)
    )
    return task.set_display_name(f"import-{inp.name}").output


def _base_model(cfg: PipelineConfig, config_json):
    from coldstart.data_prep.component import base_model_op

    task = base_model_op(config_json=config_json).set_display_name("base_model")
    configure_task(task, cfg, "base_model")
    return task.outputs["base_model"]
