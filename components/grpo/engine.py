"""The policy's training engine: what runs backward, the optimizer step, and the state a checkpoint keeps.

Two implementations behind one small interface, so the loop in trainer.py reads the same with both:

- `PlainEngine` (default): our data parallelism (distributed.py). Gradients are summed over
  ranks, clipped with torch's `clip_grad_norm_`, AdamW steps (its state optionally split
  across ranks, ZeRO-1). Weights and gradients are replicated on every rank.
- `ZeroEngine` (zero.py, `grpo.deepspeed: zero2|zero3`): DeepSpeed ZeRO-2 (gradients and
  optimizer state partitioned) or ZeRO-3 (weights too).

The loop has to know one thing about the difference, the `lockstep_*` flags: ZeRO runs
collectives inside every backward (ZeRO-2 and 3) and every forward (ZeRO-3), so each rank must
run as many of them as every other; a rank with fewer micro-batches runs zero-weighted stand-ins.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import safetensors.torch
import torch
from transformers import get_scheduler

from components.common.config import GRPOConfig
from components.grpo.distributed import World, adamw, optimizer_state, sum_gradients

PLAIN_LAYOUT = {"deepspeed": "none"}


def updates_per_rollout(cfg: GRPOConfig) -> int:
    mini_batches = (
        math.ceil(cfg.rollout_batch_size / cfg.update_batch_size) * cfg.epochs_per_rollout
    )
    return (
        min(mini_batches, cfg.max_updates_per_rollout)
        if cfg.max_updates_per_rollout
        else mini_batches
    )


def build_optimizer(
    model: torch.nn.Module, cfg: GRPOConfig, world: World = World()
) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW on the trainable parameters (state sharded across ranks when several train); the
    schedule counts optimizer updates, not rollout steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(
        params,
        world,
        cfg.shard_optimizer_state,
        lr=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
    )
    total = cfg.total_steps * updates_per_rollout(cfg)
    name = "constant_with_warmup" if cfg.lr_scheduler_type == "constant" else cfg.lr_scheduler_type
    scheduler = get_scheduler(
        name, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total), num_training_steps=total
    )
    return optimizer, scheduler


class PolicyEngine(Protocol):
    """What the GRPO loop and the checkpointer use of the policy's training machinery."""

    module: torch.nn.Module  # the policy itself: generation, saving, weight pushes
    forward: (
        torch.nn.Module
    )  # what log-probs and the loss run through (DeepSpeed's engine, or the policy)
    scheduler: Any
    lockstep_backward: bool  # every rank must run the same number of backward passes
    lockstep_forward: bool  # ... and of forward passes (ZeRO-3 gathers weights inside each)

    def zero_grad(self) -> None: ...

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        """Accumulate the gradient of `loss`; `boundary` marks the last micro-batch of an update."""
        ...

    def step(self) -> float:
        """Reduce gradients over ranks, clip, optimizer and scheduler step; the norm before clipping."""
        ...

    def autocast(self, device: torch.device) -> AbstractContextManager[Any]: ...

    def full_weights(self) -> AbstractContextManager[torch.nn.Module]:
        """The policy with every weight whole (ZeRO-3 gathers them); called on every rank at once."""
        ...

    def layout(self) -> dict[str, Any]:
        """How the optimizer state is laid out; a checkpoint resumes only into the same layout."""
        ...

    def save_weights(self, path: Path, world: World) -> None:
        """Every rank calls this; rank 0 writes the whole weights as safetensors."""
        ...

    def optimizer_state(self, folder: Path, world: World) -> Any:
        """Every rank calls this; the value goes into trainer_state.pt (files it writes, into `folder`)."""
        ...

    def load_weights(self, path: Path) -> None: ...

    def load_optimizer_state(self, state: Any, folder: Path) -> None: ...


class PlainEngine:
    """Our data parallelism: summed gradients, torch's clip, AdamW (ZeRO-1 optional)."""

    lockstep_backward = False
    lockstep_forward = False

    def __init__(self, policy: torch.nn.Module, cfg: GRPOConfig, world: World = World()) -> None:
        self.module = self.forward = policy
        self.optimizer, self.scheduler = build_optimizer(policy, cfg, world)
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.max_grad_norm = cfg.max_grad_norm
        self.bf16 = cfg.bf16
        self.world = world

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        loss.backward()

    def step(self) -> float:
        sum_gradients(self.params, self.world)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return grad_norm.item()

    def autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        """bf16 autocast over fp32 weights on CUDA (AdamW keeps updating fp32 weights)."""
        return (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.bf16 and device.type == "cuda"
            else nullcontext()
        )

    @contextmanager
    def full_weights(self) -> Iterator[torch.nn.Module]:
        yield self.module

    def layout(self) -> dict[str, Any]:
        return dict(
            PLAIN_LAYOUT
        )  # the full state, consolidated on rank 0: any number of ranks can resume it

    def save_weights(self, path: Path, world: World) -> None:
        if world.is_main:
            safetensors.torch.save_model(self.module, str(path))

    def optimizer_state(self, folder: Path, world: World) -> Any:
        return optimizer_state(self.optimizer, world)

    def load_weights(self, path: Path) -> None:
        device = str(next(self.module.parameters()).device)
        safetensors.torch.load_model(self.module, str(path), strict=True, device=device)

    def load_optimizer_state(self, state: Any, folder: Path) -> None:
        self.optimizer.load_state_dict(state)


def build_engine(
    policy: torch.nn.Module, cfg: GRPOConfig, world: World = World(), deepspeed: str = "none"
) -> PolicyEngine:
    """The plain engine, or DeepSpeed's ZeRO stage `deepspeed` ("zero2" / "zero3") when one is chosen."""
    if deepspeed == "none":
        return PlainEngine(policy, cfg, world)
    from components.grpo.zero import ZeroEngine

    return ZeroEngine(policy, cfg, world, deepspeed)
