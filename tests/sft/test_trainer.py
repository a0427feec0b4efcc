"""Resume restores the checkpoint's weights (full fine-tune and LoRA): a run stopped at a
checkpoint and continued matches an uninterrupted run loss for loss.

Full fine-tunes guard against transformers#43701 (Trainer resume ignoring the VL key renaming,
which silently continues from the base weights); see components/sft/trainer.py.
"""

import json
from pathlib import Path

import pytest

from coldstart.sft.cli import main
from tests.conftest import tiny_config

pytestmark = pytest.mark.timeout(600)

# Constant LR: a first run cut short at max_steps=2 has the same schedule as the full run.
STEADY = {
    "save_steps": 2,
    "keep_checkpoints": True,
    "logging_steps": 1,
    "per_device_train_batch_size": 2,
    "learning_rate": 2e-3,
    "lr_scheduler_type": "constant",
    "warmup_ratio": 0.0,
}


def _losses(out: Path, run_id: str, step: int) -> list[float]:
    state = json.loads(
        (out / "checkpoints" / run_id / f"checkpoint-{step}" / "trainer_state.json").read_text()
    )
    return [e["loss"] for e in state["log_history"] if "loss" in e]


@pytest.mark.parametrize("lora_r", [0, 4], ids=["full", "lora"])
def test_resumed_run_matches_uninterrupted_run(tmp_path, tiny_model_dir, sft_dir, lora_r):
    def cfg(max_steps: int):
        return tiny_config(
            tmp_path,
            sft={**STEADY, "max_steps": max_steps, "lora_r": lora_r},
            tracking={"system_metrics": False},
        )

    stopped, reference = tmp_path / "stopped", tmp_path / "reference"
    main(cfg(2), tiny_model_dir, sft_dir, stopped, "run-1")
    resumed = main(cfg(4), tiny_model_dir, sft_dir, stopped, "run-1")  # the same run, retried
    assert (resumed["sft/resumed_from_step"], resumed["sft/steps_run"]) == (2, 2)
    main(cfg(4), tiny_model_dir, sft_dir, reference, "whole")
    assert _losses(stopped, "run-1", 4) == pytest.approx(_losses(reference, "whole", 4), rel=1e-4)


def test_rerun_of_a_finished_output_returns_its_result(tmp_path, tiny_model_dir, sft_dir):
    cfg = tiny_config(tmp_path, sft={**STEADY, "max_steps": 2}, tracking={"system_metrics": False})
    out = tmp_path / "out"
    first = main(cfg, tiny_model_dir, sft_dir, out, "once")
    weights = (out / "model.safetensors").stat().st_mtime_ns
    assert main(cfg, tiny_model_dir, sft_dir, out, "twice") == first
    assert (out / "model.safetensors").stat().st_mtime_ns == weights  # not retrained, not rewritten
    # Another training config in the same run resumes from its checkpoints (two more steps).
    longer = tiny_config(
        tmp_path, sft={**STEADY, "max_steps": 4}, tracking={"system_metrics": False}
    )
    more = main(longer, tiny_model_dir, sft_dir, out, "once")
    assert (more["sft/resumed_from_step"], more["sft/steps_run"], more["sft/global_step"]) == (
        2,
        2,
        4,
    )
    # Another run that shares the output starts from step 0; `sft.resume_from` asks for another's.
    other = tiny_config(
        tmp_path, sft={**STEADY, "max_steps": 3}, tracking={"system_metrics": False}
    )
    fresh = main(other, tiny_model_dir, sft_dir, out, "another-run")
    assert (fresh["sft/resumed_from_step"], fresh["sft/steps_run"]) == (0, 3)
    asked = tiny_config(
        tmp_path,
        sft={**STEADY, "max_steps": 5, "resume_from": str(out / "checkpoints" / "once")},
        tracking={"system_metrics": False},
    )
    taken = main(asked, tiny_model_dir, sft_dir, tmp_path / "elsewhere", "third-run")
    assert (taken["sft/resumed_from_step"], taken["sft/steps_run"]) == (4, 1)
