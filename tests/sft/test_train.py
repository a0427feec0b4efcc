"""The stage end to end on a few steps: model dir, what changed, MLflow, named input errors."""

import json
import shutil
import uuid
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from coldstart.common.config import ConfigError
from coldstart.common.models import ModelLoadError, load_model, load_processor
from coldstart.common.tracking import local_tracking_uri
from coldstart.sft.cli import main
from tests.conftest import tiny_config

pytestmark = pytest.mark.timeout(600)

QUICK = {
    "max_steps": 4,
    "save_steps": 2,
    "logging_steps": 1,
    "per_device_train_batch_size": 2,
    "learning_rate": 1e-3,
}


def _cfg(tmp_path: Path, **sft):
    tracking = {"experiment": f"sft-{uuid.uuid4().hex[:8]}", "system_metrics": False}
    return tiny_config(tmp_path, sft={**QUICK, **sft}, tracking=tracking)


def _changed(before: dict, after: dict, part: str) -> bool:
    keys = [k for k in before if part in k]
    assert keys, part
    return any(not torch.equal(before[k], after[k]) for k in keys)


def test_sft_writes_a_loadable_model_and_logs_to_mlflow(tmp_path, tiny_model_dir, sft_dir):
    cfg = _cfg(tmp_path, eval_steps=2, keep_checkpoints=True)
    out = tmp_path / "model"
    metrics = main(cfg, tiny_model_dir, sft_dir, out, "run-1")

    assert metrics["sft/global_step"] == 4 and metrics["sft/steps_run"] == 4
    assert metrics["sft/resumed_from_step"] == 0
    assert {
        "sft/train/loss_first",
        "sft/train/loss_last",
        "sft/eval/loss",
        "sft/train/tokens_per_second_mean",
    } <= set(metrics)
    # A plain model dir: weights, processor, chat template, config; loads as the next stage loads it.
    for name in (
        "model.safetensors",
        "config.json",
        "processor_config.json",
        "tokenizer.json",
        "chat_template.jinja",
    ):
        assert (out / name).is_file(), name
    assert "{% generation %}" in (out / "chat_template.jinja").read_text().replace(
        "{%- generation -%}", "{% generation %}"
    )
    assert json.loads((out / "coldstart_config.json").read_text())["sft"]["max_steps"] == 4
    load_model(out), load_processor(out)
    assert sorted(p.name for p in (out / "checkpoints" / "run-1").iterdir()) == [
        "checkpoint-2",
        "checkpoint-4",
        "inputs_digest.json",  # whose checkpoints these are: a run of other inputs is refused
    ]
    assert (out / "checkpoints" / "run-1" / "checkpoint-4" / "coldstart_config.json").is_file()
    # The vision tower is frozen; the merger and the language model trained (keys in the
    # original Qwen2.5-VL checkpoint layout, as vLLM reads them).
    before, after = (
        load_file(tiny_model_dir / "model.safetensors"),
        load_file(out / "model.safetensors"),
    )
    assert not _changed(before, after, "visual.blocks.")
    assert _changed(before, after, "visual.merger.") and _changed(before, after, "model.layers.")

    client = MlflowClient(local_tracking_uri(cfg.output_dir))
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    (run,) = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("coldstart.stage") == "sft"
    ]
    history = {
        k: [m.step for m in client.get_metric_history(run.info.run_id, k)]
        for k in (
            "sft/train/loss",
            "sft/train/learning_rate",
            "sft/train/grad_norm",
            "sft/train/tokens_per_second",
        )
    }
    assert all(steps == [1, 2, 3, 4] for steps in history.values()), history
    assert [m.step for m in client.get_metric_history(run.info.run_id, "sft/eval/loss")][:2] == [
        2,
        4,
    ]
    assert run.data.params["sft.learning_rate"] == "0.001"
    assert "loss_curve.png" in [
        Path(a.path).name for a in client.list_artifacts(run.info.run_id, "sft")
    ]


def test_lora_run_saves_a_merged_plain_model(tmp_path, tiny_model_dir, sft_dir):
    out = tmp_path / "model"
    metrics = main(_cfg(tmp_path, lora_r=4, max_steps=2), tiny_model_dir, sft_dir, out, "run-lora")
    assert metrics["sft/params/trainable"] < metrics["sft/params/total"] / 2
    weights = load_file(out / "model.safetensors")
    assert not any("lora_" in k or "base_layer" in k or "modules_to_save" in k for k in weights)
    assert set(weights) == set(load_file(tiny_model_dir / "model.safetensors"))
    assert not (out / "checkpoints").exists()  # keep_checkpoints: false (the default)


def test_model_dir_without_processor_is_named(tmp_path, tiny_model_dir, sft_dir):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    (bare / "processor_config.json").unlink()
    with pytest.raises(ModelLoadError, match=rf"{bare}: no image processor"):
        main(_cfg(tmp_path), bare, sft_dir, tmp_path / "model", "run-bare")


def test_global_batch_mismatch_is_named(tmp_path, tiny_model_dir, sft_dir):
    with pytest.raises(
        ConfigError, match=r"sft.global_batch_size=64 but 1 devices x per_device_train_batch_size=2"
    ):
        main(
            _cfg(tmp_path, global_batch_size=64),
            tiny_model_dir,
            sft_dir,
            tmp_path / "model",
            "run-gb",
        )
