"""Checkpoints on S3 (moto server): published as they are written, and a new pod resumes from them."""

import shutil
import uuid

import pytest

from coldstart.common import checkpoints, storage
from coldstart.common.models import load_model
from coldstart.common.stage_runner import RESULT_FILE
from coldstart.sft.cli import main
from tests.conftest import tiny_config
from tests.servers import S3Env

pytestmark = pytest.mark.timeout(600)

STEADY = {
    "save_steps": 2,
    "save_total_limit": 1,
    "logging_steps": 1,
    "per_device_train_batch_size": 2,
    "lr_scheduler_type": "constant",
}


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    path = tmp_path / "scratch"
    monkeypatch.setenv("COLDSTART_SCRATCH", str(path))
    return path


def _cfg(tmp_path, max_steps, **top):
    tracking = {
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "experiment": f"s3-{uuid.uuid4().hex[:6]}",
        "system_metrics": False,
    }
    return tiny_config(tmp_path, sft={**STEADY, "max_steps": max_steps}, tracking=tracking, **top)


def test_s3_output_gets_checkpoints_and_model_and_a_new_pod_resumes(
    tmp_path, s3_env: S3Env, scratch, tiny_model_dir, sft_dir
):
    output = s3_env.uri("runs/sft-model")
    main(_cfg(tmp_path, 2), tiny_model_dir, sft_dir, output, "run-1")
    ckpt_root = storage.join(output, "checkpoints", "run-1")
    assert checkpoints.latest_complete_checkpoint(ckpt_root) == storage.join(
        ckpt_root, "checkpoint-2"
    )
    assert storage.exists(storage.join(output, "model.safetensors")) and storage.exists(
        storage.join(output, RESULT_FILE)
    )
    load_model(storage.materialize(output, tmp_path / "download"))

    # A new pod of the same run: empty local disk, the remote checkpoints only. A longer plan
    # resumes from them.
    shutil.rmtree(scratch)
    metrics = main(_cfg(tmp_path, 4), tiny_model_dir, sft_dir, output, "run-1")
    assert (metrics["sft/resumed_from_step"], metrics["sft/steps_run"]) == (2, 2)
    # Pruned to save_total_limit=1 complete checkpoint on S3, the newest.
    assert checkpoints.complete_checkpoints(ckpt_root) == [storage.join(ckpt_root, "checkpoint-4")]


def test_s3_output_dir_publishes_a_local_runs_checkpoints_per_pipeline_run(
    tmp_path, s3_env: S3Env, scratch, tiny_model_dir, sft_dir, monkeypatch
):
    """The kfp component writes to a local artifact path; with output_dir on S3 its checkpoints
    go to <output_dir>/<run id>/sft/checkpoints, where a retried pod of the same run finds them."""
    cfg = _cfg(tmp_path, 2, output_dir=s3_env.uri("pipeline-root"))
    main(cfg, tiny_model_dir, sft_dir, tmp_path / "artifact", "kfp-run-7")
    root = s3_env.uri("pipeline-root/kfp-run-7/sft/checkpoints")
    assert checkpoints.latest_complete_checkpoint(root) == storage.join(root, "checkpoint-2")
    # The retried pod: a fresh artifact dir, same run id, a longer plan -> resumes from S3.
    cfg4 = _cfg(tmp_path, 4, output_dir=s3_env.uri("pipeline-root"))
    metrics = main(cfg4, tiny_model_dir, sft_dir, tmp_path / "artifact-retry", "kfp-run-7")
    assert metrics["sft/resumed_from_step"] == 2
    # Another pipeline run with the same output_dir starts from step 0, under its own run id; the
    # id comes from KFP_RUN_ID when the pipeline passes none (never an empty path segment).
    monkeypatch.setenv("KFP_RUN_ID", "kfp-run-8")
    metrics = main(cfg4, tiny_model_dir, sft_dir, tmp_path / "artifact-8", "")
    assert metrics["sft/resumed_from_step"] == 0
    root = s3_env.uri("pipeline-root/kfp-run-8/sft/checkpoints")
    assert checkpoints.latest_complete_checkpoint(root) == storage.join(root, "checkpoint-4")
