"""The benches in bench/: their --quick runs write results of the expected shape, and their pure helpers.

The quick runs are smoke runs (CI): no timing or ordering is asserted, only that each bench goes
through the real stages and writes its JSON with the keys the README and later comparisons read.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = {"base", "SFT", "RL", "SFT+RL"}


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def run_bench(script: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


# --------------------------------------------------------------------------- quick runs


@pytest.mark.slow
def test_ablation_quick_writes_the_table(tmp_path):
    out = tmp_path / "ablation.json"
    done = run_bench("ablation.py", "--quick", "--output", str(out))
    report = json.loads(out.read_text())
    assert {
        "config",
        "config_digest",
        "seeds",
        "summary",
        "per_seed",
        "total_s",
        "time",
        "base_kind",
        "load_avg_before",
        "torch_threads",
    } <= set(report)
    assert report["quick"] is True and len(report["seeds"]) == 1
    assert set(report["summary"]["table"]) >= VARIANTS  # + the answer-prior reference row
    assert all({"mean", "std"} == set(row) for row in report["summary"]["table"].values())
    assert [c["claim"] for c in report["summary"]["claims"]] == [
        "SFT+RL > SFT",
        "SFT+RL > RL",
        "RL > base",
    ]
    (seed,) = report["per_seed"]
    assert set(seed["accuracy"]) == VARIANTS and all(
        0.0 <= a <= 1.0 for a in seed["accuracy"].values()
    )
    assert {"data_prep", "base_model", "sft", "grpo", "grpo_from_base", "eval"} <= set(
        seed["timings_s"]
    )
    assert set(seed["grpo_reward"]) == {"SFT+RL", "RL"}
    assert set(seed["gain_over_constant"]) == VARIANTS and set(seed["top_answers"]) == VARIANTS
    assert 0.0 <= seed["prior_accuracy"] <= 1.0
    assert out.with_suffix(".md").read_text().startswith("# Ablation in miniature")
    assert "| SFT+RL |" in done.stdout


@pytest.mark.slow
def test_pipeline_wallclock_quick_times_every_stage(tmp_path):
    out = tmp_path / "wallclock.json"
    done = run_bench("pipeline_wallclock.py", "--quick", "--output", str(out))
    report = json.loads(out.read_text())
    assert {
        "total_s",
        "tasks_s",
        "orchestration_s",
        "dominant_stage",
        "peak_rss_total_mb",
        "stages",
        "config_digest",
        "load_avg_before",
        "time",
    } <= set(report)
    stages = {s["task"]: s for s in report["stages"]}
    assert {"data_prep", "base_model", "sft", "grpo", "eval"} <= set(stages)
    for stage in stages.values():
        assert {"wall_s", "mlflow_stage_s", "peak_rss_mb", "cpu_s", "task_dir"} <= set(stage)
        assert stage["wall_s"] > 0 and stage["peak_rss_mb"] > 0
    assert all(
        stages[s]["mlflow_stage_s"] is not None for s in ("data_prep", "sft", "grpo", "eval")
    )
    assert report["dominant_stage"] in stages
    assert "| **total** |" in done.stdout


# --------------------------------------------------------------------------- helpers (fast)


def test_wallclock_names_kfp_tasks_from_their_command_line():
    bench = load_bench("pipeline_wallclock")
    executor_input = json.dumps(
        {
            "inputs": {"parameterValues": {"run_name": "grpo_from_base"}},
            "outputs": {"outputFile": "/root/run-1/grpo-op-2/executor_output.json"},
        }
    )
    cmd = [
        "python",
        "-m",
        "kfp.dsl.executor_main",
        "--component_module_path",
        "/tmp/x.py",
        "--executor_input",
        executor_input,
        "--function_to_execute",
        "grpo_op",
    ]
    assert bench.describe_task(cmd) == ("grpo_from_base", "grpo_op", "grpo-op-2")
    assert bench.describe_task([*cmd[:-1], "sft_op"])[0] == "sft"
    shell = ["sh", "-c", 'python3 -m kfp.dsl.executor_main "$@"', "--function_to_execute", "x"]
    assert bench.describe_task(shell) is None  # the sh wrapper is not the task's process


def test_ablation_claims_need_every_seed_and_the_margin():
    bench = load_bench("ablation")

    def seed(base, sft, rl, sft_rl):
        return {"accuracy": {"base": base, "SFT": sft, "RL": rl, "SFT+RL": sft_rl}}

    holds = bench.summarize(
        [seed(0.1, 0.4, 0.3, 0.5), seed(0.0, 0.45, 0.35, 0.55)], min_margin=0.03
    )
    assert holds["ordering_holds"] and holds["table"]["SFT+RL"]["mean"] == pytest.approx(0.525)
    one_seed_fails = bench.summarize(
        [seed(0.1, 0.4, 0.3, 0.5), seed(0.0, 0.45, 0.35, 0.44)], min_margin=0.03
    )
    assert [c["holds"] for c in one_seed_fails["claims"]] == [False, True, True]
    too_small = bench.summarize(
        [seed(0.1, 0.4, 0.3, 0.41), seed(0.1, 0.4, 0.3, 0.41)], min_margin=0.03
    )
    assert not too_small["claims"][0]["holds"] and not too_small["ordering_holds"]


def test_ablation_config_validates_and_quick_changes_the_digest():
    bench = load_bench("ablation")
    full = bench.load_bench_config(bench.DEFAULT_CONFIG, quick=False, overrides=[], seeds=None)
    quick = bench.load_bench_config(bench.DEFAULT_CONFIG, quick=True, overrides=[], seeds=None)
    assert len(full.seeds) >= 3 and len(quick.seeds) == 1
    assert full.digest != quick.digest
    assert (
        full.digest
        == bench.load_bench_config(
            bench.DEFAULT_CONFIG, quick=False, overrides=[], seeds=None
        ).digest
    )
    cfg = bench.seed_config(full, 7, Path("/tmp/x"))
    assert all(v == 7 for v in (cfg.model.tiny.seed, cfg.data.seed, cfg.sft.seed, cfg.grpo.seed))
