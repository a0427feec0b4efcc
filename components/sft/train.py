"""The SFT run itself: data, model, Trainer, resume, train, evaluate, save. Read top to bottom.

Everything around it (MLflow run, S3 inputs and outputs, torchrun) lives in `cli.py` and
`launcher.py`; this module sees local paths and a tracker that may be None (ranks other than 0).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

import torch
from transformers import TrainingArguments, set_seed

from components.common.config import ConfigError, PipelineConfig, SFTConfig, flatten
from components.common.models import load_model, load_processor
from components.sft.checkpointing import (
    CONFIG_FILE,
    PublishCheckpointCallback,
    SaveConfigCallback,
    checkpoint_step,
    local_checkpoint_dir,
    resume_point,
)
from components.sft.collator import SFTCollator
from components.sft.data import check_split, load_sft_splits
from components.sft.freezing import parameter_counts, prepare_trainable
from components.sft.monitor import TrackerCallback, loss_curve, loss_points
from components.sft.trainer import SFTTrainer
from components.sft.zero import deepspeed_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTPaths:
    """Local directories of one run, plus the remote checkpoint root when checkpoints go to S3."""

    base_model: Path
    data: Path
    output: Path
    remote_checkpoints: str | None = None


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_global_batch(cfg: SFTConfig, world: int) -> None:
    """`sft.global_batch_size`, when given, must be what devices x batch x accumulation produce."""
    actual = world * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    if cfg.global_batch_size is not None and cfg.global_batch_size != actual:
        raise ConfigError(
            f"sft.global_batch_size={cfg.global_batch_size} but {world} devices x per_device_train_batch_size="
            f"{cfg.per_device_train_batch_size} x gradient_accumulation_steps={cfg.gradient_accumulation_steps} "
            f"= {actual}; change gradient_accumulation_steps or the device count"
        )


def training_arguments(
    cfg: SFTConfig, ckpt_dir: Path, has_eval: bool, ds_config: str | None, cuda: bool
) -> TrainingArguments:
    """The recipe knobs of `sft.*` as TrainingArguments; checkpoints go to `ckpt_dir`."""
    periodic_eval = has_eval and cfg.eval_steps > 0
    return TrainingArguments(
        output_dir=str(ckpt_dir),
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a fraction of the total steps
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_grad_norm=cfg.max_grad_norm,
        bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={
            "use_reentrant": False
        },  # frozen embeddings would stop re-entrant grads
        eval_strategy="steps" if periodic_eval else "no",
        eval_steps=cfg.eval_steps if periodic_eval else None,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=False,  # the collator needs the raw rows (images, problem, solution)
        dataloader_num_workers=cfg.dataloader_num_workers,
        include_num_input_tokens_seen="non_padding",
        report_to="none",  # metrics go through TrackerCallback under the stage's key names
        deepspeed=ds_config,
        use_cpu=not cuda,
        disable_tqdm=False,
    )


def load_dtype(cfg: PipelineConfig, ds_config: str | None) -> str:
    """fp32 master weights unless DeepSpeed is on (it keeps its own fp32 copy of what it trains).

    `sft.bf16` without DeepSpeed is autocast over fp32 weights; loading bf16 weights there would
    make AdamW update in bf16 and lose small updates.
    """
    return cfg.model.torch_dtype if ds_config is not None else "float32"


def prepare_data(
    data_dir: Path, processor: Any, cfg: SFTConfig
) -> tuple[Any, Any, dict[str, float]]:
    train_raw, eval_raw = load_sft_splits(data_dir)
    train = check_split(train_raw, processor, cfg, "train")
    evalset = check_split(eval_raw, processor, cfg, "validation") if eval_raw is not None else None
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
    train, evalset, data_metrics = prepare_data(paths.data, processor, sft)
    ds_config = deepspeed_config(sft, cuda)
    # TrainingArguments before the model: with ZeRO-3 it makes from_pretrained load partitioned.
    args = training_arguments(
        sft, local_checkpoint_dir(paths.output), evalset is not None, ds_config, cuda
    )
    model = load_model(paths.base_model, load_dtype(cfg, ds_config), cfg.model.attn_implementation)
    set_seed(sft.seed)  # LoRA adapters are initialised randomly: same config, same adapters
    model = prepare_trainable(model, sft)
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


def save_final_model(trainer: SFTTrainer, output: Path, cfg: PipelineConfig) -> None:
    """A plain model directory (safetensors, config, processor, chat template) for GRPO, eval and vLLM.

    LoRA adapters are merged into the weights first: downstream stages load a model, not an adapter.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        merged = model.merge_and_unload()
        if trainer.is_world_process_zero():
            merged.save_pretrained(output)
            trainer.processing_class.save_pretrained(output)
    else:
        trainer.save_model(str(output))  # gathers ZeRO-3 shards; saves the processor too
    if trainer.is_world_process_zero():
        (output / CONFIG_FILE).write_text(cfg.model_dump_json(indent=2))
        (output / "training_args.bin").unlink(
            missing_ok=True
        )  # a pickle; the config file says it all
        if not cfg.sft.keep_checkpoints:
            shutil.rmtree(local_checkpoint_dir(output), ignore_errors=True)


def run_sft(cfg: PipelineConfig, paths: SFTPaths, tracker: Any | None) -> dict[str, float]:
    """Train, evaluate and save; returns the stage's final metrics (also logged to `tracker`)."""
    started = time.perf_counter()
    monitor = TrackerCallback(tracker)
    trainer, metrics = build_trainer(cfg, paths, monitor)
    if tracker is not None:
        tracker.log_params(flatten(cfg.sft, "sft."))
        tracker.log_metrics(metrics)

    # Resume: the newest finished local checkpoint, or the newest complete remote one, fetched.
    with trainer.args.main_process_first(local=True, desc="locating the checkpoint to resume from"):
        resume = resume_point(local_checkpoint_dir(paths.output), paths.remote_checkpoints)
    resumed_from = checkpoint_step(resume)  # read now: rotation may delete that checkpoint later
    if resume is not None:
        log.info("sft: resuming from %s (step %d)", resume, resumed_from)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    eval_metrics = trainer.evaluate() if trainer.eval_dataset is not None else {}
    save_final_model(trainer, paths.output, cfg)

    metrics.update(final_metrics(trainer, monitor, resumed_from, eval_metrics))
    metrics["sft/runtime_s"] = time.perf_counter() - started
    if tracker is not None and trainer.is_world_process_zero():
        tracker.log_metrics(metrics, step=trainer.state.global_step)
        tracker.log_figure(loss_curve(trainer.state.log_history), "sft/loss_curve.png")
    if trainer.is_world_process_zero():
        log.info("sft: %s", metrics)
    return metrics


def final_metrics(
    trainer: SFTTrainer, monitor: TrackerCallback, resumed_from: int, eval_metrics: dict
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
