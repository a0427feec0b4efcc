"""The default engine: our data parallelism (distributed.py) around torch's AdamW.

Gradients are summed over ranks before the step (each micro-batch loss is already divided by
the whole mini-batch's counts summed over ranks), clipped with `clip_grad_norm_`; AdamW's
state is optionally split across ranks (ZeRO-1). With one process it is plain PyTorch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from coldstart.common.config import GRPOConfig
from coldstart.grpo.distributed import World, optimizer_state, sum_gradients
from coldstart.grpo.engine import (
    PLAIN_LAYOUT,
    DataParallel,
    merged,
    reference_of,
    write_model_dir,
)
from coldstart.grpo.optimizer import build_optimizer


class PlainEngine(DataParallel):
    """Summed gradients, torch's clip, AdamW (ZeRO-1 optional); `reference`: a frozen copy of
    the starting policy, or None (no KL, or LoRA: the policy with its adapters off)."""

    def __init__(
        self,
        policy: torch.nn.Module,
        cfg: GRPOConfig,
        world: World = World(),
        reference: torch.nn.Module | None = None,
    ) -> None:
        self.module = self.forward = policy
        self.optimizer, self.scheduler = build_optimizer(policy, cfg, world)
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.max_grad_norm = cfg.max_grad_norm
        self.bf16 = cfg.bf16
        self.world = world
        self.ref = reference

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        loss.backward()  # type: ignore[no-untyped-call]

    def step(self) -> float:
        sum_gradients(self.params, self.world)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return float(grad_norm.item())

    def autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        """bf16 autocast over fp32 weights on CUDA (AdamW keeps updating fp32 weights)."""
        if self.bf16 and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def reference(self) -> AbstractContextManager[torch.nn.Module]:
        return reference_of(self.ref, self.module, self.forward)

    @contextmanager
    def full_weights(self) -> Iterator[torch.nn.Module]:
        yield self.module

    def layout(self) -> dict[str, Any]:
        # the full state, consolidated on rank 0: any number of ranks can resume it
        return dict(PLAIN_LAYOUT)

    def save_weights(self, path: Path) -> None:
        if self.world.is_main:
            safetensors.torch.save_model(self.module, str(path))

    def optimizer_state(self, folder: Path) -> Any:
        return optimizer_state(self.optimizer, self.world)

    def load_weights(self, path: Path) -> None:
        device = str(next(self.module.parameters()).device)
        safetensors.torch.load_model(self.module, str(path), strict=True, device=device)

    def load_optimizer_state(self, state: Any, folder: Path) -> None:
        self.optimizer.load_state_dict(state)

    def save_model(self, out: Path, processor: Any) -> None:
        if self.world.is_main:
            write_model_dir(merged(self.module), processor, out)
