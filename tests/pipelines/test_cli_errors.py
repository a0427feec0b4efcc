"""How commands end when something is wrong, run as a user runs them: a real subprocess, its
stderr and exit code. One line naming where and what to fix, the log path, exit 2 for bad input
and 1 otherwise, no traceback unless --verbose; the preflight stops a run before any stage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coldstart.common.config import load_config
from coldstart.common.stage_cli import DEFAULT_CONFIG
from coldstart.pipelines.preflight import preflight
from tests.servers import S3Env

ROOT = Path(__file__).resolve().parents[2]


def coldstart(
    *args: str, cwd: Path, env: dict[str, str] | None = None, module="coldstart.pipelines.cli"
):
    """`coldstart ARGS` (or `python -m MODULE ARGS`) from `cwd`, with this checkout's code."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def error_line(stderr: str) -> str:
    """The one line a failure ends with; nothing of a traceback around it."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), stderr
    assert "full log: " in lines[-1]
    return lines[-1]


def test_version_and_shell_completion(tmp_path):
    done = coldstart("--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("coldstart ")
    done = coldstart("--print-completion", "bash", cwd=tmp_path)
    assert done.returncode == 0 and "coldstart" in done.stdout and "rerun" in done.stdout


def test_a_missing_config_file_is_one_line_and_exit_2(tmp_path):
    done = coldstart("run", "--config", "nope.yaml", cwd=tmp_path)
    assert done.returncode == 2
    line = error_line(done.stderr)
    assert line.startswith("error: run: config file nope.yaml does not exist")


def test_preflight_stops_a_run_with_a_missing_model_before_any_stage(tmp_path):
    done = coldstart(
        "run", "--set", "output_dir=out", "--set", "model.name_or_path=models/mine", cwd=tmp_path
    )
    assert done.returncode == 2
    line = error_line(done.stderr)
    assert "preflight" in line and "model.name_or_path='models/mine': no such directory" in line
    assert not (tmp_path / "out").exists()  # no stage started, nothing written


def test_an_unreachable_s3_output_dir_fails_fast_and_never_becomes_a_local_folder(tmp_path):
    env = {
        "COLDSTART_S3_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
    }
    done = coldstart("run", "--set", "output_dir=s3://nobucket/run1", cwd=tmp_path, env=env)
    assert done.returncode == 2
    line = error_line(done.stderr)
    assert "output_dir: s3://nobucket/run1/.coldstart-preflight" in line
    assert not (tmp_path / "s3:").exists()


def test_submit_to_an_unreachable_server_is_one_line_with_a_hint(tmp_path):
    done = coldstart("submit", "--host", "http://127.0.0.1:9", cwd=tmp_path)
    assert done.returncode == 2
    line = error_line(done.stderr)
    assert "cannot reach the KFP API server at http://127.0.0.1:9" in line
    assert "kubectl port-forward" in line
    assert "Retrying" not in done.stderr and "MaxRetryError" not in done.stderr


def test_rerun_eval_needs_a_model_and_runs_needs_a_store(tmp_path):
    (tmp_path / "eval").mkdir()
    done = coldstart("rerun", "eval", "--local", "--data", "eval", cwd=tmp_path)
    assert done.returncode == 2
    assert "evaluates only the models it is given" in error_line(done.stderr)
    done = coldstart("runs", "list", cwd=tmp_path)
    assert done.returncode == 2
    assert "run `coldstart run` first" in error_line(done.stderr)


@pytest.mark.slow  # imports torch and transformers in the stage's process
def test_stage_cli_with_a_missing_model_dir_is_an_input_error(tmp_path):
    args = ["--base-model", "nomodel", "--data", "nodata", "--output", "out"]
    done = coldstart(*args, cwd=tmp_path, module="coldstart.sft")
    assert done.returncode == 2
    line = error_line(done.stderr)
    assert line.startswith("error: sft: nomodel: no such") and "StorageError" not in line
    done = coldstart(*args, "--verbose", cwd=tmp_path, module="coldstart.sft")
    assert done.returncode == 2 and "Traceback" in done.stderr


# --------------------------------------------------------------------------- preflight, in-process


def test_preflight_on_s3_names_a_missing_bucket_and_accepts_a_writable_one(s3_env: S3Env):
    cfg = load_config(DEFAULT_CONFIG, [f"output_dir={s3_env.uri('run1')}"])
    assert preflight(cfg, local=True) == []
    assert s3_env.client().list_objects_v2(Bucket=s3_env.bucket).get("KeyCount", 0) == 0
    missing = load_config(DEFAULT_CONFIG, ["output_dir=s3://no-such-bucket-x/run1"])
    with pytest.raises(ValueError, match="bucket 'no-such-bucket-x' does not exist"):
        preflight(missing, local=False)  # a definite answer: an error for submit too


def test_preflight_for_a_cluster_only_warns_about_a_store_it_cannot_reach(monkeypatch):
    monkeypatch.setenv("COLDSTART_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # in-cluster, say
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    cfg = load_config(DEFAULT_CONFIG, ["output_dir=s3://bucket/run1"])
    (warning,) = preflight(cfg, local=False)
    assert warning.startswith("output_dir: not reachable from here")
    with pytest.raises(ValueError, match=r"output_dir: .*cannot reach the S3 endpoint"):
        preflight(cfg, local=True)


def test_preflight_checks_benchmarks_and_warns_about_an_unreachable_tracking_server(tmp_path):
    cfg = load_config(
        DEFAULT_CONFIG,
        [
            f"output_dir={tmp_path / 'out'}",
            "tracking.tracking_uri=http://127.0.0.1:9",
            f"eval.benchmarks=[{{name: mathvista, uri: {tmp_path / 'mathvista.parquet'}}}]",
        ],
    )
    with pytest.raises(ValueError, match=r"eval.benchmarks\[mathvista\].uri: .* does not exist"):
        preflight(cfg, local=True)
    (tmp_path / "mathvista.parquet").write_bytes(b"")
    (warning,) = preflight(cfg, local=True)
    assert "tracking server http://127.0.0.1:9 not reachable" in warning


# --------------------------------------------------------------------------- one source of defaults


def test_without_config_every_command_uses_configs_tiny_yaml(tmp_path):
    from coldstart.pipelines.cli import main

    out = tmp_path / "p.yaml"
    assert main(["compile", "--output", str(out)]) == 0
    spec = next(yaml.safe_load_all(out.read_text()))
    default = spec["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"]
    assert default == load_config(ROOT / "configs" / "tiny.yaml").to_json()


def test_rerun_eval_evaluates_only_the_models_it_is_given(tmp_path):
    from kfp import compiler

    from coldstart.pipelines.stage_pipeline import build_stage_pipeline

    cfg = load_config(DEFAULT_CONFIG)
    uris = {"eval_data": "s3://b/eval", "sft_model": "s3://b/sft"}
    compiler.Compiler().compile(build_stage_pipeline(cfg, "eval", uris), str(tmp_path / "p.yaml"))
    spec = next(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    tasks = spec["root"]["dag"]["tasks"]
    assert not [name for name in tasks if name.startswith("base-model")]
    assert set(tasks["eval-op"]["inputs"]["artifacts"]) == {"eval_data", "sft_model"}


def test_the_python_api_runs_the_same_preflight(tmp_path):
    from coldstart.common.errors import InputError
    from coldstart.pipelines.api import run_pipeline

    overrides = [f"output_dir={tmp_path / 'out'}", f"model.name_or_path={tmp_path / 'nomodel'}"]
    with pytest.raises(InputError, match=r"model.name_or_path=.*no such directory"):
        run_pipeline(None, overrides)
    assert not (tmp_path / "out").exists()
