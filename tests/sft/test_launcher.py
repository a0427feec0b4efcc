"""Several GPUs: the stage re-runs itself under torchrun; on CPU / one GPU / in a worker it trains in-process.

The real multi-process path is exercised on CPU: two torchrun workers (DDP over gloo) train one
model, and the global batch check proves each worker saw WORLD_SIZE=2.
"""

import sys
import uuid

import pytest
from mlflow import MlflowClient

from coldstart.common import launcher, stage_runner
from coldstart.common.launcher import processes_to_launch, torchrun_command
from coldstart.common.stage_runner import RESULT_FLAG, StageRequest
from coldstart.common.tracking import local_tracking_uri
from coldstart.sft import cli
from tests.conftest import tiny_config


def stage_args(base_model: str, data: str, output: str, run_id: str) -> dict[str, str]:
    """The arguments a torchrun worker of SFT receives (the stage runner's request)."""
    inputs = {"base-model": base_model, "data": data}
    return StageRequest("sft", inputs, output, run_id, "sft", digest="-").cli_args()


def run_under_torchrun(cfg, base_model: str, data: str, output: str, run_id: str, nproc: int):
    args = stage_args(base_model, data, output, run_id)
    return launcher.run_under_torchrun("coldstart.sft", cfg, args, nproc, RESULT_FLAG)


def test_torchrun_command_reruns_the_stage_once_per_device(tmp_path):
    args = {
        "--config": str(tmp_path / "c.json"),
        **stage_args("/m", "/d", "s3://b/out", "run-1"),
        "--result-json": str(tmp_path / "m.json"),
    }
    cmd = torchrun_command("coldstart.sft", 8, args)
    assert cmd[:5] == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=8",
    ]
    assert cmd[5:7] == ["-m", "coldstart.sft"]
    args = dict(zip(cmd[7::2], cmd[8::2], strict=False))
    assert args == {
        "--config": str(tmp_path / "c.json"),
        "--base-model": "/m",
        "--data": "/d",
        "--output": "s3://b/out",
        "--run-id": "run-1",
        "--run-name": "sft",
        "--result-json": str(tmp_path / "m.json"),
    }


def test_process_count(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(launcher, "cuda_device_count", lambda: 0)
    assert processes_to_launch() == 1  # CPU: in-process
    monkeypatch.setattr(launcher, "cuda_device_count", lambda: 4)
    assert processes_to_launch() == 4
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert processes_to_launch() == 1  # already a torchrun worker


def test_main_hands_multi_gpu_runs_to_torchrun(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(stage_runner, "processes_to_launch", lambda: 4)
    monkeypatch.setattr(
        stage_runner, "run_under_torchrun", lambda *a: calls.append(a) or {"sft/global_step": 1.0}
    )
    cfg = tiny_config(tmp_path)
    model, data = tmp_path / "m", tmp_path / "d"  # inputs exist: the runner digests their bytes
    for folder in (model, data):
        folder.mkdir()
        (folder / "x").write_text(folder.name)
    out = str(tmp_path / "out")
    assert cli.main(cfg, str(model), str(data), out, "r") == {"sft/global_step": 1.0}
    args = stage_args(str(model), str(data), out, "r")
    assert calls == [("coldstart.sft", cfg, args, 4, RESULT_FLAG)]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_torchrun_workers_train_one_model_on_cpu(tmp_path, tiny_model_dir, sft_dir):
    experiment = f"ddp-{uuid.uuid4().hex[:6]}"
    cfg = tiny_config(
        tmp_path,
        sft={
            "max_steps": 3,
            "save_steps": 3,
            "per_device_train_batch_size": 2,
            "global_batch_size": 4,
            "logging_steps": 1,
        },
        tracking={"experiment": experiment, "system_metrics": False},
    )
    out = tmp_path / "model"
    metrics = run_under_torchrun(
        cfg, str(tiny_model_dir), str(sft_dir), str(out), "ddp-run", nproc=2
    )
    assert metrics["sft/global_step"] == 3
    assert (out / "model.safetensors").is_file()
    client = MlflowClient(local_tracking_uri(cfg.output_dir))
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert [
        r.data.tags.get("coldstart.stage")
        for r in runs
        if r.data.tags.get("coldstart.role") == "stage"
    ] == ["sft"]


@pytest.mark.slow
def test_failed_workers_raise(tmp_path, tiny_model_dir):
    cfg = tiny_config(tmp_path)
    with pytest.raises(RuntimeError, match=r"torchrun exited with code"):
        run_under_torchrun(
            cfg, str(tiny_model_dir), str(tmp_path / "no-data"), str(tmp_path / "o"), "bad", nproc=1
        )
