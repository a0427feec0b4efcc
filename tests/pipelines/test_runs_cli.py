"""`coldstart runs list/show/compare/sync` on runs with known metrics, in the local sqlite store
and on a real `mlflow server`."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from PIL import Image

from coldstart.common.tracking import stage_run
from coldstart.pipelines.cli import main
from tests.conftest import tiny_config
from tests.servers import MlflowServer, S3Env

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# kfp run id -> (reward curve by step, eval scores, grpo learning rate)
PIPELINES = {
    "kfp-a": ([0.1, 0.2, 0.3, 0.4, 0.5], {"synthetic": 0.5, "mathvista": 0.3}, 1e-6),
    "kfp-b": ([0.2, 0.3, 0.4, 0.5, 0.6], {"synthetic": 0.6, "mathvista": 0.35}, 2e-6),
}


def make_pipeline_runs(output_dir: Path, tracking: dict) -> None:
    """Two pipeline runs as the stages log them; kfp-b's extra stage fails."""
    for kfp_run, (rewards, scores, lr) in PIPELINES.items():
        cfg = tiny_config(
            output_dir.parent,
            output_dir=str(output_dir),
            grpo={"learning_rate": lr},
            tracking={"system_metrics": False, **tracking},
        )
        with stage_run(cfg, "data_prep", kfp_run) as tracker:
            tracker.log_metrics({"data/rl_rows": 48})
        with stage_run(cfg, "grpo", kfp_run) as tracker:
            for step, reward in enumerate(rewards, start=1):
                tracker.log_metrics(
                    {"grpo/rewards/accuracy/mean": reward, "grpo/reward/mean": reward}, step=step
                )
        with stage_run(cfg, "eval", kfp_run) as tracker:
            for bench, score in scores.items():
                tracker.log_metrics(
                    {f"eval/sft_rl/{bench}/score": score, f"eval/sft_rl/{bench}/accuracy": score}
                )
            tracker.log_metrics({"eval/sft_rl/average": sum(scores.values()) / len(scores)})
            tracker.log_dict({"rows": []}, "eval/predictions.json")
        if kfp_run == "kfp-b":
            with pytest.raises(RuntimeError), stage_run(cfg, "eval_extra", kfp_run):
                raise RuntimeError("stage crashed")


