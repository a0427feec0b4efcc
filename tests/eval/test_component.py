"""eval_op as kfp sees it: optional model inputs compile, and the component runs under kfp.local."""

import json
import shutil

import pandas as pd
import pytest
import yaml
from kfp import compiler, dsl, local
from kfp.dsl import Dataset, Model
from PIL import Image

from coldstart.eval.component import eval_op
from tests.conftest import tiny_config

pytestmark = pytest.mark.timeout(600)


def eval_pipeline(data_dir: str, images_dir: str, model_dir: str):
    """base and SFT given, RL and SFT+RL left out: the optional inputs stay unconnected."""

    @dsl.pipeline(name="eval-component-test")
    def pipeline(config_json: str):
        data = dsl.importer(artifact_uri=data_dir, artifact_class=Dataset)
        images = dsl.importer(artifact_uri=images_dir, artifact_class=Dataset)
        base = dsl.importer(artifact_uri=model_dir, artifact_class=Model)
        sft = dsl.importer(artifact_uri=model_dir, artifact_class=Model)
        eval_op(
            config_json=config_json,
            pipeline_run_id="eval-test",
            eval_data=data.output,
            images=images.output,
            base_model=base.output,
            sft_model=sft.output,
        )

    return pipeline


def test_optional_model_inputs_compile(tmp_path):
    path = tmp_path / "p.yaml"
    compiler.Compiler().compile(eval_pipeline("/data", "/images", "/model"), str(path))
    spec = yaml.safe_load(path.read_text())
    inputs = spec["components"]["comp-eval-op"]["inputDefinitions"]["artifacts"]
    assert {name: inputs[name].get("isOptional", False) for name in inputs} == {
        "eval_data": False,
        "base_model": True,
        "sft_model": True,
        "rl_model": True,
        "sft_rl_model": True,
        "images": True,
    }
    task_inputs = spec["root"]["dag"]["tasks"]["eval-op"]["inputs"]["artifacts"]
    assert set(task_inputs) == {"eval_data", "images", "base_model", "sft_model"}


@pytest.mark.slow
def test_eval_op_runs_under_kfp_local(tmp_path, tiny_model_dir, synthetic_data_dir):
    cfg = tiny_config(
        tmp_path, eval={"max_new_tokens": 8, "benchmarks": [{"name": "synthetic", "limit": 4}]}
    )
    root = tmp_path / "root"
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True
    )
    # the set alone in a folder of its own: its image keys resolve in the store the task is given
    data = shutil.copytree(synthetic_data_dir / "eval", tmp_path / "alone" / "eval")
    store = synthetic_data_dir / "images"
    eval_pipeline(str(data), str(store), str(tiny_model_dir))(config_json=cfg.to_json())

    (run_dir,) = root.iterdir()
    task = run_dir / "eval-op"
    report = (task / "report.md").read_text()
    rows = [line.split("|")[1].strip() for line in report.splitlines() if line.startswith("| ")]
    assert rows[:3] == ["Model", "base", "SFT"]  # one row per given model, the paper's order
    assert "data:image/png;base64," in report  # the chart travels inside the Markdown artifact
    with Image.open(task / "chart.png") as chart:
        assert chart.format == "PNG"
    predictions = pd.read_parquet(task / "predictions" / "predictions.parquet")
    assert len(predictions) == 2 * 4 and set(predictions["model"]) == {"base", "SFT"}
    executor = json.loads((task / "executor_output.json").read_text())
    logged = executor["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert set(logged) == {
        "base_synthetic_score",
        "base_synthetic_accuracy",
        "base_average",
        "sft_synthetic_score",
        "sft_synthetic_accuracy",
        "sft_average",
    }
