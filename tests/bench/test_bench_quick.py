"""The benches in bench/: their --quick runs write results of the expected shape, and their pure helpers.

The quick runs are smoke runs (CI): no timing or ordering is asserted, only that each bench goes
through the real stages and writes its JSON with the keys the README and later comparisons read.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
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
    results = json.loads(out.read_text())
    assert set(results["sets"]) == {"quick"}
    report = results["sets"]["quick"]
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
    table = report["summary"]["table"]
    assert all({"mean", "std", "over_prior"} == set(table[m]) for m in VARIANTS)
    assert all(len(c["ci95"]) == 2 for c in report["summary"]["claims"])
    assert report["summary"]["checks"] and report["seed_set"] == "quick"
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
    assert 0.0 <= seed["prior_accuracy"] <= 1.0 and seed["sft_rows"] >= 1
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
    for name, stage in stages.items():
        assert {"wall_s", "mlflow_stage_s", "peak_rss_mb", "cpu_s", "task_dir"} <= set(stage)
        assert stage["wall_s"] >= 0 and stage["peak_rss_mb"] > 0, name
    for name in ("data_prep", "base_model", "sft", "grpo", "eval"):
        # (resolve_config may end within one sampling interval: seen once, 0 s)
        assert stages[name]["wall_s"] > 0, name
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


def test_ablation_claims_need_the_margin_in_every_seed():
    bench = load_bench("ablation")
    criteria = bench.Criteria(min_margin=0.03, max_std=0.10, min_over_prior=0.20)

    def seed(base, sft, rl, sft_rl, prior=0.25):
        return {
            "accuracy": {"base": base, "SFT": sft, "RL": rl, "SFT+RL": sft_rl},
            "prior_accuracy": prior,
        }

    holds = bench.summarize([seed(0.1, 0.6, 0.3, 0.7), seed(0.0, 0.65, 0.35, 0.75)], criteria)
    assert holds["ordering_holds"] and holds["all_criteria_hold"]
    assert holds["table"]["SFT+RL"]["mean"] == pytest.approx(0.725)
    assert holds["table"]["SFT+RL"]["over_prior"] == pytest.approx(0.475)
    one_seed_short = bench.summarize(
        [seed(0.1, 0.6, 0.3, 0.7), seed(0.0, 0.65, 0.35, 0.67)], criteria
    )
    assert [c["holds"] for c in one_seed_short["claims"]] == [False, True, True]  # +2 < 3 points
    assert not one_seed_short["ordering_holds"]
    near_prior = bench.summarize([seed(0.1, 0.3, 0.2, 0.4), seed(0.1, 0.3, 0.2, 0.4)], criteria)
    assert (
        near_prior["ordering_holds"] and not near_prior["all_criteria_hold"]
    )  # 15 points over prior
    spread = bench.summarize([seed(0.0, 0.4, 0.2, 0.5), seed(0.0, 0.8, 0.2, 0.9)], criteria)
    assert spread["ordering_holds"] and not spread["all_criteria_hold"]  # std 28 points


def test_ablation_paired_interval_is_the_t_interval():
    bench = load_bench("ablation")
    diffs = [0.05, 0.07, 0.04, 0.08, 0.06]
    lo, hi = bench.paired_interval(diffs)
    half = 2.776 * statistics.stdev(diffs) / 5**0.5  # t(0.975, 4)
    assert (lo, hi) == pytest.approx((0.06 - half, 0.06 + half))
    assert bench.t_quantile(11) == 2.228  # rounded down to a tabulated df: wider, never narrower
    assert bench.t_quantile(100) == 1.96


def test_ablation_seed_sets_and_results_merge(tmp_path):
    bench = load_bench("ablation")
    cfg = bench.DEFAULT_CONFIG
    tuning = bench.load_bench_config(cfg, quick=False, overrides=[], seeds=None)
    held = bench.load_bench_config(cfg, quick=False, overrides=[], seeds=None, heldout=True)
    assert tuning.seed_set == "tuning" and held.seed_set == "held_out"
    assert not set(tuning.seeds) & set(held.seeds)
    assert tuning.digest == held.digest  # one configuration, two seed sets
    out = tmp_path / "ablation.json"
    first = bench.merge_results(out, {"config_digest": "a", "seed_set": "tuning"})
    out.write_text(json.dumps(first))
    both = bench.merge_results(out, {"config_digest": "a", "seed_set": "held_out"})
    assert set(both["sets"]) == {"tuning", "held_out"}
    out.write_text(json.dumps(both))
    other = bench.merge_results(out, {"config_digest": "b", "seed_set": "held_out"})
    assert set(other["sets"]) == {"held_out"}  # a set of another configuration is not kept


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
