"""The GRPO stage: load policy, reference, data and rollout engine; train; save the model.

`run_grpo` is what the CLI and the kfp component both end up calling (cli.main, through the
shared stage runner); everything here is set-up and tear-down around `trainer.train(run)`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from coldstart.common.config import GRPOConfig, PipelineConfig
from coldstart.common.errors import InputError
from coldstart.common.generation import GenerationBackend, make_backend
from coldstart.common.image_store import STORE_FLAG
from coldstart.common.models import load_model, load_processor
from coldstart.common.rewards import bounded_reward_funcs
from coldstart.common.stage_runner import StageContext
from coldstart.common.trainable import prepare_trainable
from coldstart.common.zero import zero_wanted
from coldstart.grpo.checkpointing import Checkpointer
from coldstart.grpo.data import load_rl_prompts
from coldstart.grpo.distributed import World, barrier, init_from_env
from coldstart.grpo.engine import PolicyEngine
from coldstart.grpo.engine_plain import PlainEngine
from coldstart.grpo.trainer import MetricsFn, RewardFunc, setup_run, train

if TYPE_CHECKING:  # tracking imports mlflow, which a bare GPU check machine lacks
    from coldstart.common.tracking import StageTracker

log = logging.getLogger(__name__)


@dataclass
class GRPOPaths:
    init_model: Path  # SFT output or the base model
    data: Path  # the RL dataset (save_to_disk)
    output: Path  # where the final model is written (local)
    checkpoint_root: str  # this run's checkpoints: local folder or s3:// prefix
    scratch: Path  # staging for checkpoints and downloads
    images: Path | None = None  # data_prep's image store, for a dataset of image keys

    @classmethod
    def of(cls, ctx: StageContext) -> GRPOPaths:
        return cls(
            ctx.inputs["init-model"],
            ctx.inputs["data"],
            ctx.output,
            ctx.checkpoint_root,
            ctx.scratch,
            ctx.inputs.get(STORE_FLAG),
        )


def pick_device(world: World) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", world.local_rank)
    return torch.device("cpu")


def prepare_policy(
    model: torch.nn.Module, cfg: GRPOConfig
) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """Checkpointing, then freezing / LoRA (common/trainable.py) on the loaded model; returns
    (policy, frozen reference copy). The copy is made when kl_coef > 0 and there is no LoRA
    (under LoRA the engine's reference is the policy with its adapters off); None otherwise:
    nothing more is loaded."""
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # type: ignore[operator]
    ref = None
    if cfg.kl_coef > 0 and not cfg.lora_r:
        ref = copy.deepcopy(model).eval().requires_grad_(False)
    return prepare_trainable(model, cfg, "grpo"), ref


def deepspeed_stage(cfg: GRPOConfig) -> str:
    """`grpo.deepspeed` where it can run: with CUDA, or where the user asked DeepSpeed for its CPU
    accelerator (DS_ACCELERATOR=cpu: tests, debugging); "none" otherwise (logged)."""
    usable = torch.cuda.is_available() or os.environ.get("DS_ACCELERATOR") == "cpu"
    return cfg.deepspeed if zero_wanted("grpo", cfg.deepspeed, usable) else "none"


def build_engine(
    policy: torch.nn.Module,
    cfg: GRPOConfig,
    world: World = World(),
    deepspeed: str = "none",
    reference: torch.nn.Module | None = None,
) -> PolicyEngine:
    """The plain engine, or DeepSpeed's ZeRO stage `deepspeed` ("zero2" / "zero3")."""
    if deepspeed == "none":
        return PlainEngine(policy, cfg, world, reference)
    from coldstart.grpo.engine_zero import ZeroEngine  # imports deepspeed: only when asked

    return ZeroEngine(policy, cfg, world, deepspeed, reference)


def check_images_for_zero3(data: Path, rows_without_image: int, stage: str, world: World) -> None:
    """ZeRO-3 over several processes gathers the vision tower's weights inside each forward that
    runs it: a micro-batch without an image on one rank would skip gathers the others run."""
    if rows_without_image and stage == "zero3" and world.active:
        raise InputError(
            f"{data}: {rows_without_image} RL rows without an image, and grpo.deepspeed=zero3 over "
            f"{world.size} processes runs the vision tower's weight gathers in lockstep on every rank; "
            "use grpo.deepspeed=zero2 (or none), or give every RL row an image"
        )


def plot_rewards(history: list[dict[str, float]], path: Path) -> Path:
    """Reward (and each reward function's mean) per step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [h["reward/mean"] for h in history], label="reward (weighted)", linewidth=2)
    for key in sorted(k for k in history[0] if k.startswith("rewards/") and k.endswith("/mean")):
        ax.plot(
            steps, [h.get(key, float("nan")) for h in history], label=key.split("/")[1], alpha=0.7
        )
    ax.set_xlabel("rollout step")
    ax.set_ylabel("mean reward")
    ax.set_title("GRPO rewards")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summarize(history: list[dict[str, float]], window: int = 5) -> dict[str, float]:
    """The stage's result metrics: the last step's, and the mean reward of the first/last steps."""
    if not history:
        return {}
    last = history[-1]
    first_n, last_n = history[:window], history[-window:]
    out = {
        f"grpo/{k}": v
        for k, v in last.items()
        if k.startswith(("reward", "rewards/")) and k.endswith("mean")
    }
    out["grpo/steps"] = float(last["step"])
    out["grpo/reward/mean_first_steps"] = sum(h["reward/mean"] for h in first_n) / len(first_n)
    out["grpo/reward/mean_last_steps"] = sum(h["reward/mean"] for h in last_n) / len(last_n)
    return out


def run_grpo(
    cfg: PipelineConfig,
    paths: GRPOPaths,
    log_fn: MetricsFn | None = None,
    reward_funcs: Mapping[str, RewardFunc] | None = None,
    reward_weights: Mapping[str, float] | None = None,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Train and save; returns (summary metrics, per-step history). Resumes from paths.checkpoint_root.

    Under torchrun (several GPUs) every rank runs this; rank 0 logs and writes the model.
    """
    g = cfg.grpo
    world = init_from_env()
    torch.manual_seed(g.seed + world.rank)  # ranks sample different completions
    device = pick_device(world)
    processor = load_processor(paths.init_model, g.min_pixels, g.max_pixels)
    dataset, data_metrics = load_rl_prompts(paths.data, paths.images, processor, g)
    stage = deepspeed_stage(g)
    check_images_for_zero3(paths.data, int(data_metrics["data/rows_without_image"]), stage, world)
    if log_fn is not None and world.is_main:
        log_fn({f"grpo/{k}": v for k, v in data_metrics.items()}, 0)
    model = load_model(paths.init_model, cfg.model.torch_dtype, cfg.model.attn_implementation)
    # transformers types `.to` through a decorator that mypy reads as taking the model first
    policy, ref = prepare_policy(model.to(device), g)  # type: ignore[arg-type]
    engine = build_engine(policy, g, world, stage, ref)
    run = setup_run(
        g,
        engine,
        processor,
        dataset,
        backend=build_backend(g, engine.module, processor, paths.init_model),
        reward_funcs=reward_funcs
        or bounded_reward_funcs(g.reward_timeout_s, g.reward_batch_deadline_s),
        reward_weights=reward_weights or g.reward_weights,
    )
    checkpointer = Checkpointer(
        paths.checkpoint_root,
        paths.scratch / "checkpoint-staging",
        g.save_total_limit,
        g.model_dump_json(),
        resume_from=g.resume_from,
    )
    history, resumed_from = train(run, checkpointer, log_fn)
    engine.save_model(paths.output, processor)  # ZeRO-3: gathered on every rank
    if world.is_main:
        (paths.output / "grpo_history.json").write_text(json.dumps(history))
        if history:
            plot_rewards(history, paths.output / "reward_curve.png")
    barrier(world)
    return {**summarize(history), "grpo/resumed_from_step": float(resumed_from)}, history


def report(
    tracker: StageTracker, summary: dict[str, float], output: Path, cfg: PipelineConfig
) -> None:
    """The summary at the last step (at step 0 it would add a false first point to the reward
    curves), the reward curve and history as artifacts (the model: the stage runner)."""
    tracker.log_metrics(summary, step=int(summary.get("grpo/steps", 0)))
    for name in ("reward_curve.png", "grpo_history.json"):
        if (output / name).exists():
            tracker.log_artifact(output / name)


def build_backend(
    g: GRPOConfig, policy: torch.nn.Module, processor: Any, model_dir: Path
) -> GenerationBackend:
    """HF generate on the policy module itself, or a vLLM engine of its own (weights pushed)."""
    if g.rollout_backend == "vllm":
        return make_backend(
            "vllm", str(model_dir), processor, g.system_prompt,
            gpu_memory_utilization=g.vllm_gpu_memory_utilization,
            max_model_len=g.max_prompt_length + g.max_completion_length,
            enable_sleep_mode=g.vllm_enable_sleep_mode,
            seed=g.seed, min_pixels=g.min_pixels, max_pixels=g.max_pixels,
        )  # fmt: skip
    return make_backend(
        "hf", policy, processor, g.system_prompt, batch_size=g.generation_batch_size
    )
