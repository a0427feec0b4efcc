"""The GRPO stage: load policy, reference, data and rollout engine; train; save the model.

`run_grpo` is what the CLI and the kfp component both end up calling (through cli.main);
everything here is set-up and tear-down around `trainer.train`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from components.common.config import GRPOConfig, PipelineConfig
from components.common.generation import make_backend
from components.common.models import load_model, load_processor
from components.common.rewards import bounded_reward_funcs
from components.common.zero import zero_wanted
from components.grpo.checkpointing import Checkpointer
from components.grpo.data import load_rl_dataset
from components.grpo.distributed import World, barrier, init_from_env
from components.grpo.engine import PolicyEngine, build_engine
from components.grpo.trainer import train
from components.grpo.zero import ZeroEngine, reference_engine, standalone_state_dict

log = logging.getLogger(__name__)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_TARGET_REGEX = (
    rf".*language_model\..*\.({'|'.join(LORA_TARGETS)})$"  # not the vision tower's MLPs
)


@dataclass
class GRPOPaths:
    init_model: Path  # SFT output or the base model
    data: Path  # the RL dataset (save_to_disk)
    output: Path  # where the final model is written (local)
    checkpoint_root: str  # local folder or s3:// prefix
    scratch: Path  # staging for checkpoints and downloads


def pick_device(world: World) -> torch.device:
    return (
        torch.device("cuda", world.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    )


def prepare_policy(model: torch.nn.Module, cfg: GRPOConfig) -> tuple[torch.nn.Module, Any]:
    """Freezing / LoRA / checkpointing on the loaded model; returns (policy, reference).

    The reference is a frozen copy of the starting policy when kl_coef > 0 (None otherwise:
    nothing is loaded), or, under LoRA, a context factory that disables the adapters.
    """
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ref: Any = None
    if cfg.kl_coef > 0 and not cfg.lora_r:
        ref = copy.deepcopy(model).eval().requires_grad_(False)
    if cfg.freeze_vision_tower:
        for name, param in model.named_parameters():
            if ".visual." in f".{name}" and ".merger." not in name:
                param.requires_grad_(False)
    if cfg.lora_r:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            target_modules=LORA_TARGET_REGEX,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
        if cfg.kl_coef > 0:
            ref = model.disable_adapter
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "policy: %d trainable of %d parameters",
        trainable,
        sum(p.numel() for p in model.parameters()),
    )
    return model, ref


def deepspeed_stage(cfg: GRPOConfig) -> str:
    """`grpo.deepspeed` where it can run: with CUDA, or where the user asked DeepSpeed for its CPU
    accelerator (DS_ACCELERATOR=cpu: tests, debugging); "none" otherwise (logged)."""
    usable = torch.cuda.is_available() or os.environ.get("DS_ACCELERATOR") == "cpu"
    return cfg.deepspeed if zero_wanted("grpo", cfg.deepspeed, usable) else "none"


def prepare_reference(ref: Any, engine: PolicyEngine) -> Any:
    """Under ZeRO a frozen reference copy becomes an inference-only DeepSpeed engine (partitioned like the
    policy under ZeRO-3, in the policy's dtype); an adapter-disabling factory or None stays as it is."""
    if isinstance(engine, ZeroEngine) and isinstance(ref, torch.nn.Module):
        return reference_engine(ref, engine.config)
    return ref


def save_final_model(
    policy: torch.nn.Module, processor, out: Path, standalone: bool = False
) -> None:
    """A plain model dir (safetensors + processor) that eval and later stages load by path.

    `standalone`: save copies of the weights (under ZeRO-2 they are views into one flat buffer).
    """
    out.mkdir(parents=True, exist_ok=True)
    model = policy.merge_and_unload() if hasattr(policy, "merge_and_unload") else policy
    model.save_pretrained(out, state_dict=standalone_state_dict(model) if standalone else None)
    processor.save_pretrained(out)


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
    log_fn: Callable[[dict[str, float], int], None] | None = None,
    reward_funcs: Mapping[str, Callable] | None = None,
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
    model = load_model(paths.init_model, cfg.model.torch_dtype, cfg.model.attn_implementation).to(
        device
    )
    policy, ref = prepare_policy(model, g)
    engine = build_engine(policy, g, world, deepspeed_stage(g))
    ref = prepare_reference(ref, engine)
    dataset = load_rl_dataset(paths.data)
    backend = build_backend(g, engine.module, processor, paths.init_model)
    checkpointer = Checkpointer(
        paths.checkpoint_root,
        paths.scratch / "checkpoint-staging",
        g.save_total_limit,
        g.model_dump_json(),
    )
    rewards = reward_funcs or bounded_reward_funcs(g.reward_timeout_s, g.reward_batch_deadline_s)
    history = train(
        g, engine.module, processor, dataset,
        backend=backend,
        reward_funcs=rewards,
        reward_weights=reward_weights or g.reward_weights,
        ref_model=ref,
        checkpointer=checkpointer,
        log_fn=log_fn,
        world=world,
        engine=engine,
    )  # fmt: skip
    with engine.full_weights() as trained:  # ZeRO-3: gathered on every rank, written by rank 0
        if world.is_main:
            save_final_model(trained, processor, paths.output, standalone=engine.lockstep_backward)
    if world.is_main:
        (paths.output / "grpo_history.json").write_text(json.dumps(history))
        if history:
            plot_rewards(history, paths.output / "reward_curve.png")
    barrier(world)
    return summarize(history), history


def build_backend(g: GRPOConfig, policy: torch.nn.Module, processor, model_dir: Path):
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
