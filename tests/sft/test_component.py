"""sft_op as kfp sees it: its interface compiles, and the component runs under kfp.local."""

import json
import shutil

import pytest
import yaml
from kfp import compiler, dsl, local
from kfp.dsl import Dataset, Model

from coldstart.common.models import load_model
from coldstart.sft.component import sft_op
from tests.conftest import tiny_config


def sft_pipeline(model_dir: str, data_dir: str, images_dir: str):
    @dsl.pipeline(name="sft-component-test")
    def pipeline(config_json: str):
        base = dsl.importer(
            artifact_uri=model_dir, artifact_class=Model, metadata={"name_or_path": "tiny"}
        )
        data = dsl.importer(artifact_uri=data_dir, artifact_class=Dataset)
        images = dsl.importer(artifact_uri=images_dir, artifact_class=Dataset)
        sft_op(
            config_json=config_json,
            pipeline_run_id="sft-test",
            base_model=base.output,
            sft_data=data.output,
            images=images.output,
        )

    return pipeline


def test_interface_compiles(tmp_path):
    path = tmp_path / "p.yaml"
    compiler.Compiler().compile(sft_pipeline("/model", "/data", "/images"), str(path))
    spec = yaml.safe_load(path.read_text())["components"]["comp-sft-op"]
    inputs = spec["inputDefinitions"]["artifacts"]
    assert {name: inputs[name].get("isOptional", False) for name in inputs} == {
        "base_model": False,
        "sft_data": False,
        "images": True,  # a user's own set holds its images inline
    }
    assert set(spec["inputDefinitions"]["parameters"]) == {"config_json", "pipeline_run_id"}
    assert set(spec["outputDefinitions"]["artifacts"]) == {"model", "metrics"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sft_op_runs_under_kfp_local(tmp_path, tiny_model_dir, sft_dir):
    cfg = tiny_config(
        tmp_path,
        sft={"max_steps": 2, "save_steps": 2, "per_device_train_batch_size": 2},
        tracking={"system_metrics": False},
    )
    root = tmp_path / "root"
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True
    )
    # the set alone in a folder of its own: its image keys resolve in the store the task is given
    data = shutil.copytree(sft_dir, tmp_path / "alone" / "sft")
    store = sft_dir.parent / "images"
    sft_pipeline(str(tiny_model_dir), str(data), str(store))(config_json=cfg.to_json())

    (run_dir,) = root.iterdir()
    task = run_dir / "sft-op"
    load_model(task / "model")
    assert (task / "model" / "chat_template.jinja").is_file()
    outputs = json.loads((task / "executor_output.json").read_text())["artifacts"]
    metrics = outputs["metrics"]["artifacts"][0]["metadata"]
    assert metrics["sft_global_step"] == 2 and "sft_train_loss_last" in metrics
    assert outputs["model"]["artifacts"][0]["metadata"] == {"stage": "sft", "base_model": "tiny"}
