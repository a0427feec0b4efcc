"""The SFT stage: data, model, Trainer, resume, train, evaluate, save. Read top to bottom.

Everything around it (inputs from S3, torchrun, the MLflow run, the finished-output marker,
the upload) is the shared stage runner's (components/common/stage_runner.py); this module sees
local paths and a tracker that is None on ranks other than 0.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import TYPE_CHECKING, Any

import torch
from transformers import set_seed

from coldstart.common import storage
from coldstart.common.config import PipelineConfig, SFTConfig
from coldstart.common.image_store import STORE_FLAG
from coldstart.common.models import load_model, load_processor
from coldstart.common.stage_runner import StageContext
from coldstart.common.trainable import parameter_counts, prepare_trainable
from coldstart.common.zero import trainer_config_file
from coldstart.sft.checkpointing import (
    CONFIG_FILE,
    PublishCheckpointCallback,
    SaveConfigCallback,
    checkpoint_step,
    resume_point,
)
from coldstart.sft.collator import SFTCollator
from coldstart.sft.data import check_split, load_sft_splits
from coldstart.sft.monitor import TrackerCallback, loss_curve, loss_points
from coldstart.sft.trainer import SFTTrainer, check_global_batch, training_arguments

if TYPE_CHECKING:  # tracking imports mlflow, which a bare GPU check machine lacks
    from coldstart.common.tracking import StageTracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTPaths:
    """Local directories of one run, plus the remote checkpoint root when checkpoints go to S3."""

    base_model: Path
    data: Path
    output: Path
    checkpoints: Path  # the Trainer's checkpoint-<step>/ folders of this run
    remote_checkpoints: str | None = None
    images: Path | None = None  # data_prep's image store, for a dataset of image keys

    @classmethod
    def of(cls, ctx: StageContext) -> SFTPaths:
        """The stage runner's context as SFT's paths: checkpoints in the run's root when it is a
        local folder; else trained locally and published there (`s3://`)."""
        remote = storage.is_s3(ctx.checkpoint_root)
        local = ctx.output / "checkpoints" / ctx.run_id if remote else Path(ctx.checkpoint_root)
        return cls(
            base_model=ctx.inputs["base-model"],
            data=ctx.inputs["data"],
            output=ctx.output,
            checkpoints=local,
            remote_checkpoints=ctx.checkpoint_root if remote else None,
            images=ctx.inputs.get(STORE_FLAG),
        )


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def load_dtype(cfg: PipelineConfig, ds_config: str | None) -> str:
    """fp32 master weights unless DeepSpeed is on (it keeps its own fp32 copy of what it trains).

    `sft.bf16` without DeepSpeed is autocast over fp32 weights; loading bf16 weights there would
    make AdamW update in bf16 and lose small updates.
    """
    return cfg.model.torch_dtype if ds_config is not None else "float32"


def prepare_data(
    data_dir: Path, processor: Any, cfg: SFTConfig, images: Path | None = None
) -> tuple[Any, Any, dict[str, float]]:
    """The checked train and validation splits, and what the checks did (rows kept, cut, dropped)."""
    splits = load_sft_splits(data_dir, images)
    train = check_split(splits.train, processor, cfg, "train", splits.store)
    evalset = (
        check_split(splits.validation, processor, cfg, "validation", splits.store)
        if splits.validation is not None
        else None
    )
    metrics = {
        "sft/data/train_rows": len(train.dataset),
        "sft/data/eval_rows": len(evalset.dataset) if evalset else 0,
        "sft/data/truncated_rows": len(train.truncated)
        + (len(evalset.truncated) if evalset else 0),
        "sft/data/dropped_rows": len(train.dropped) + (len(evalset.dropped) if evalset else 0),
        "sft/data/max_tokens": max(train.max_tokens, evalset.max_tokens if evalset else 0),
    }
    return train.dataset, (evalset.dataset if evalset else None), metrics


def build_trainer(
    cfg: PipelineConfig, paths: SFTPaths, monitor: TrackerCallback
) -> tuple[SFTTrainer, dict[str, float]]:
    """Processor, checked data, (frozen / LoRA) model and the Trainer with its callbacks."""
    sft = cfg.sft
    cuda = torch.cuda.is_available()
    check_global_batch(sft, world_size())
    processor = load_processor(paths.base_model, cfg.data.min_pixels, cfg.data.max_pixels)
    train, evalset, data_metrics = prepare_data(paths.data, processor, sft, paths.images)
    ds_config = trainer_config_file("sft", sft.deepspeed, cuda)
    # TrainingArguments before the model: with ZeRO-3 it makes from_pretrained load partitioned.
    args = training_arguments(sft, paths.checkpoints, evalset is not None, ds_config, cuda)
    model = load_model(paths.base_model, load_dtype(cfg, ds_config), cfg.model.attn_implementation)
    set_seed(sft.seed)  # LoRA adapters are initialised randomly: same config, same adapters
    model = prepare_trainable(model, sft, "sft")
    callbacks: list[Any] = [monitor, SaveConfigCallback(cfg)]
    if paths.remote_checkpoints:
        callbacks.append(PublishCheckpointCallback(paths.remote_checkpoints, sft.save_total_limit))
    trainer = SFTTrainer(
        model=model,
        args=args,
        data_collator=SFTCollator(processor, sft.system_prompt, sft.max_length),
        train_dataset=train,
        eval_dataset=evalset,
        processing_class=processor,
        callbacks=callbacks,
    )
    counts = parameter_counts(model)
    data_metrics.update(
        {"sft/params/trainable": counts["trainable"], "sft/params/total": counts["total"]}
    )
    return trainer, data_metrics


def save_final_model(trainer: SFTTrainer, paths: SFTPaths, cfg: PipelineConfig) -> None:
    """A plain model directory (safetensors, config, processor, chat template) for GRPO, eval and vLLM.

    LoRA adapters are merged into the weights first: downstream stages load a model, not an adapter.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        merged = model.merge_and_unload()
        if trainer.is_world_process_zero():
            merged.save_pretrained(paths.output)
            trainer.processing_class.save_pretrained(paths.output)
    else:
        trainer.save_model(str(paths.output))  # gathers ZeRO-3 shards; saves the processor too
    if trainer.is_world_process_zero():
        (paths.output / CONFIG_FILE).write_text(cfg.model_dump_json(indent=2))
        # a pickle; the config file says it all
        (paths.output / "training_args.bin").unlink(missing_ok=True)
        if not cfg.sft.keep_checkpoints:
            shutil.rmtree(paths.checkpoints, ignore_errors=True)
            _remove_if_empty(paths.checkpoints.parent)


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def run_sft(cfg: PipelineConfig, paths: SFTPaths, tracker: StageTracker | None) -> dict[str, float]:
    """Train, evaluate and save; returns the stage's final metrics (also logged to `tracker`)."""
    started = time.perf_counter()
    monitor = TrackerCallback(tracker)
    trainer, metrics = build_trainer(cfg, paths, monitor)
    if tracker is not None:
        tracker.log_metrics(metrics)

    # Resume: this run's newest finished checkpoint (local, or remote and fetched); without
    # one, `sft.resume_from` when given; else from the start.
    with trainer.args.main_process_first(local=True, desc="locating the checkpoint to resume from"):
        resume = resume_point(paths.checkpoints, paths.remote_checkpoints, cfg.sft.resume_from)
    resumed_from = checkpoint_step(resume)  # read now: rotation may delete that checkpoint later
    if resume is not None:
        log.info("sft: resuming from %s (step %d)", resume, resumed_from)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    eval_metrics = trainer.evaluate() if trainer.eval_dataset is not None else {}
    save_final_model(trainer, paths, cfg)

    metrics.update(final_metrics(trainer, monitor, resumed_from, eval_metrics))
    metrics["sft/runtime_s"] = time.perf_counter() - started
    if tracker is not None and trainer.is_world_process_zero():
        tracker.log_metrics(metrics, step=trainer.state.global_step)
        tracker.log_figure(loss_curve(trainer.state.log_history), "sft/loss_curve.png")
    if trainer.is_world_process_zero():
        log.info("sft: %s", metrics)
    return metrics


def final_metrics(
    trainer: SFTTrainer,
    monitor: TrackerCallback,
    resumed_from: int,
    eval_metrics: dict[str, float],
) -> dict[str, float]:
    _, losses = loss_points(trainer.state.log_history, "loss")
    out = {
        "sft/global_step": float(trainer.state.global_step),
        "sft/resumed_from_step": float(resumed_from),
        "sft/steps_run": float(monitor.steps_run),
    }
    if losses:
        out.update({"sft/train/loss_first": losses[0], "sft/train/loss_last": losses[-1]})
    if monitor.tokens_per_second:
        out["sft/train/tokens_per_second_mean"] = mean(monitor.tokens_per_second)
    if "eval_loss" in eval_metrics:
        out["sft/eval/loss"] = float(eval_metrics["eval_loss"])
    return out
