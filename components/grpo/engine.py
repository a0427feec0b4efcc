"""The policy's training engine: one protocol, two implementations side by side.

- `PlainEngine` (engine_plain.py, default): our data parallelism (distributed.py). Gradients
  are summed over ranks, clipped with torch's `clip_grad_norm_`, AdamW steps (its state
  optionally split across ranks, ZeRO-1). Weights and gradients are replicated on every rank.
- `ZeroEngine` (engine_zero.py, `grpo.deepspeed: zero2|zero3`): DeepSpeed ZeRO-2 (gradients
  and optimizer state partitioned) or ZeRO-3 (weights too).

An engine owns everything that differs between them: the frozen reference model (a copy, a
DeepSpeed inference engine, or the policy with its LoRA adapters off), backward, the optimizer
step, gathering whole weights, checkpoint state and the final save. The loop (trainer.py) reads
the same with both; it has to know one thing about the difference, the `lockstep_*` flags:
ZeRO runs collectives inside every backward (ZeRO-2 and 3) and every forward (ZeRO-3), so each
rank must run as many of them as every other; a rank with fewer micro-batches runs
zero-weighted stand-ins.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch.optim.lr_scheduler import LRScheduler

PLAIN_LAYOUT: dict[str, Any] = {"deepspeed": "none"}


class PolicyEngine(Protocol):
    """What the GRPO loop and the checkpointer use of the policy's training machinery."""

    module: torch.nn.Module  # the policy itself: generation, saving, weight pushes
    forward: (
        torch.nn.Module
    )  # what log-probs and the loss run through (DeepSpeed's engine, or the policy)
    scheduler: LRScheduler
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

    def reference(self) -> AbstractContextManager[torch.nn.Module]:
        """What reference log-probs run through (frozen copy, or the policy with adapters off)."""
        ...

    def full_weights(self) -> AbstractContextManager[torch.nn.Module]:
        """The policy with every weight whole (ZeRO-3 gathers them); called on every rank at once."""
        ...

    def layout(self) -> dict[str, Any]:
        """How the optimizer state is laid out; a checkpoint resumes only into the same layout."""
        ...

    def save_weights(self, path: Path) -> None:
        """Every rank calls this; rank 0 writes the whole weights as safetensors."""
        ...

    def optimizer_state(self, folder: Path) -> Any:
        """Every rank calls this; the value goes into trainer_state.pt (files it writes, into `folder`)."""
        ...

    def load_weights(self, path: Path) -> None: ...

    def load_optimizer_state(self, state: Any, folder: Path) -> None: ...

    def save_model(self, out: Path, processor: Any) -> None:
        """Every rank calls this; rank 0 writes a plain model dir (adapters merged) for later stages."""
        ...


@contextmanager
def reference_of(
    ref: torch.nn.Module | None, policy: torch.nn.Module, forward: torch.nn.Module
) -> Iterator[torch.nn.Module]:
    """A frozen reference copy as it is; else, under LoRA, `forward` with the adapters disabled
    (the policy before any update); else an error (kl_coef = 0 loads no reference)."""
    if ref is not None:
        yield ref
        return
    if not hasattr(policy, "disable_adapter"):
        raise ValueError("grpo.kl_coef > 0 needs a reference model, and this engine has none")
    with cast(Any, policy).disable_adapter():  # a peft model's context manager
        yield forward


def write_model_dir(
    model: torch.nn.Module,
    processor: Any,
    out: Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """A plain model dir (safetensors + processor) that eval and later stages load by path."""
    out.mkdir(parents=True, exist_ok=True)
    cast(Any, model).save_pretrained(out, state_dict=state_dict)  # a transformers model
    processor.save_pretrained(out)


def merged(policy: torch.nn.Module) -> torch.nn.Module:
    """The policy with LoRA adapters merged into its weights (itself when it has none)."""
    if hasattr(policy, "merge_and_unload"):
        out: torch.nn.Module = cast(Any, policy).merge_and_unload()
        return out
    return policy
