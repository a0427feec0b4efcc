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

from coldstart.grpo.stage import GRPOPaths, run_grpo
from tests.grpo.conftest import ROOT, TINY_CONFIG, tiny_config

SETTINGS = ("grpo.total_steps=8", "grpo.save_steps=2", "grpo.save_total_limit=2", "grpo.max_completion_length=10",
            "grpo.rollout_batch_size=4", "grpo.update_batch_size=2", "grpo.num_generations=2", "grpo.kl_coef=0.02",
            "grpo.micro_batch_size=4", "grpo.reward_weights={accuracy: 1.0, format: 1.0}")  # fmt: skip


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
@pytest.mark.xfail(
    strict=True,
    reason="known regression since the stage runner/engine redesign (session 21): after a SIGKILL "
    "and resume, KL differs from the uninterrupted run by ~1e-5 relative and the final weights by "
    "3.9e-6 (bound 1e-6); cause not found yet. strict: this fails CI once the drift is fixed.",
)
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

    # the same run, never interrupted, ends with the same weights
    cfg = tiny_config(*SETTINGS, f"output_dir={tmp_path / 'runs'}")
    straight = GRPOPaths(
        tiny_assets["model"],
        tiny_assets["rl"],
        tmp_path / "straight",
        str(tmp_path / "straight" / "checkpoints"),
        tmp_path / "scratch",
    )
    _, straight_history = run_grpo(cfg, straight)
    for key in (
        "completions/mean_length",
        "kl",
        "loss",
    ):  # sampled tokens, hence the RNG stream, agree
        assert [h[key] for h in straight_history] == [h[key] for h in history], key
    a = safetensors.torch.load_file(out / "model.safetensors")
    b = safetensors.torch.load_file(tmp_path / "straight" / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, worst
