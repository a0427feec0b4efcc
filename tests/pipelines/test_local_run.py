"""`coldstart run` end to end through kfp.local: the real pipeline function, real subprocesses."""

import os

import pytest
from mlflow.tracking import MlflowClient

from pipelines.cli import main
from tests.conftest import tiny_config


@pytest.mark.slow
def test_coldstart_run_local_with_ablation(tmp_path, monkeypatch, capsys):
    cfg = tiny_config(tmp_path)
    config_file = tmp_path / "c.yaml"
    config_file.write_text(cfg.model_dump_json())  # JSON is YAML
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # "from any working directory"
    fast = [
        "output_dir=out",
        "sft.max_steps=12",
        "grpo.total_steps=2",
        "eval.max_new_tokens=24",
        "eval.benchmarks=[{name: synthetic, limit: 8}]",
    ]
    args = ["run", "--config", str(config_file), "--ablation"]
    for override in fast:
        args += ["--set", override]
    assert main(args) == 0
    printed = capsys.readouterr().out
    root = workdir / "out" / "pipeline_root"
    assert f"artifacts: {root}" in printed and "MLflow:    sqlite:///" in printed
    (run_dir,) = [p for p in root.iterdir() if not p.name.startswith(".")]  # .kfp_cache beside it
    produced = {p.name for p in run_dir.iterdir()}
    assert {"data-prep-op", "base-model-op", "sft-op", "grpo-op"} <= produced
    (eval_dir,) = [run_dir / p for p in produced if p.startswith("eval-op")]
    report = (eval_dir / "report").read_text()
    for model in ("base", "SFT", "RL", "SFT+RL"):  # the paper's ablation, one table
        assert f"| {model} |" in report
    assert (run_dir / "base-model-op" / "base_model" / "model.safetensors").exists()
    assert (run_dir / "data-prep-op" / "rl_data" / "dataset_info.json").exists()

    client = MlflowClient(f"sqlite:///{workdir / 'out' / 'mlflow' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == cfg.tracking.experiment]
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("coldstart.role") == "pipeline"]
    stages = {
        r.data.tags["coldstart.stage"]: r
        for r in runs
        if r.data.tags.get("coldstart.role") == "stage"
    }
    assert len(parents) == 1 and {"data_prep", "sft", "grpo", "grpo_from_base", "eval"} <= set(
        stages
    )
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in stages.values())
    assert stages["data_prep"].data.metrics["data/rl_rows"] == 48
    assert parents[0].data.params["sft.learning_rate"] == str(cfg.sft.learning_rate)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


@pytest.mark.slow
def test_second_run_with_unchanged_inputs_is_cached(tmp_path, monkeypatch):
    """kfp.local's cache: the same config twice runs data_prep once; --no-cache runs it again."""
    monkeypatch.chdir(tmp_path)
    args = [
        "run",
        "--set",
        "sft.enabled=false",
        "--set",
        "grpo.enabled=false",
        "--set",
        "eval.enabled=false",
        "--set",
        "data.synthetic.train_per_family=4",
        "--set",
        "data.synthetic.test_per_family=2",
        "--set",
        "output_dir=out",
    ]

    def data_prep_runs() -> int:
        client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow' / 'mlflow.db'}")
        (experiment,) = [e for e in client.search_experiments() if e.name == "coldstart"]
        return len(
            client.search_runs([experiment.experiment_id], "tags.`coldstart.stage` = 'data_prep'")
        )

    assert main(args) == 0 and data_prep_runs() == 1
    assert main(args) == 0 and data_prep_runs() == 1  # cache hit: the stage did not run
    assert main([*args, "--no-cache"]) == 0 and data_prep_runs() == 2
