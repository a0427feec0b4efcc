"""The eval stage on the tiny model: outputs and their shape, MLflow, failures that must not stop a run."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from coldstart.common.config import BenchmarkSpec
from coldstart.common.errors import InputError
from coldstart.common.generation import SamplingConfig
from coldstart.eval.benchmarks import BenchmarkError, EvalSample, load_benchmark
from coldstart.eval.cli import main, parse_models
from coldstart.eval.stage import generate_responses, make_eval_backend, score_responses
from tests.conftest import tiny_config
from tests.eval.fixtures import URIS

pytestmark = pytest.mark.timeout(300)


def eval_config(tmp_path, **eval_section):
    section = {
        "max_new_tokens": 12,
        "batch_size": 4,
        "benchmarks": [
            {"name": "synthetic", "limit": 6},
            {"name": "mathvista", "uri": str(URIS["mathvista"])},
        ],
    }
    section.update(eval_section)
    return tiny_config(tmp_path, eval=section)


def test_main_writes_report_chart_predictions_and_logs_to_mlflow(
    tmp_path, tiny_model_dir, synthetic_data_dir
):
    cfg = eval_config(tmp_path)
    models = {"base": str(tiny_model_dir), "SFT+RL": str(tiny_model_dir)}
    metrics = main(cfg, models, synthetic_data_dir / "eval", tmp_path / "out", "run-1")

    out = tmp_path / "out"
    summary = json.loads((out / "metrics.json").read_text())
    assert list(summary["table"]) == ["base", "SFT+RL"]  # rows: models, in the given order
    assert list(summary["table"]["base"]) == [
        "Synthetic",
        "MathVista",
        "Avg.",
    ]  # columns: benchmarks + average
    # same weights, greedy: both rows score the same
    assert summary["table"]["base"] == summary["table"]["SFT+RL"]
    assert metrics["eval/sft_rl/mathvista/n"] == 8 and "eval/base/average" in metrics

    report = (out / "report.md").read_text()
    table = [line for line in report.splitlines() if line.startswith("| ")]
    assert table[0] == "| Model | Synthetic | MathVista | Avg. |"
    assert table[1].startswith("| base | ") and table[2].startswith("| SFT+RL | ")
    assert "![scores](chart.png)" in report

    with Image.open(out / "chart.png") as chart:
        assert chart.format == "PNG" and chart.size[0] > chart.size[1] > 100

    predictions = pd.read_parquet(out / "predictions" / "predictions.parquet")
    assert len(predictions) == 2 * (6 + 8)
    assert {"model", "benchmark", "id", "response", "extracted", "gold", "correct"} <= set(
        predictions.columns
    )
    assert set(predictions["model"]) == {"base", "SFT+RL"}
    assert len(pd.read_csv(out / "predictions" / "predictions.csv")) == len(predictions)

    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow' / 'mlflow.db'}")
    (experiment,) = client.search_experiments(filter_string=f"name = '{cfg.tracking.experiment}'")
    (stage,) = client.search_runs([experiment.experiment_id], "tags.`coldstart.stage` = 'eval'")
    assert stage.data.metrics["eval/base/mathvista/n"] == 8
    logged = {a.path for a in client.list_artifacts(stage.info.run_id, "eval")}
    assert {
        "eval/report.md",
        "eval/chart.png",
        "eval/predictions.json",
        "eval/metrics.json",
    } <= logged
    assert json.loads(stage.data.tags["mlflow.loggedArtifacts"]) == [
        {"path": "eval/predictions.json", "type": "table"}
    ]
    table = json.loads(
        (out / "predictions" / "predictions.json").read_text()
    )  # MLflow's table layout
    assert table["columns"][:3] == ["model", "benchmark", "id"] and len(table["data"]) == len(
        predictions
    )


def _sample(i: int, image) -> EvalSample:
    return EvalSample(str(i), "synthetic", f"What is {i} + 1?", [image], str(i + 1))


def _png(size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "white").save(buf, format="PNG")
    return buf.getvalue()


def test_failed_samples_are_scored_wrong_and_the_run_continues(tmp_path, tiny_model_dir, caplog):
    cfg = eval_config(tmp_path)
    backend = make_eval_backend(cfg, tiny_model_dir)
    good = _png((56, 56))
    samples = [
        _sample(0, good),
        _sample(1, b"not an image"),  # corrupt bytes: fails before generation
        _sample(
            2, _png((1, 600))
        ),  # the processor refuses an aspect ratio of 600: generation crashes
        _sample(3, good),
    ]
    completions = generate_responses(
        backend, samples, SamplingConfig(max_new_tokens=8), batch_size=4
    )
    assert [c.finish_reason == "error" for c in completions] == [False, True, True, False]
    assert "image bytes cannot be decoded" in completions[1].error
    assert "aspect ratio" in completions[2].error
    assert "1: generation failed" in caplog.text and "2: generation failed" in caplog.text
    metrics, judged = score_responses(samples, completions, "official")
    assert metrics["errors"] == 2 and metrics["n"] == 4
    assert [j.correct for j in judged][1:3] == [False, False]


def test_order_of_samples_survives_length_sorting(tmp_path, tiny_model_dir):
    cfg = eval_config(tmp_path)
    backend = make_eval_backend(cfg, tiny_model_dir)
    samples = [
        EvalSample(str(i), "synthetic", "x" * (5 + 7 * (i % 3)), [_png((56, 56))], "1")
        for i in range(6)
    ]
    sampling = SamplingConfig(max_new_tokens=6)
    sorted_run = generate_responses(backend, samples, sampling, batch_size=1, by_length=True)
    plain_run = generate_responses(backend, samples, sampling, batch_size=1, by_length=False)
    assert [c.text for c in sorted_run] == [c.text for c in plain_run]  # batch 1, greedy: identical


def test_missing_column_names_file_and_column(tmp_path):
    frame = pd.read_parquet(URIS["mathvista"] / "testmini-00000-of-00001.parquet").drop(
        columns=["answer_type"]
    )
    bad = tmp_path / "mathvista.parquet"
    frame.to_parquet(bad)
    with pytest.raises(BenchmarkError, match=r"mathvista\.parquet: missing column 'answer_type'"):
        load_benchmark(BenchmarkSpec(name="mathvista", uri=str(bad)), None, tmp_path)


def test_renamed_column_is_mapped_back(tmp_path):
    frame = pd.read_parquet(URIS["mathvista"] / "testmini-00000-of-00001.parquet").rename(
        columns={"answer": "gt"}
    )
    renamed = tmp_path / "mathvista.parquet"
    frame.to_parquet(renamed)
    spec = BenchmarkSpec(name="mathvista", uri=str(renamed), columns={"answer": "gt"})
    assert len(load_benchmark(spec, None, tmp_path)) == 8


def test_empty_gold_answer_is_a_named_error(tmp_path):
    frame = pd.read_parquet(URIS["mathverse"])
    frame.loc[2, "answer"] = ""
    path = tmp_path / "mathverse.parquet"
    frame.to_parquet(path)
    with pytest.raises(BenchmarkError, match=r"mathverse\.parquet: row 2: empty answer"):
        load_benchmark(BenchmarkSpec(name="mathverse", uri=str(path)), None, tmp_path)


def test_benchmark_from_s3(tmp_path, s3_env):
    s3_env.client().upload_file(str(URIS["wemath"]), s3_env.bucket, "bench/wemath/testmini.parquet")
    spec = BenchmarkSpec(name="wemath", uri=s3_env.uri("bench/wemath/testmini.parquet"))
    assert len(load_benchmark(spec, None, tmp_path)) == 10


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([], "at least one --model"),
        (["base"], "NAME=DIR_OR_S3"),
        (["base=a", "base=b"], "given twice"),
    ],
)
def test_parse_models_errors(items, message):
    with pytest.raises(InputError, match=message):
        parse_models(items)


def test_parse_models_keeps_order():
    assert list(parse_models(["SFT+RL=s3://b/m", "base=d"])) == ["SFT+RL", "base"]


class _BatchFailsBackend:
    """Raises for any batch holding the poisoned prompt, as vLLM does for a whole generate call."""

    def generate(self, prompts, sampling):
        if any(p.problem == "poison" for p in prompts):
            raise RuntimeError("engine error")
        from coldstart.common.generation import Completion

        return [[Completion(rf"\boxed{{{p.problem}}}", [1], "stop")] for p in prompts]


def test_a_failing_batch_is_retried_prompt_by_prompt():
    samples = [
        EvalSample(str(i), "synthetic", text, [], text)
        for i, text in enumerate(["1", "poison", "3"])
    ]
    completions = generate_responses(
        _BatchFailsBackend(), samples, SamplingConfig(max_new_tokens=4), batch_size=8
    )
    assert [c.finish_reason for c in completions] == ["stop", "error", "stop"]
    assert completions[1].error == "engine error"
    metrics, _ = score_responses(samples, completions, "strict")
    assert metrics["correct"] == 2 and metrics["errors"] == 1


def test_model_data_and_image_store_from_s3(tmp_path, s3_env, tiny_model_dir, synthetic_data_dir):
    """Model, eval set and image store all downloaded: the set's image keys resolve in the store
    given (nothing lies beside the downloaded set)."""
    from coldstart.common.storage import sync_up
    from coldstart.eval.benchmarks import EvalData
    from coldstart.eval.stage import EvalPaths, run_eval

    sync_up(tiny_model_dir, s3_env.uri("models/base"))
    sync_up(synthetic_data_dir / "eval", s3_env.uri("data/eval"))
    sync_up(synthetic_data_dir / "images", s3_env.uri("data/store"))
    cfg = eval_config(tmp_path, benchmarks=[{"name": "synthetic", "limit": 2}])
    run = run_eval(
        cfg,
        {"base": s3_env.uri("models/base")},
        EvalData(s3_env.uri("data/eval"), s3_env.uri("data/store")),
        tmp_path / "cache",
        EvalPaths(tmp_path / "work"),
        tmp_path / "predictions",
    )
    assert run.results["base"]["strict"]["synthetic"]["n"] == 2
    assert (
        tmp_path / "cache" / "models" / s3_env.bucket / "models" / "base" / "config.json"
    ).exists()
