"""Worker processes for the CPU-bound part of data_prep (decode, validate, resize, hash).

Results come back in submission order, so the output is the same for any number of workers;
at most `window` tasks are in flight, so memory does not grow with the input.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (a pod's limit)."""
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_quota(cgroup)
    return max(1, min(cpus, math.ceil(quota)) if quota else cpus)


def cgroup_quota(cgroup: Path) -> float | None:
    """CPUs allowed by cgroup v2 `cpu.max` (or v1 `cfs_quota_us`), None when unlimited."""
    v2 = cgroup / "cpu.max"
    if v2.exists():
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    v1 = cgroup / "cpu" / "cpu.cfs_quota_us"
    if v1.exists():
        quota_us = int(v1.read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    return None


@contextmanager
def worker_pool(num_proc: int) -> Iterator[ProcessPoolExecutor | None]:
    """A process pool of `num_proc` workers (None for 1: the work then runs in this process).

    forkserver: workers fork from a clean server that has imported only the worker module (and
    the main script, which each worker would otherwise import again), not from this process
    with its threads (downloads, progress bars, Arrow's pools) and its memory.
    """
    if num_proc <= 1:
        yield None
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", "coldstart.data_prep.records"])
    pool = ProcessPoolExecutor(num_proc, mp_context=context)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], pool: ProcessPoolExecutor | None, window: int
) -> Iterator[R]:
    """`map(fn, items)` on the pool, in order, with at most `window` items submitted ahead."""
    if pool is None:
        yield from map(fn, items)
        return
    pending: deque[Future[Any]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
