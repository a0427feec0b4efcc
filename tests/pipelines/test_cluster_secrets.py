"""Credentials never enter the compiled pipeline or the run's parameters: only Secret names do.

The test sets every credential variable the stages read (S3, MLflow) to a sentinel value, then
compiles every pipeline the CLI can produce (the DAG, the paper config, one-stage reruns, the
TrainJob launcher) and submits one to the stand-in KFP server: no sentinel may appear anywhere.
"""

import json
from pathlib import Path

import pytest
import yaml

from coldstart.common.config import load_config
from coldstart.pipelines.cli import main
from coldstart.pipelines.stage_pipeline import build_stage_pipeline
from tests.pipelines.test_cluster_resources import compile_docs
from tests.pipelines.test_submit import fake_kfp  # noqa: F401 (a fixture)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
               "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")  # fmt: skip


@pytest.fixture
def sentinels(monkeypatch):
    values = {name: f"SENTINEL-{i}-{name.lower()}" for i, name in enumerate(CREDENTIALS)}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def assert_clean(text: str, values: dict) -> None:
    leaked = [name for name, value in values.items() if value in text]
    assert not leaked, f"credential values of {leaked} leaked"
    assert "SENTINEL" not in text


def test_compiled_yaml_holds_secret_names_never_values(tmp_path, sentinels):
    out = tmp_path / "p.yaml"
    for config in ("tiny.yaml", "qwen2.5-vl-7b.yaml"):
        assert main(["compile", "--config", str(CONFIGS / config), "--output", str(out)]) == 0
        text = out.read_text()
        assert_clean(text, sentinels)
        spec, platform = yaml.safe_load_all(text)
        for name, ex in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
            assert {s["secretName"] for s in ex["secretAsEnv"]} == {
                "coldstart-s3-credentials",
                "coldstart-mlflow-credentials",
            }, name
        assert_clean(
            spec["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"], sentinels
        )


def test_rerun_and_trainjob_pipelines_hold_no_credential(tmp_path, sentinels):
    cfg = load_config(CONFIGS / "qwen2.5-vl-7b.yaml", ["cluster.sft_launcher=trainjob"])
    pipelines = [
        build_stage_pipeline(cfg, "sft", {"sft_data": "s3://b/sft"}),
        build_stage_pipeline(cfg, "data_prep", {}),
    ]
    for pipeline in pipelines:
        spec, k8s = compile_docs(pipeline, tmp_path)
        assert_clean(json.dumps([spec, k8s]), sentinels)


def test_submitted_run_holds_no_credential(fake_kfp, sentinels):  # noqa: F811 (fixture)
    assert (
        main(["submit", "--host", fake_kfp.url, "--config", str(CONFIGS / "qwen2.5-vl-7b.yaml")])
        == 0
    )
    assert fake_kfp.bodies("POST", "/runs")
    assert_clean(json.dumps([body for *_, body in fake_kfp.requests]), sentinels)
    assert_clean(json.dumps([query for _, _, query, _ in fake_kfp.requests]), sentinels)


def test_extractor_key_reaches_only_the_eval_task_by_secret_name(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_API_KEY", "SENTINEL-judge-key")
    out = tmp_path / "p.yaml"
    judge = [
        "eval.extractor.base_url=http://judge:8000/v1",
        "eval.extractor.model=judge",
        "eval.extractor.api_key_env=JUDGE_API_KEY",
        "eval.extractor.api_key_secret=coldstart-judge",
    ]
    args = ["compile", "--config", str(CONFIGS / "tiny.yaml"), "--output", str(out)]
    assert main([*args, *(x for kv in judge for x in ("--set", kv))]) == 0
    text = out.read_text()
    assert "SENTINEL-judge-key" not in text
    _, platform = yaml.safe_load_all(text)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    with_key = {
        name
        for name, ex in executors.items()
        for s in ex["secretAsEnv"]
        if s["secretName"] == "coldstart-judge"
    }
    assert with_key and all("eval" in name for name in with_key), with_key
    for name in with_key:
        (entry,) = [
            s for s in executors[name]["secretAsEnv"] if s["secretName"] == "coldstart-judge"
        ]
        assert entry["keyToEnv"] == [{"secretKey": "JUDGE_API_KEY", "envVar": "JUDGE_API_KEY"}]