@pytest.fixture(scope="module")
def local_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output_dir = tmp_path_factory.mktemp("runs") / "outputs"
    make_pipeline_runs(output_dir, {})
    return output_dir


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(["runs", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_tag_names_agree_with_the_tracker() -> None:
    from coldstart.common import tracking
    from coldstart.pipelines import runs

    assert (
        runs.ROLE,
        runs.STAGE,
        runs.PIPELINE_RUN,
        runs.CONFIG_HASH,
        runs.REGISTERED,
        runs.PARENT,
    ) == (
        tracking.TAG_ROLE,
        tracking.TAG_STAGE,
        tracking.TAG_PIPELINE_RUN,
        tracking.TAG_CONFIG_HASH,
        tracking.TAG_REGISTERED,
        tracking.TAG_PARENT,
    )


def test_list_shows_pipelines_with_stages_status_and_key_metrics(local_store: Path, capsys) -> None:
    code, out, _ = run_cli(capsys, "list", "--output-dir", str(local_store))
    assert code == 0
    lines = out.splitlines()
    row_a = next(line for line in lines if "kfp-a" in line)
    row_b = next(line for line in lines if "kfp-b" in line)
    assert "FINISHED" in row_a and "eval/sft_rl/average=0.4" in row_a
    assert "FAILED" in row_b  # one stage failed
    assert out.index("kfp-b") < out.index("kfp-a")  # newest first
    for stage in ("data_prep", "grpo", "eval", "eval_extra"):
        assert f"└ {stage}" in out
    assert "grpo/rewards/accuracy/mean=0.5" in out and "data/rl_rows=48" in out


def test_list_on_a_narrow_terminal_keeps_names_and_ids_whole(
    local_store: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run names and ids are what users copy into the next command: never folded."""
    monkeypatch.setenv("COLUMNS", "70")
    code, out, _ = run_cli(capsys, "list", "--output-dir", str(local_store))
    assert code == 0
    assert "kfp-a" in out and "kfp-b" in out
    ids = [line.split("│")[2].strip() for line in out.splitlines() if "kfp-a" in line]
    assert len(ids) == 1 and len(ids[0]) == 12, out


def test_show_params_metrics_artifacts(local_store: Path, capsys) -> None:
    code, out, _ = run_cli(capsys, "show", "kfp-a", "--output-dir", str(local_store))
    assert code == 0
    assert "grpo.learning_rate" in out and "1e-06" in out  # the parent's flattened config
    assert "config.yaml" in out and "stages" in out

    code, out, _ = run_cli(capsys, "list", "--output-dir", str(local_store))
    lines = out.splitlines()
    below_a = lines[next(i for i, line in enumerate(lines) if "kfp-a" in line) :]
    grpo_id = next(line for line in below_a if "└ grpo" in line).split("│")[2].strip()
    code, out, _ = run_cli(capsys, "show", grpo_id[:10], "--output-dir", str(local_store))
    assert code == 0
    row = next(line for line in out.splitlines() if "grpo/rewards/accuracy/mean" in line)
    assert [c.strip() for c in row.split("│")[1:-1]] == [
        "grpo/rewards/accuracy/mean",
        "0.5",
        "5",
        "5",
    ]

    code, out, _ = run_cli(capsys, "show", "eval", "--output-dir", str(local_store))
    assert code == 2  # two pipelines have an "eval" stage


def test_compare_table_param_diff_and_reward_plot(
    local_store: Path, tmp_path: Path, capsys
) -> None:
    plot = tmp_path / "plots" / "rewards.png"
    code, out, _ = run_cli(
        capsys, "compare", "kfp-a", "kfp-b", "--plot", str(plot), "--output-dir", str(local_store)
    )
    assert code == 0, out
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in out.splitlines()
        if line.startswith("│ sft_rl/")
    }
    assert rows["sft_rl/synthetic"] == ["50.0", "60.0", "+10.0"]
    assert rows["sft_rl/mathvista"] == ["30.0", "35.0", "+5.0"]
    assert rows["sft_rl/average"] == ["40.0", "47.5", "+7.5"]
    assert "grpo.learning_rate" in out and "2e-06" in out
    assert plot.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(plot) as image:
        image.verify()
    assert "reward curves (2)" in out


def test_compare_falls_back_to_accuracy_and_reports_no_curves(
    local_store: Path, tmp_path: Path, capsys
) -> None:
    plot = tmp_path / "none.png"
    code, out, _ = run_cli(
        capsys,
        "compare",
        "kfp-a",
        "--metric",
        "accuracy",
        "--plot",
        str(plot),
        "--output-dir",
        str(local_store),
    )
    assert code == 0 and "eval accuracy" in out and "50.0" in out
    assert not plot.exists() or plot.read_bytes()[:8] == PNG_SIGNATURE


def test_missing_store_and_unknown_run_are_clear_errors(
    local_store: Path, tmp_path: Path, capsys
) -> None:
    code, _, err = run_cli(capsys, "list", "--output-dir", str(tmp_path / "nothing"))
    assert code == 2 and "no local MLflow store" in err and "MLFLOW_TRACKING_URI" in err
    code, _, err = run_cli(capsys, "show", "no-such-run", "--output-dir", str(local_store))
    assert code == 2 and "no run 'no-such-run'" in err
    code, _, err = run_cli(capsys, "list", "--experiment", "nope", "--output-dir", str(local_store))
    assert code == 2 and "no experiment 'nope'" in err


def test_runs_finds_the_experiment_of_the_newest_run_or_of_the_config(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """`make run` logs to configs/tiny.yaml's experiment; `coldstart runs list` right after it,
    with no flags, must show that run (it used to look in an experiment named `coldstart`)."""
    output_dir = tmp_path / "outputs"
    cfg = tiny_config(tmp_path, output_dir=str(output_dir))
    assert cfg.tracking.experiment == "coldstart-tiny"
    with stage_run(cfg, "data_prep", "local-20261202-000000") as tracker:
        tracker.log_metrics({"data/rl_rows": 48})
    monkeypatch.chdir(tmp_path)  # configs/tiny.yaml's output_dir: ./outputs
    code, out, err = run_cli(capsys, "list")
    assert code == 0 and "local-20261202-000000" in out and "coldstart-tiny" in out, err
    config = tmp_path / "c.yaml"
    config.write_text(cfg.model_dump_json())
    code, out, err = run_cli(capsys, "show", "local-20261202-000000", "--config", str(config))
    assert code == 0 and "data/rl_rows" in out, err


def test_sync_sends_a_spill_once_the_store_is_reachable(tmp_path: Path, capsys) -> None:
    """A store that cannot be opened (a file stands where its folder goes) makes the stage spill;
    `runs sync` fails while it stays so, and sends everything once it can be opened."""
    store_dir = tmp_path / "late"
    store_dir.write_text("not a folder")
    uri = f"sqlite:///{store_dir / 'mlflow.db'}"
    cfg = tiny_config(
        tmp_path,
        tracking={
            "tracking_uri": uri,
            "system_metrics": False,
            "start_timeout_s": 0.2,
            "flush_timeout_s": 0.2,
        },
    )
    with stage_run(cfg, "sft", "kfp-late") as tracker:
        tracker.log_metrics({"sft/train/loss": 2.0}, step=3)
    output_dir = Path(cfg.output_dir)
    code, out, _ = run_cli(capsys, "sync", "--output-dir", str(output_dir), "--timeout", "0.2")
    assert code == 1 and "1 left" in out

    store_dir.unlink()
    code, out, _ = run_cli(capsys, "sync", "--output-dir", str(output_dir))
    assert code == 0 and "replayed 1" in out
    code, out, _ = run_cli(capsys, "show", "kfp-late", "--tracking-uri", uri)
    assert code == 0 and "sft/train/loss" in out


def test_runs_against_a_tracking_server(
    mlflow_server: MlflowServer,
    s3_env: S3Env,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    experiment = f"runs-{uuid.uuid4().hex[:8]}"
    make_pipeline_runs(
        tmp_path / "outputs", {"tracking_uri": mlflow_server.url, "experiment": experiment}
    )
    code, out, _ = run_cli(
        capsys, "list", "--tracking-uri", mlflow_server.url, "--experiment", experiment
    )
    assert code == 0 and "kfp-a" in out and "└ eval_extra" in out
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)  # the env var alone also works
    plot = tmp_path / "server.png"
    code, out, _ = run_cli(
        capsys, "compare", "kfp-a", "kfp-b", "--experiment", experiment, "--plot", str(plot)
    )
    assert code == 0 and "+10.0" in out and plot.read_bytes()[:8] == PNG_SIGNATURE
    code, out, _ = run_cli(capsys, "show", "kfp-b", "--experiment", experiment)
    assert code == 0 and "config.yaml" in out and "FAILED" in out
