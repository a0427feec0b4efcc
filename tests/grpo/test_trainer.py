"""The stage end to end on the tiny model, a few steps each: what changes, what is logged, what is saved."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from coldstart.common.errors import InputError
from coldstart.common.models import load_model
from coldstart.common.tracking import resolve_tracking_uri
from coldstart.grpo.cli import main
from coldstart.grpo.optimizer import updates_per_rollout
from coldstart.grpo.stage import GRPOPaths, run_grpo
from tests.grpo.conftest import tiny_config

FAST = ("grpo.total_steps=2", "grpo.max_completion_length=12", "grpo.rollout_batch_size=4",
        "grpo.update_batch_size=4", "grpo.num_generations=4", "grpo.micro_batch_size=6", "grpo.save_steps=1")  # fmt: skip
STEP_METRICS = (
    "grpo/reward/mean", "grpo/reward/std", "grpo/rewards/accuracy/mean", "grpo/rewards/format/mean",
    "grpo/frac_reward_zero_std", "grpo/kl", "grpo/clip_ratio/low_mean", "grpo/clip_ratio/high_mean",
    "grpo/clip_ratio/region_mean", "grpo/entropy", "grpo/completions/mean_length", "grpo/completions/max_length",
    "grpo/time/rollout_s", "grpo/time/update_s", "grpo/tokens_per_s", "grpo/loss", "grpo/grad_norm",
    "grpo/learning_rate", "grpo/reward/timeouts", "grpo/reward/too_big", "grpo/reward/verifier_errors",
)  # fmt: skip


def digit_reward(completions, **_):
    """Dense (varies within every group from the first step), so every update has a gradient."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


DENSE = {"reward_funcs": {"digits": digit_reward}, "reward_weights": {"digits": 1.0}}


def paths_for(tiny_assets, tmp_path) -> GRPOPaths:
    return GRPOPaths(
        tiny_assets["model"],
        tiny_assets["rl"],
        tmp_path / "out",
        str(tmp_path / "out" / "checkpoints"),
        tmp_path / "scratch",
    )


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def test_main_trains_logs_and_saves(tiny_assets, tmp_path):
    """KL on (a reference model is loaded) and two updates per rollout (the off-policy path)."""
    cfg = tiny_config(
        *FAST,
        "grpo.kl_coef=0.05",
        "grpo.update_batch_size=2",
        f"output_dir={tmp_path}",
        "tracking.register_model_name=coldstart-tiny-grpo",
    )
    assert updates_per_rollout(cfg.grpo) == 2
    out = tmp_path / "model"
    summary = main(
        cfg, str(tiny_assets["model"]), str(tiny_assets["rl"]), str(out), "run-1", "grpo"
    )
    assert summary["grpo/steps"] == 2

    before = load_model(tiny_assets["model"]).state_dict()
    after = load_model(out)
    assert changed(before, after), "no parameter changed"
    assert (out / "reward_curve.png").stat().st_size > 1000
    history = json.loads((out / "grpo_history.json").read_text())
    assert [h["step"] for h in history] == [1, 2]

    client = MlflowClient(resolve_tracking_uri(cfg))
    run = client.search_runs(client.get_experiment_by_name(cfg.tracking.experiment).experiment_id,
                             filter_string="tags.`coldstart.stage` = 'grpo'")[0]  # fmt: skip
    missing = [m for m in STEP_METRICS if m not in run.data.metrics]
    assert not missing, missing
    assert run.data.metrics["grpo/data/dropped_too_long"] == 0  # logged once, at load
    reward_steps = [m.step for m in client.get_metric_history(run.info.run_id, "grpo/reward/mean")]
    assert len(reward_steps) >= 2 and 0 not in reward_steps  # the summary lands at the last step
    (version,) = client.search_model_versions("name='coldstart-tiny-grpo'")
    assert version.run_id == run.info.run_id
    assert run.data.metrics["grpo/kl"] >= 0
    assert "reward_curve.png" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_frozen_vision_tower_keeps_its_blocks(tiny_assets, tmp_path):
    cfg = tiny_config(
        *FAST, "grpo.freeze_vision_tower=true", "grpo.kl_coef=0", "grpo.learning_rate=1e-2"
    )
    run_grpo(cfg, paths_for(tiny_assets, tmp_path), **DENSE)
    before = load_model(tiny_assets["model"]).state_dict()
    diff = changed(before, load_model(tmp_path / "out"))
    assert not any(".visual.blocks." in n or ".visual.patch_embed." in n for n in diff)
    assert any(".visual.merger." in n for n in diff) and any("language_model" in n for n in diff)


def test_lora_trains_adapters_and_saves_a_merged_model(tiny_assets, tmp_path):
    cfg = tiny_config(*FAST, "grpo.lora_r=4", "grpo.kl_coef=0.05", "grpo.learning_rate=1e-2")
    _, history = run_grpo(cfg, paths_for(tiny_assets, tmp_path), **DENSE)
    assert "kl" in history[-1]  # the reference is the policy with its adapters off
    before = load_model(tiny_assets["model"]).state_dict()
    diff = changed(before, load_model(tmp_path / "out"))  # a plain model dir, adapters merged in
    # adapters merged into the language model; the merger trained whole (train_merger, as in SFT)
    assert diff and all("language_model" in n or ".visual.merger." in n for n in diff)


def test_custom_rewards_and_weights(tiny_assets, tmp_path):
    calls = []

    def length_reward(completions, answer, **columns):
        calls.append(set(columns))
        return [len(c) / 100 for c in completions]

    cfg = tiny_config(*FAST, "grpo.kl_coef=0", "grpo.total_steps=1")
    _, history = run_grpo(cfg, paths_for(tiny_assets, tmp_path), reward_funcs={"length": length_reward},
                          reward_weights={"length": 2.0})  # fmt: skip
    assert {"id", "problem", "category"} <= calls[0] and "images" not in calls[0]
    assert history[0]["reward/mean"] == pytest.approx(2 * history[0]["rewards/length/mean"])


def test_checkpoints_are_keyed_by_the_run(tiny_assets, tmp_path, monkeypatch):
    """Two runs with the same output: the second starts from step 0; a rerun of the first resumes
    its own checkpoints; another run starts from them only when grpo.resume_from asks."""
    out = str(tmp_path / "model")

    def run(run_id: str, steps: int, *extra: str, output: str = out) -> dict[str, float]:
        cfg = tiny_config(*FAST, "grpo.kl_coef=0", f"grpo.total_steps={steps}", *extra,
                          f"output_dir={tmp_path / 'runs'}")  # fmt: skip
        return main(cfg, str(tiny_assets["model"]), str(tiny_assets["rl"]), output, run_id)

    assert run("run-a", 2)["grpo/resumed_from_step"] == 0
    second = run("run-b", 3)
    assert (second["grpo/resumed_from_step"], second["grpo/steps"]) == (0, 3)
    assert run("run-a", 4)["grpo/resumed_from_step"] == 2  # a retried pod of run-a
    asked = run("run-c", 4, f"grpo.resume_from={out}/checkpoints/run-b", output=out + "-c")
    assert asked["grpo/resumed_from_step"] == 3

    monkeypatch.delenv("KFP_RUN_ID", raising=False)
    with pytest.raises(InputError, match="no pipeline run id"):
        run("", 2)
