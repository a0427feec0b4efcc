"""GRPO's optimizer and learning-rate schedule, the same for every engine (plain or ZeRO).

The schedule counts optimizer updates, not rollout steps: each rollout batch gives
`updates_per_rollout` updates (mini-batches x epochs, optionally capped).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler
from transformers import get_scheduler

from coldstart.common.config import GRPOConfig
from coldstart.grpo.distributed import World, adamw


def updates_per_rollout(cfg: GRPOConfig) -> int:
    """Optimizer updates per rollout batch: its mini-batches times the epochs, capped when asked."""
    mini_batches = (
        math.ceil(cfg.rollout_batch_size / cfg.update_batch_size) * cfg.epochs_per_rollout
    )
    if cfg.max_updates_per_rollout:
        return min(mini_batches, cfg.max_updates_per_rollout)
    return mini_batches


def build_optimizer(
    model: torch.nn.Module, cfg: GRPOConfig, world: World = World()
) -> tuple[torch.optim.Optimizer, LRScheduler]:
    """AdamW on the trainable parameters (state sharded across ranks when several train and
    `shard_optimizer_state`), and the schedule over every update of the run."""
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
    scheduler: LRScheduler = get_scheduler(
        name, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total), num_training_steps=total
    )
    return optimizer, scheduler
