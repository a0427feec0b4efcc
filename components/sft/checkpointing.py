"""Where SFT checkpoints live and which one a rerun resumes from.

Locally the Trainer writes `<output>/checkpoints/checkpoint-<step>/` (model, optimizer, scheduler,
RNG state, data position in `trainer_state.json`). When the run's output is on S3 (an `s3://`
`--output`, or a pipeline whose `output_dir` is `s3://`), each saved checkpoint is also published
to a remote root with a COMPLETE marker (`components.common.checkpoints`), so a new pod, whose
local disk is empty, fetches the newest complete one and resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from components.common import checkpoints, storage
from components.common.config import PipelineConfig

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"  # written last by Trainer._save_checkpoint
CONFIG_FILE = "coldstart_config.json"
RESULT_FILE = "sft_result.json"  # written (and uploaded) last: the output is complete


def local_checkpoint_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def remote_checkpoint_root(cfg: PipelineConfig, output: str, run_id: str) -> str | None:
    """Where checkpoints are published: `<s3 output>/checkpoints`, else under an s3 `output_dir`."""
    if storage.is_s3(output):
        return storage.join(output, "checkpoints")
    if storage.is_s3(cfg.output_dir):
        return storage.join(cfg.output_dir, run_id, "sft", "checkpoints")
    return None


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


def _trainer_state(path: Path) -> dict | None:
    """The checkpoint's trainer state, or None while it is missing or half-written."""
    try:
        return json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def checkpoint_step(path: Path | None) -> int:
    state = _trainer_state(path) if path is not None else None
    return int(state["global_step"]) if state else 0


def resume_point(ckpt_dir: Path, remote_root: str | None) -> Path | None:
    """The checkpoint to resume from: the newest of local and (fetched) remote, or None to start fresh."""
    local = last_local_checkpoint(ckpt_dir)
    if remote_root is None:
        return local
    uri = checkpoints.latest_complete_checkpoint(remote_root)
    remote_step = checkpoints.parse_step(uri) if uri else None
    if remote_step is not None and remote_step > checkpoint_step(local):
        target = ckpt_dir / checkpoints.checkpoint_name(remote_step)
        shutil.rmtree(target, ignore_errors=True)  # a half-written local copy of the same step
        log.info("sft: fetching checkpoint %s to resume from", uri)
        return checkpoints.fetch_checkpoint(uri, target)
    return local


def training_digest(cfg: PipelineConfig) -> str:
    """Hash of what determines the trained weights (not resources, eval or tracking settings)."""
    relevant = {
        "sft": cfg.sft.model_dump(mode="json", exclude={"resources"}),
        "model": cfg.model.model_dump(mode="json"),
        "pixels": [cfg.data.min_pixels, cfg.data.max_pixels],
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def write_result(output_dir: Path, cfg: PipelineConfig, metrics: dict[str, float]) -> None:
    """Mark the output complete: the final model is saved, these are its metrics."""
    text = json.dumps({"digest": training_digest(cfg), "metrics": metrics}, indent=2)
    (output_dir / RESULT_FILE).write_text(text)


def finished_result(output: str, cfg: PipelineConfig) -> dict[str, float] | None:
    """The metrics of a completed run of the same training config at `output` (local or s3://), else None.

    A rerun of a finished stage (a retried pod that died during upload, a user rerunning the CLI)
    then returns at once instead of resuming: transformers' Trainer, resumed at its last step of a
    `max_steps` run, would take one step more (it checks max_steps only after a step).
    """
    uri = storage.join(output, RESULT_FILE)
    if not storage.exists(uri):
        return None
    result: dict[str, Any] = json.loads(storage.read_text(uri))
    if result.get("digest") != training_digest(cfg):
        log.info("sft: %s holds a run of another training config; resuming/retraining", output)
        return None
    return result["metrics"]


class SaveConfigCallback(TrainerCallback):
    """Write the resolved pipeline config into every checkpoint, so each one says how it was made."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.text = cfg.model_dump_json(indent=2)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            (
                Path(args.output_dir) / checkpoints.checkpoint_name(state.global_step) / CONFIG_FILE
            ).write_text(self.text)


class PublishCheckpointCallback(TrainerCallback):
    """After each local save, publish the checkpoint to `remote_root` and prune old remote ones."""

    def __init__(self, remote_root: str, keep: int) -> None:
        self.remote_root = remote_root
        self.keep = keep

    def on_save(self, args, state, control, **kwargs):
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
