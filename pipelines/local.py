"""Run the pipeline on this machine with kfp.local: same DAG, subprocesses instead of pods."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from coldstart.common.config import PipelineConfig
from coldstart.common.run_id import new_run_id
from coldstart.common.storage import is_s3
from coldstart.pipelines.caching import CACHE_SALT_ENV, local_cache_salt, run_local_pipeline
from coldstart.pipelines.local_tasks import LocalRun, supervise

log = logging.getLogger(__name__)


def absolutize(cfg: PipelineConfig) -> PipelineConfig:
    """Components run with another working directory: make the output folder absolute."""
    if is_s3(cfg.output_dir):
        return cfg
    return cfg.model_copy(update={"output_dir": str(Path(cfg.output_dir).expanduser().resolve())})


def local_root(cfg: PipelineConfig) -> Path:
    """The folder on this disk for kfp.local's artifacts and the task logs.

    kfp.local needs a local pipeline root. With an s3:// output_dir (checkpoints and tracking
    spill there) it is a cache folder keyed by the URI: never `./s3:/bucket/...`.
    """
    if is_s3(cfg.output_dir):
        key = cfg.output_dir.removeprefix("s3://").strip("/")
        return Path.home() / ".cache" / "coldstart" / "s3" / key
    return Path(absolutize(cfg).output_dir)


@contextmanager
def scoped_env(name: str, value: str) -> Iterator[str]:
    """`name=value` in this process's env (and so the stage subprocesses') for the block."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield value
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def pipeline_run_id() -> contextlib.AbstractContextManager[str]:
    """A fresh `local-<time>-<random>` id in KFP_RUN_ID for the stage subprocesses: the key of
    their MLflow runs and of their per-run state."""
    return scoped_env("KFP_RUN_ID", new_run_id())


def run_supervised(
    pipeline_func: Callable[..., Any],
    cfg: PipelineConfig,
    label: str,
    cache: bool,
    verbose: bool = False,
) -> LocalRun:
    """Call `pipeline_func` under kfp.local with per-task logs in `<local root>/logs/<label>`."""
    root = local_root(cfg) / "pipeline_root"
    root.mkdir(parents=True, exist_ok=True)
    with (
        scoped_env(CACHE_SALT_ENV, local_cache_salt(cfg)),
        supervise(local_root(cfg) / "logs" / label, verbose) as run,
    ):
        run_local_pipeline(pipeline_func, root, cache, config_json=cfg.to_json())
    return run


def run_local(cfg: PipelineConfig, cache: bool = True, verbose: bool = False) -> LocalRun:
    """Run every stage through kfp.local; returns what ran, with outputs and log paths.

    With `cache`, a stage whose config and inputs are unchanged since an earlier run under the
    same output folder is skipped and its outputs reused (kfp.local's cache). The run id that
    groups the stages in MLflow reaches the stage subprocesses through their inherited env.
    """
    from coldstart.pipelines.pipeline import build_pipeline

    cfg = absolutize(cfg)
    with pipeline_run_id() as run_id:
        run = run_supervised(build_pipeline(cfg), cfg, run_id, cache, verbose)
    run.pipeline_run_id = run_id
    return run
