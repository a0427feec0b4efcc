"""Data-parallel GRPO over several processes (one per GPU, started by torchrun).

Each rank rolls out its own share of the step's prompts, as many as every other rank (a
prompt's G completions stay on one rank, so groups and advantages are local), computes its
micro-batch losses with the *global* normalisers (token and sequence counts summed over ranks), and the gradients are
summed across ranks before each optimizer step: the update equals that of one process holding
the whole rollout batch. Optimizer state can be sharded across ranks (ZeRO stage 1, PyTorch's
`ZeroRedundancyOptimizer`), which is what lets a 7B policy's AdamW state fit next to vLLM.
Gradients and weights partitioned too (ZeRO-2/3) are DeepSpeed's job: see engine_zero.py.

The engines call these (engine.DataParallel); the loop never does. With one process (CPU,
one GPU, tests) every function here is a no-op.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def init_from_env() -> World:
    """Join the torchrun process group (NCCL on GPUs, gloo on CPU); one process -> World()."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=60))
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank)


def shard(indices: Sequence[int], world: World) -> list[int]:
    """This rank's prompts of a rollout batch: every size-th one, starting at rank."""
    return list(indices[world.rank :: world.size])


def _comm_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo takes CPU ones."""
    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


def all_reduce_sum(values: Sequence[float], world: World) -> list[float]:
    """Element-wise sum over ranks of a few numbers (token counts, metric sums)."""
    if not world.active:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def sum_gradients(params: Sequence[torch.nn.Parameter], world: World) -> None:
    """grad <- sum over ranks of grad (a weight no micro-batch reached contributes zeros)."""
    if not world.active:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])  # one all-reduce, not one per tensor
    dist.all_reduce(flat)
    for grad, synced in zip(grads, torch.split(flat, [g.numel() for g in grads]), strict=True):
        grad.copy_(synced.view_as(grad))


def gather_objects(obj: Any, world: World) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not world.active:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()


def adamw(
    params: Sequence[torch.nn.Parameter], world: World, shard_state: bool, **kwargs: Any
) -> torch.optim.Optimizer:
    """AdamW; with several ranks and `shard_state`, its state split across ranks (ZeRO-1)."""
    if world.active and shard_state:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(list(params), optimizer_class=torch.optim.AdamW, **kwargs)
    return torch.optim.AdamW(list(params), **kwargs)


def optimizer_state(optimizer: torch.optim.Optimizer, world: World) -> dict[str, Any] | None:
    """The full optimizer state on rank 0 (a sharded optimizer is consolidated first); None elsewhere."""
    if hasattr(optimizer, "consolidate_state_dict"):
        optimizer.consolidate_state_dict(to=0)
    return optimizer.state_dict() if world.is_main else None
