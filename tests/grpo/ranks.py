"""Run a function in 2 real processes joined by gloo (CPU), each writing its result to a file.

Shared by the multi-rank GRPO tests (plain data parallelism and DeepSpeed ZeRO): a worker
gets (rank, size, tmp, *args), joins the process group through a file rendezvous in `tmp`,
and its return value (or the exception it raised, by type name and message) is saved as
`tmp/result-<rank>.pt`, so a test can assert that every rank failed alike instead of hanging.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from coldstart.grpo.distributed import World


def skip_deepspeed_shm_kernel() -> None:
    """DeepSpeed's CPU accelerator compiles a shared-memory all-reduce kernel at its first use
    (~70 s on 2 cores). It serves inference all-reduce only, never ZeRO training (which goes
    through torch.distributed, here gloo), so the tests run without it."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _entry(rank: int, size: int, tmp: str, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size), DS_ACCELERATOR="cpu"
    )
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=size
    )
    try:
        result: Any = fn(World(rank, size, rank), Path(tmp), *args)
    except Exception as exc:  # recorded for the test to compare across ranks
        result = {
            "error": type(exc).__name__,
            "message": str(exc),
            "traceback": traceback.format_exc(),
        }
    torch.save(result, Path(tmp) / f"result-{rank}.pt")
    dist.destroy_process_group()


def run_ranks(
    fn: Callable[..., Any], tmp: Path, *args: Any, size: int = 2, timeout_s: float = 240.0
) -> list[Any]:
    """fn(world, tmp, *args) on `size` ranks; their return values (or recorded errors), by rank.

    Ranks still running after `timeout_s` are killed and the test fails: a rank waiting forever in
    a collective that another rank never joined is exactly what some of these tests look for.
    """
    context = mp.start_processes(
        _entry, args=(size, str(tmp), fn, args), nprocs=size, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(
                f"ranks still running after {timeout_s:.0f} s: one waits in a collective the other never joined"
            )
    return [torch.load(tmp / f"result-{rank}.pt", weights_only=False) for rank in range(size)]


def errors_of(results: list[Any]) -> str:
    """The recorded tracebacks of the ranks that failed ('' if none), for a test's failure message."""
    return "\n".join(
        f"rank {rank}:\n{r['traceback']}"
        for rank, r in enumerate(results)
        if isinstance(r, dict) and "error" in r
    )
