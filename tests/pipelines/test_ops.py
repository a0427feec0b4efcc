"""The pipeline's own components: what their bodies import works inside a pod, and the typed
run parameters reach every stage through the resolved config.

In a pod kfp runs with `_KFP_RUNTIME=true`, where `kfp.dsl` has no `component` (nor
PipelineTask): a module that defines components, or imports one that does, fails to import
there. The launcher of a TrainJob once imported coldstart.pipelines.trainjob, which defined its component.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coldstart.common.config import ConfigError, load_config
from coldstart.pipelines.cli import main
from coldstart.pipelines.run_params import KNOBS, apply_knobs

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"

RUNTIME_CHECK = """
from coldstart.pipelines.cluster_config import cluster_config
from coldstart.pipelines.run_params import apply_knobs
from coldstart.pipelines.trainjob import TrainJobInputs, render_trainjob
from coldstart.common.config import load_config
cfg = load_config("configs/qwen2.5-vl-7b.yaml", ["cluster.sft_launcher=trainjob"])
job = render_trainjob(cfg, TrainJobInputs("r", "s3://b/m", "s3://b/d", "s3://b/o"), "ns")
print(job["kind"], apply_knobs(cfg.to_json(), {"grpo_total_steps": 3})[:1])
"""


def test_component_bodies_import_under_the_kfp_runtime():
    env = {**os.environ, "_KFP_RUNTIME": "true", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", RUNTIME_CHECK],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["TrainJob", "{"]


def test_knobs_write_the_config_and_data_uris_switch_to_files():
    cfg = load_config(CONFIGS / "tiny.yaml")
    out = json.loads(
        apply_knobs(
            cfg.to_json(),
            {"grpo_total_steps": 7, "sft_learning_rate": 2e-5, "sft_data_uri": "s3://b/sft.parquet",
             "rl_data_uri": "", "model_uri": "s3://b/models/qwen"},
        )
    )  # fmt: skip
    assert out["grpo"]["total_steps"] == 7 and out["sft"]["learning_rate"] == 2e-5
    assert out["model"]["name_or_path"] == "s3://b/models/qwen"
    assert (
        out["data"]["source"] == "files"
        and out["data"]["sft_files"][0]["uri"] == "s3://b/sft.parquet"
    )


def test_a_bad_knob_value_is_named():
    cfg = load_config(CONFIGS / "tiny.yaml")
    with pytest.raises(ConfigError, match=r"grpo\.total_steps"):
        apply_knobs(cfg.to_json(), {"grpo_total_steps": 0})


def test_compiled_pipeline_has_typed_described_knobs_that_feed_every_stage(tmp_path):
    out = tmp_path / "p.yaml"
    assert (
        main(["compile", "--config", str(CONFIGS / "qwen2.5-vl-7b.yaml"), "--output", str(out)])
        == 0
    )
    spec = next(yaml.safe_load_all(out.read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    kinds = {str: "STRING", float: "NUMBER_DOUBLE", int: "NUMBER_INTEGER"}
    for knob in KNOBS:
        assert params[knob.name]["parameterType"] == kinds[knob.kind], knob.name
        assert params[knob.name]["description"] == knob.description
    assert params["grpo_total_steps"]["defaultValue"] == 200  # the 7B config's value
    assert params["model_uri"]["defaultValue"] == "s3://coldstart/models/Qwen2.5-VL-7B-Instruct"
    assert "typed parameters" in params["config_json"]["description"]
    assert params["ablation"]["parameterType"] == "BOOLEAN" and params["ablation"]["description"]
    # every stage reads the resolved config, none the raw parameter
    tasks = {**spec["root"]["dag"]["tasks"]}
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    for name, task in tasks.items():
        config = task.get("inputs", {}).get("parameters", {}).get("config_json")
        if config is None or name == "resolve-config-op":
            continue
        source = config.get("taskOutputParameter", {}).get("producerTask") or config.get(
            "componentInputParameter"
        )
        assert source in ("resolve-config-op", "pipelinechannel--resolve-config-op-Output"), name
    images = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert all(":latest" not in i for i in images)
