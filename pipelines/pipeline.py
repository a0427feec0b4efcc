"""The coldstart DAG: data_prep -> sft -> grpo -> eval, built from one config.

The DAG's shape (which stages, which resources) is fixed at compile time from the config;
the config itself also travels as the `config_json` parameter, so a cluster user can change
hyperparameters of a compiled pipeline at submit time without recompiling, and the values people
change per run are typed parameters of their own (pipelines/run_params.py). The ablation
(base / SFT / RL / SFT+RL side by side, as in the paper's tables) is the `ablation` parameter:
its RL-only branch and its four-model eval run only when it is true.
(No `from __future__ import annotations` here or in component modules: kfp reads the real
annotation objects.)
"""

from kfp import dsl

from coldstart.common.config import PipelineConfig
from coldstart.data_prep.component import base_model_op, data_prep_op
from coldstart.eval.component import eval_op
from coldstart.grpo.component import grpo_op
from coldstart.pipelines.data_shards import sharded_data_prep
from coldstart.pipelines.ops import resolve_config_op, select_sft_op
from coldstart.pipelines.resources import configure_task
from coldstart.pipelines.run_params import knob_defaults, pipeline_docstring


def build_pipeline(cfg: PipelineConfig):
    """Return the kfp pipeline function for `cfg` (compile it, or call it under kfp.local).

    Stages group their MLflow runs by the pipeline run id, which they read from the `KFP_RUN_ID`
    env: on the cluster from the pod's label (pipelines/resources.py), locally from the
    `coldstart run` process (pipelines/local.py). It is no task input, so inputs stay the same
    from one run to the next and the cache (KFP's, or kfp.local's) can hit.
    """

    knob = knob_defaults(cfg)

    def coldstart_pipeline(
        model_uri: str = knob["model_uri"],
        sft_data_uri: str = knob["sft_data_uri"],
        rl_data_uri: str = knob["rl_data_uri"],
        sft_learning_rate: float = knob["sft_learning_rate"],
        sft_epochs: float = knob["sft_epochs"],
        grpo_learning_rate: float = knob["grpo_learning_rate"],
        grpo_total_steps: int = knob["grpo_total_steps"],
        eval_max_new_tokens: int = knob["eval_max_new_tokens"],
        config_json: str = cfg.to_json(),
        ablation: bool = cfg.ablation,
    ):
        run_id = ""  # resolved from KFP_RUN_ID in each stage (components/common/run_id.py)
        resolve = resolve_config_op(
            config_json=config_json,
            model_uri=model_uri,
            sft_data_uri=sft_data_uri,
            rl_data_uri=rl_data_uri,
            sft_learning_rate=sft_learning_rate,
            sft_epochs=sft_epochs,
            grpo_learning_rate=grpo_learning_rate,
            grpo_total_steps=grpo_total_steps,
            eval_max_new_tokens=eval_max_new_tokens,
        ).set_display_name("config")
        configure_task(resolve, cfg, "base_model")
        config_json = resolve.output  # every stage gets the config with the typed parameters in
        if cfg.data.shards > 1:  # several pods: pipelines/data_shards.py
            data = sharded_data_prep(cfg, config_json, run_id)
        else:
            data = data_prep_op(config_json=config_json, pipeline_run_id=run_id)
            configure_task(data.set_display_name("data_prep"), cfg, "data_prep")
        base = base_model_op(config_json=config_json).set_display_name("base_model")
        configure_task(base, cfg, "base_model")
        base_model = base.outputs["base_model"]

        sft_model = None
        if cfg.sft.enabled:
            sft = select_sft_op(cfg)(
                config_json=config_json,
                pipeline_run_id=run_id,
                base_model=base_model,
                sft_data=data.outputs["sft_data"],
                images=data.outputs["images"],
            ).set_display_name("sft")
            configure_task(sft, cfg, "sft")
            sft_model = sft.outputs["model"]

        final_model = None
        if cfg.grpo.enabled:
            grpo = grpo_op(
                config_json=config_json,
                pipeline_run_id=run_id,
                init_model=sft_model or base_model,
                rl_data=data.outputs["rl_data"],
                images=data.outputs["images"],
                run_name="grpo",
            ).set_display_name("grpo")
            configure_task(grpo, cfg, "grpo")
            final_model = grpo.outputs["model"]

        if not cfg.eval.enabled:
            return
        # Which model is which in the report: GRPO after SFT is "SFT+RL"; without SFT it is "RL".
        models = {"base_model": base_model}
        if sft_model is not None:
            models["sft_model"] = sft_model
        if final_model is not None:
            models["sft_rl_model" if sft_model is not None else "rl_model"] = final_model

        def evaluate(**extra):
            task = eval_op(
                config_json=config_json,
                pipeline_run_id=run_id,
                eval_data=data.outputs["eval_data"],
                images=data.outputs["images"],
                **models,
                **extra,
            ).set_display_name("eval")
            return configure_task(task, cfg, "eval")

        if cfg.sft.enabled and cfg.grpo.enabled:
            with dsl.If(ablation == True, name="ablation"):  # noqa: E712 (kfp condition, not Python)
                rl_only = grpo_op(
                    config_json=config_json,
                    pipeline_run_id=run_id,
                    init_model=base_model,
                    rl_data=data.outputs["rl_data"],
                    images=data.outputs["images"],
                    run_name="grpo_from_base",
                )
                configure_task(rl_only.set_display_name("grpo_from_base"), cfg, "grpo")
                evaluate(rl_model=rl_only.outputs["model"])
            with dsl.Else(name="no-ablation"):
                evaluate()
        else:
            evaluate()

    summary = "SFT cold start, then GRPO with verifiable rewards, then eval"
    coldstart_pipeline.__doc__ = pipeline_docstring(summary)  # kfp reads the Args' descriptions
    return dsl.pipeline(name=cfg.name, description=summary)(coldstart_pipeline)
