"""`coldstart run` end to end as a user runs it: a real subprocess through kfp.local, the output it
ends with, and the very commands it suggests; then `rerun eval` compared with its pipeline run."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def coldstart(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    assert command[0] == "coldstart"
    return subprocess.run(
        [sys.executable, "-m", "coldstart.pipelines.cli", *command[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=3000,
    )


def printed_path(out: str, name: str) -> Path:
    return Path(re.search(rf"^{name}:\s+(\S+)$", out, re.MULTILINE).group(1))


def browse_commands(out: str) -> list[list[str]]:
    lines = out.split("\nbrowse:\n", 1)[1].splitlines()
    return [shlex.split(line) for line in lines if line.startswith("  ")]


@pytest.mark.slow
def test_run_ends_with_scores_and_paths_and_its_commands_work(tmp_path):
    data = json.loads(tiny_config(tmp_path).model_dump_json())
    data.update(output_dir="outputs", ablation=True)  # relative, as in configs/tiny.yaml
    data["sft"]["max_steps"] = 12
    data["grpo"]["total_steps"] = 2
    data["eval"].update(max_new_tokens=24, benchmarks=[{"name": "synthetic", "limit": 8}])
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(data))  # JSON is YAML
    work = tmp_path / "work"
    work.mkdir()

    done = coldstart(["coldstart", "run", "--config", str(config)], work)
    assert done.returncode == 0, done.stderr
    out, err = done.stdout, done.stderr
    assert "executor_input" not in out + err and "UserWarning" not in out + err
    assert len((out + err).splitlines()) < 60  # was ~1,080 lines
    for stage in ("base_model", "data_prep", "sft", "grpo", "grpo_from_base", "eval"):
        assert re.search(rf"^  {stage}\s+done", err, re.MULTILINE), err
    table = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")]
    assert table == ["Model", "base", "SFT", "RL", "SFT+RL"]  # the paper's ablation, one table
    report, chart = printed_path(out, "report"), printed_path(out, "chart")
    assert report.name == "report.md" and "| SFT+RL |" in report.read_text()
    with Image.open(chart) as image:
        assert chart.name == "chart.png" and image.format == "PNG"
    run_folder = printed_path(out, "run folder")
    assert run_folder.parent == work / "outputs" / "pipeline_root"
    assert (run_folder / "data-prep-op" / "rl_data" / "dataset_info.json").exists()
    assert (printed_path(out, "logs") / "sft.log").exists()

    show, mlflow_ui = browse_commands(out)
    assert mlflow_ui[:2] == ["mlflow", "ui"] and mlflow_ui[3].startswith("sqlite:///")
    shown = coldstart(show, work)  # the very next command the output suggests
    assert shown.returncode == 0, shown.stderr
    assert "FINISHED" in shown.stdout and "grpo_from_base" in shown.stdout
    listed = coldstart(["coldstart", "runs", "list"], work)  # no flags at all
    assert listed.returncode == 0 and show[3] in listed.stdout, listed.stderr

    client = MlflowClient(mlflow_ui[3])
    (experiment,) = [
        e for e in client.search_experiments() if e.name == data["tracking"]["experiment"]
    ]
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
    assert stages["data_prep"].data.metrics["data/rl_rows"] == 48

    # the README's rerun: evaluate only the SFT model again, then compare with the pipeline run
    rerun = coldstart(
        ["coldstart", "rerun", "eval", "--local", "--config", str(config),
         "--model", f"sft={run_folder / 'sft-op' / 'model'}",
         "--data", str(run_folder / "data-prep-op" / "eval_data")],
        work,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    rows = [
        line.split("|")[1].strip() for line in rerun.stdout.splitlines() if line.startswith("| ")
    ]
    assert rows == ["Model", "SFT"]  # no silently built base model
    rerun_id = browse_commands(rerun.stdout)[0][3]
    compared = coldstart(
        ["coldstart", "runs", "compare", show[3], rerun_id, "--config", str(config)], work
    )
    assert compared.returncode == 0, compared.stderr
    assert "sft/synthetic" in compared.stdout
