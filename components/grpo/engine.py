"""The policy's training engine: one protocol, two implementations side by side.

- `PlainEngine` (engine_plain.py, default): our data parallelism (distributed.py). Gradients
  are summed over ranks, clipped with torch's `clip_grad_norm_`, AdamW steps (its state
  optionally split across ranks, ZeRO-1). Weights and gradients are replicated on every rank.
- `ZeroEngine` (engine_zero.py, `grpo.deepspeed: zero2|zero3`): DeepSpeed ZeRO-2 (gradients
  and optimizer state partitioned) or ZeRO-3 (weights too).

An engine owns everything that differs between them: the frozen reference model (a copy, a
DeepSpeed inference engine, or the policy with its LoRA adapters off), backward, the optimizer
step, gathering whole weights, checkpoint state and the final save. It also owns what data
parallelism asks of the loop (`DataParallel`, the same for both): this rank's share of a step's
prompts, sums over ranks (the loss normalisers), gathers of metrics, and the weight push to the
rollout backend. The loop (trainer.py) reads the same with both and names no rank.

ZeRO runs collectives inside every backward (ZeRO-2 and 3) and every forward (ZeRO-3), so
every rank must run as many of them as every other. They do without any help from the loop:
over-long prompts are dropped when the set is loaded (data.py), so every rank rolls out
rollout_batch_size / world prompts x G completions at every step and runs the same number of
micro-batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch.optim.lr_scheduler import LRScheduler

from coldstart.grpo.distributed import World, all_reduce_sum, gather_objects, shard

PLAIN_LAYOUT: dict[str, Any] = {"deepspeed": "none"}


class PolicyEngine(Protocol):
    """What the GRPO loop and the checkpointer use of the policy's training machinery."""

    module: torch.nn.Module  # the policy itself: generation, saving, weight pushes
    forward: (
        torch.nn.Module
    )  # what log-probs and the loss run through (DeepSpeed's engine, or the policy)
    scheduler: LRScheduler
    world: World

    def shard(self, indices: Sequence[int]) -> list[int]:
        """This rank's rows of a step's prompts (the same number on every rank)."""
        ...

    def global_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over ranks of a few numbers (token and sequence counts, metric sums)."""
        ...

    def gather(self, obj: Any) -> list[Any]:
        """[obj of rank 0, obj of rank 1, ...] on every rank (a step's metrics)."""
        ...

    def push_weights(self, backend: Any) -> None:
        """The rollout backend follows the policy; called on every rank at once."""
        ...

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


class DataParallel:
    """What both engines do alike over ranks (distributed.py); one process: plain values."""

    world: World
    module: torch.nn.Module

    def full_weights(self) -> AbstractContextManager[torch.nn.Module]:
        raise NotImplementedError

    def shard(self, indices: Sequence[int]) -> list[int]:
        return shard(indices, self.world)

    def global_sum(self, values: Sequence[float]) -> list[float]:
        return all_reduce_sum(values, self.world)

    def gather(self, obj: Any) -> list[Any]:
        return gather_objects(obj, self.world)

    def push_weights(self, backend: Any) -> None:
        """HF generate runs on the policy module itself: nothing to send. An engine of its own
        (vLLM) is sent the whole weights (gathered first under ZeRO-3, on every rank)."""
        if getattr(backend, "model", None) is self.module:
            return
        with self.full_weights() as policy:
            backend.sync_weights(policy)


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
