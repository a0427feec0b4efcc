"""A real kill (SIGKILL of the training process) and a rerun with the same output directory.

The rerun must resume from the last finished checkpoint, take only the remaining steps, and end
with the log history of an uninterrupted run: every step logged once, with the same losses
(CPU, one thread: the data order, RNG and optimizer state are restored exactly).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coldstart.sft.checkpointing import last_local_checkpoint
from tests.conftest import tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

STEPS, SAVE_EVERY = 30, 5
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def _command(config: Path, model: Path, data: Path, out: Path, metrics: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "coldstart.sft",
        "--config",
        str(config),
        "--base-model",
        str(model),
        "--data",
        str(data),
        "--output",
        str(out),
        "--result-json",
        str(metrics),
        "--run-id",
        "resume-test",
    ]


def _run(cmd: list[str], log: Path) -> None:
    with log.open("w") as sink:
        subprocess.run(cmd, env=ENV, stdout=sink, stderr=subprocess.STDOUT, check=True, timeout=600)


def _kill_after_first_checkpoint(cmd: list[str], ckpt_dir: Path, log: Path) -> int:
    """Start training, SIGKILL it as soon as a finished checkpoint exists; returns that step."""
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, env=ENV, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while last_local_checkpoint(ckpt_dir) is None:
                assert proc.poll() is None, (
                    f"training exited ({proc.returncode}) before its first checkpoint: {log}"
                )
                assert time.monotonic() < deadline, "no checkpoint within 300 s"
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return int(last_local_checkpoint(ckpt_dir).name.split("-")[1])


def _history(out: Path) -> list[tuple[int, float]]:
    state = json.loads(
        (
            out / "checkpoints" / "resume-test" / f"checkpoint-{STEPS}" / "trainer_state.json"
        ).read_text()
    )
    return [(e["step"], e["loss"]) for e in state["log_history"] if "loss" in e]


def test_killed_run_resumes_without_repeating_steps(tmp_path, tiny_model_dir, sft_dir):
    sft = {
        "max_steps": STEPS,
        "save_steps": SAVE_EVERY,
        "save_total_limit": 2,
        "keep_checkpoints": True,
        "logging_steps": 1,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
    }
    cfg = tiny_config(tmp_path, sft=sft, tracking={"system_metrics": False})
    config = tmp_path / "config.yaml"
    config.write_text(cfg.to_json())
    out, ref = tmp_path / "killed", tmp_path / "reference"

    killed_at = _kill_after_first_checkpoint(
        _command(config, tiny_model_dir, sft_dir, out, tmp_path / "m0.json"),
        out / "checkpoints" / "resume-test",
        tmp_path / "killed.log",
    )
    assert not (out / "model.safetensors").exists(), "the process was killed before the end"
    assert 0 < killed_at < STEPS

    _run(
        _command(config, tiny_model_dir, sft_dir, out, tmp_path / "m1.json"),
        tmp_path / "resumed.log",
    )
    metrics = json.loads((tmp_path / "m1.json").read_text())
    assert metrics["sft/resumed_from_step"] == killed_at
    assert metrics["sft/steps_run"] == STEPS - killed_at  # only the missing steps were taken
    assert metrics["sft/global_step"] == STEPS
    assert (out / "model.safetensors").is_file()

    resumed = _history(out)
    assert [s for s, _ in resumed] == list(range(1, STEPS + 1))  # each step logged exactly once

    _run(
        _command(config, tiny_model_dir, sft_dir, ref, tmp_path / "m2.json"),
        tmp_path / "reference.log",
    )
    reference = _history(ref)
    assert [s for s, _ in reference] == [s for s, _ in resumed]
    # Same data order, RNG, optimizer and scheduler state after the resume: the same losses.
    assert [loss for _, loss in resumed] == pytest.approx([loss for _, loss in reference], rel=1e-4)
