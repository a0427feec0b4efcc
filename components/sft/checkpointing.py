"""Which SFT checkpoint a rerun resumes from, and the Trainer callbacks that write them.

The Trainer writes `checkpoint-<step>/` (model, optimizer, scheduler, RNG state, data position
in `trainer_state.json`) into this run's checkpoint folder (`<output>/checkpoints/<run id>`, see
stage_runner.checkpoint_root). When the run's checkpoint root is on S3, each saved checkpoint
is also published there with a COMPLETE marker (`coldstart.common.checkpoints`), so a new pod
of the same run, whose local disk is empty, fetches the newest complete one and resumes.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from coldstart.common import checkpoints, storage
from coldstart.common.config import PipelineConfig
from coldstart.common.errors import InputError

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"  # written last by Trainer._save_checkpoint
CONFIG_FILE = "coldstart_config.json"


def last_local_checkpoint(ckpt_dir: Path) -> Path | None:
    """The highest-step local checkpoint whose save finished (it has `trainer_state.json`).

    A process killed in the middle of a save leaves a directory without the state file; resuming
    from it would fail on a missing optimizer or, worse, load half-written weights.
    """
    if not ckpt_dir.is_dir():
        return None
    found = [
        (step, path)
        for path in ckpt_dir.iterdir()
        if (step := checkpoints.parse_step(path.name)) is not None
        and _trainer_state(path) is not None
    ]
    return max(found)[1] if found else None


def _trainer_state(path: Path) -> dict[str, Any] | None:
    """The checkpoint's trainer state, or None while it is missing or half-written."""
    try:
        return json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def checkpoint_step(path: Path | None) -> int:
    state = _trainer_state(path) if path is not None else None
    return int(state["global_step"]) if state else 0


def resume_point(ckpt_dir: Path, remote_root: str | None, resume_from: str | None) -> Path | None:
    """The checkpoint to resume from: this run's newest (local, or remote and fetched); without
    one, the newest of `resume_from` (another run's, asked for explicitly); else None."""
    own = own_checkpoint(ckpt_dir, remote_root)
    if own is not None or resume_from is None:
        return own
    return explicit_checkpoint(resume_from, ckpt_dir)


def own_checkpoint(ckpt_dir: Path, remote_root: str | None) -> Path | None:
    """The newest of this run's local and (fetched) remote checkpoints, or None."""
    local = last_local_checkpoint(ckpt_dir)
    if remote_root is None:
        return local
    uri = checkpoints.latest_complete_checkpoint(remote_root)
    remote_step = checkpoints.parse_step(uri) if uri else None
    if remote_step is not None and remote_step > checkpoint_step(local):
        return _fetch(uri, ckpt_dir)
    return local


def explicit_checkpoint(resume_from: str, ckpt_dir: Path) -> Path:
    """`sft.resume_from`: one checkpoint folder, or a root whose newest finished checkpoint is used
    (local: `trainer_state.json` written; s3: COMPLETE marker). Fetched into `ckpt_dir` from S3."""
    if storage.is_s3(resume_from):
        single = checkpoints.parse_step(resume_from) is not None
        uri = resume_from if single else checkpoints.latest_complete_checkpoint(resume_from)
        if uri is None or not checkpoints.is_complete(uri):
            raise InputError(f"sft.resume_from={resume_from}: no complete checkpoint there")
        return _fetch(uri, ckpt_dir)
    path = Path(resume_from)
    found = path if _trainer_state(path) is not None else last_local_checkpoint(path)
    if found is None:
        raise InputError(
            f"sft.resume_from={resume_from}: no finished checkpoint there (a checkpoint-<step> "
            f"folder with {STATE_FILE}, or a folder holding them)"
        )
    log.info("sft: starting from %s (sft.resume_from)", found)
    return found


def _fetch(uri: str, ckpt_dir: Path) -> Path:
    step = checkpoints.parse_step(uri)
    if step is None:
        raise InputError(f"{uri}: not a checkpoint-<step> folder")
    target = ckpt_dir / checkpoints.checkpoint_name(step)
    shutil.rmtree(target, ignore_errors=True)  # a half-written local copy of the same step
    log.info("sft: fetching checkpoint %s to resume from", uri)
    return checkpoints.fetch_checkpoint(uri, target)


class SaveConfigCallback(TrainerCallback):
    """Write the resolved pipeline config into every checkpoint, so each one says how it was made."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.text = cfg.model_dump_json(indent=2)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            (
                Path(args.output_dir) / checkpoints.checkpoint_name(state.global_step) / CONFIG_FILE
            ).write_text(self.text)


class PublishCheckpointCallback(TrainerCallback):
    """After each local save, publish the checkpoint to `remote_root` and prune old remote ones."""

    def __init__(self, remote_root: str, keep: int) -> None:
        self.remote_root = remote_root
        self.keep = keep

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        _barrier()  # ZeRO-3 ranks write their own shards: wait until every rank has finished
        if state.is_world_process_zero:
            local = Path(args.output_dir) / checkpoints.checkpoint_name(state.global_step)
            checkpoints.publish_checkpoint(local, self.remote_root)
            checkpoints.prune_checkpoints(self.remote_root, self.keep)
        _barrier()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
