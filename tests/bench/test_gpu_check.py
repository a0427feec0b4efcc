"""bench/gpu_check.py: the dry run goes through every part on the CPU, parts are time-boxed and
budgeted in their own processes, and the 3B shape is Qwen2.5-VL-3B's.

The dry run is the GPU check's own code (same parts, same stage entry points, toy sizes, CPU):
what fails here would fail in the short GPU run. No timing is asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import gpu_check
from bench.gpu_parts import DRY_RUN, NOT_ON_DEVICE, PAPER_3B, model_config
from bench.sft_throughput import model_flops_per_token

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_dry_run_goes_through_every_part_and_writes_the_report(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out", str(out), "--dry-run",
           "--budget-s", "1500", "--work", str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    report = json.loads((out / "gpu_check.json").read_text())
    parts = report["parts"]
    assert done.returncode == 0, {n: (p["status"], p["error"]) for n, p in parts.items()}
    assert list(parts) == ["setup", "sft", "sft_zero2", "grpo", "smoke"]
    assert all(p["status"] == "ok" for p in parts.values())
    for part in parts.values():  # nothing the GPU machine lacks (and we do not carry) was imported
        assert part["result"]["process"]["imported_not_on_device"] == []
        assert part["result"]["process"]["device"] == "cpu"
    for name in ("sft", "sft_zero2"):
        result = parts[name]["result"]["result"]
        assert result["seq_len"] == DRY_RUN.sft_seq_len  # every row cut to sft.max_length
        assert result["timed_steps"] == DRY_RUN.sft_steps and result["tokens_per_s"] > 0
        assert result["deepspeed"] is False and "mfu" not in result  # no ZeRO, no MFU on a CPU
    assert parts["sft_zero2"]["result"]["settings"]["deepspeed"] == "zero2"
    steps = parts["grpo"]["result"]["steps"]
    assert [s["step"] for s in steps] == [1, 2]
    assert all(s["completion_tokens"] > 0 and s["update_s"] > 0 for s in steps)
    smoke = parts["smoke"]["result"]
    for stage in ("data_prep", "sft", "grpo", "eval", "sft_zero2", "grpo_zero2"):
        assert smoke[stage]["status"] == "ok", stage
    assert {"eval/sft/synthetic/score", "eval/sft_rl/synthetic/score"} <= set(
        smoke["eval"]["metrics"]
    )
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# GPU check (dry run, CPU)")
    assert "| sft_zero2 | False | 128 |" in md and "| - |" in md  # no MFU on a CPU
    assert "===== grpo =====" in (out / "gpu_check.log").read_text()


def test_a_part_past_its_time_box_is_stopped_and_what_needs_it_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(gpu_check.BOX_S, "setup", 2 / gpu_check.DRY_RUN_BOX_FACTOR)
    args = gpu_check.parse_args(
        ["--out", str(tmp_path), "--dry-run", "--parts", "setup,sft,grpo", "--budget-s", "300"]
    )
    outcomes = gpu_check.run_parts(args, tmp_path)
    assert outcomes["setup"].status == "timeout" and "time box of 2 s" in outcomes["setup"].error
    assert outcomes["setup"].seconds < 60  # killed (SIGTERM, then SIGKILL), not waited for
    for name in ("sft", "grpo"):
        assert outcomes[name].status == "skipped" and outcomes[name].error == "setup did not finish"


def test_stopping_the_driver_stops_its_running_part(tmp_path):
    """Parts run in their own session (so a time box can kill their whole group): a driver
    stopped by SIGTERM (the device tool's time limit) must not leave one holding the GPU."""
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out", str(tmp_path / "out"),
           "--dry-run", "--parts", "setup", "--work", str(tmp_path)]  # fmt: skip
    driver = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children = Path(f"/proc/{driver.pid}/task/{driver.pid}/children")
    deadline = time.monotonic() + 120
    while not children.read_text().split() and time.monotonic() < deadline:
        time.sleep(0.2)
    (worker,) = (int(pid) for pid in children.read_text().split())
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=60) == 143
    assert not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text()


def test_no_part_starts_once_the_budget_is_spent(tmp_path):
    args = gpu_check.parse_args(["--out", str(tmp_path), "--dry-run", "--budget-s", "5"])
    outcomes = gpu_check.run_parts(args, tmp_path)
    assert {o.status for o in outcomes.values()} == {"skipped"}
    assert "global budget spent" in outcomes["setup"].error
    assert not list(tmp_path.glob("*.log"))  # no process was started


def test_the_report_renders_failed_and_skipped_parts(tmp_path):
    outcomes = {
        "setup": gpu_check.PartOutcome("failed", 3.0, {}, "OSError: disk full"),
        "sft": gpu_check.PartOutcome("skipped", 0.0, {}, "setup did not finish"),
    }
    args = gpu_check.parse_args(["--out", str(tmp_path), "--parts", "setup,sft"])
    report = gpu_check.build_report(args, outcomes, 3.5)
    md = gpu_check.markdown(report)
    assert "| setup | failed | 3 | OSError: disk full |" in md
    assert "| sft | skipped | 0 | setup did not finish |" in md
    assert report["device"].startswith("unknown") and report["peak_tflops"] == 989.0


def test_the_3b_shape_is_qwen25_vl_3b_and_the_flops_count_its_language_model():
    from transformers import Qwen2_5_VLForConditionalGeneration

    from coldstart.common.tiny_model import build_tokenizer

    config = model_config(PAPER_3B, build_tokenizer(1024))
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    params = {n: p.numel() for n, p in model.named_parameters()}  # tied lm_head: counted once
    total = sum(params.values())
    vision = sum(v for n, v in params.items() if ".visual." in f".{n}")
    assert round(total / 1e9, 2) == 3.75  # Qwen2.5-VL-3B-Instruct: 3.75B parameters
    assert config.text_config.vocab_size == 151936 and config.tie_word_embeddings
    # 6N at sequence length 0 is the weights' share: the LM's matrices, embeddings once (tied).
    n_formula = model_flops_per_token(config, 0) / 6
    assert n_formula == pytest.approx(total - vision, rel=2e-3)  # norms and biases aside


def test_packages_the_gpu_machine_lacks_are_not_in_the_wheel_list():
    pins = (ROOT / "bench" / "gpu_wheels.txt").read_text().splitlines()
    names = {line.split("==")[0].lower() for line in pins if "==" in line}
    assert not names & set(NOT_ON_DEVICE)
    assert {"pydantic", "datasets", "deepspeed", "math-verify", "boto3"} <= names
