"""grpo_op as kfp sees it: its interface compiles, and it runs under kfp.local (a real subprocess).

No `from __future__ import annotations` here: kfp reads the pipeline function's real annotations.
"""

import json
import shutil

import pytest
import yaml
from kfp import compiler, dsl, local
from kfp.dsl import Dataset, Model

from coldstart.grpo.component import grpo_op
from tests.grpo.conftest import tiny_config


def grpo_pipeline(model_dir: str, data_dir: str, images_dir: str, run_name: str = "grpo_from_base"):
    @dsl.pipeline(name="grpo-component-test")
    def pipeline(config_json: str):
        model = dsl.importer(artifact_uri=model_dir, artifact_class=Model)
        data = dsl.importer(artifact_uri=data_dir, artifact_class=Dataset)
        images = dsl.importer(artifact_uri=images_dir, artifact_class=Dataset)
        grpo_op(config_json=config_json, pipeline_run_id="grpo-test", init_model=model.output,
                rl_data=data.output, images=images.output, run_name=run_name)  # fmt: skip

    return pipeline


def test_interface_compiles(tmp_path):
    path = tmp_path / "p.yaml"
    compiler.Compiler().compile(grpo_pipeline("/model", "/data", "/images"), str(path))
    comp = yaml.safe_load(path.read_text())["components"]["comp-grpo-op"]
    inputs = comp["inputDefinitions"]["artifacts"]
    assert {name: inputs[name].get("isOptional", False) for name in inputs} == {
        "init_model": False,
        "rl_data": False,
        "images": True,
    }
    assert set(comp["inputDefinitions"]["parameters"]) == {
        "config_json",
        "pipeline_run_id",
        "run_name",
    }
    assert comp["inputDefinitions"]["parameters"]["run_name"]["defaultValue"] == "grpo"
    assert set(comp["outputDefinitions"]["artifacts"]) == {"model", "metrics"}


@pytest.mark.slow
def test_grpo_op_runs_under_kfp_local(tiny_assets, tmp_path):
    cfg = tiny_config("grpo.total_steps=2", "grpo.max_completion_length=8", "grpo.rollout_batch_size=2",
                      "grpo.update_batch_size=2", f"output_dir={tmp_path / 'out'}")  # fmt: skip
    root = tmp_path / "root"
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True
    )
    # the set alone in a folder of its own: its image keys resolve in the store the task is given
    data = shutil.copytree(tiny_assets["rl"], tmp_path / "alone" / "rl")
    store = tiny_assets["rl"].parent / "images"
    grpo_pipeline(str(tiny_assets["model"]), str(data), str(store))(config_json=cfg.to_json())

    (run_dir,) = root.iterdir()
    task = run_dir / "grpo-op"
    assert (task / "model" / "model.safetensors").exists() and (
        task / "model" / "reward_curve.png"
    ).exists()
    executor = json.loads((task / "executor_output.json").read_text())
    logged = executor["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert logged["grpo_steps"] == 2 and "grpo_reward_mean" in logged
