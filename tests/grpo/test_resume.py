"""Resume after a real kill: SIGKILL the CLI once a checkpoint is complete, rerun, compare.

The killed-and-resumed run must continue from the saved step (not from 0), see the same data
order and RNG stream, and end with the same weights as a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import safetensors.torch

from tests.grpo.conftest import ROOT, TINY_CONFIG

SETTINGS = ("grpo.total_steps=8", "grpo.save_steps=2", "grpo.save_total_limit=2", "grpo.max_completion_length=10",
            "grpo.rollout_batch_size=4", "grpo.update_batch_size=2", "grpo.num_generations=2", "grpo.kl_coef=0.02",
            "grpo.micro_batch_size=4", "grpo.reward_weights={accuracy: 1.0, format: 1.0}",
            # Rewards must not depend on the machine's load: an answer check cut off at its time
            # bound scores 0 in one run and not in the other (a 2-core CI under load).
            "grpo.reward_timeout_s=60", "grpo.reward_batch_deadline_s=null")  # fmt: skip


def cli_command(tiny_assets, out, tmp_path) -> list[str]:
    sets = [arg for s in (*SETTINGS, f"output_dir={tmp_path / 'runs'}") for arg in ("--set", s)]
    return [sys.executable, "-m", "coldstart.grpo", "--config", str(TINY_CONFIG), *sets, "--run-id", "resume-test",
            "--init-model", str(tiny_assets["model"]), "--data", str(tiny_assets["rl"]), "--output", str(out)]  # fmt: skip


def env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "COLDSTART_LOG_LEVEL": "INFO",
    }


@pytest.mark.slow
def test_kill_after_checkpoint_then_resume(tiny_assets, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(cli_command(tiny_assets, out, tmp_path), cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    marker = out / "checkpoints" / "resume-test" / "checkpoint-2" / "COMPLETE"
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists(), (
        "the run finished before the kill; nothing was tested"
    )

    rerun = subprocess.run(
        cli_command(tiny_assets, out, tmp_path),
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = [line for line in rerun.stderr.splitlines() if "resumed from" in line]
    assert resumed, rerun.stderr[-3000:]
    resumed_step = int(resumed[0].rsplit("step", 1)[1])
    assert 2 <= resumed_step < 8
    history = json.loads((out / "grpo_history.json").read_text())
    assert [h["step"] for h in history] == list(
        range(1, 9)
    )  # steps before the kill come from the checkpoint

    # The same run, never interrupted, in a process like the first (not in this one: earlier
    # tests may have changed torch's global state, e.g. its thread count), ends the same.
    straight_out = tmp_path / "straight"
    done = subprocess.run(cli_command(tiny_assets, straight_out, tmp_path), cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    straight_history = json.loads((straight_out / "grpo_history.json").read_text())
    for h in (*history, *straight_history):
        assert h["reward/timeouts"] == 0, h
    for key in (
        "completions/mean_length",
        "kl",
        "loss",
    ):  # sampled tokens, hence the RNG stream, agree
        assert [h[key] for h in straight_history] == [h[key] for h in history], key
    a = safetensors.torch.load_file(out / "model.safetensors")
    b = safetensors.torch.load_file(straight_out / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, worst
