"""What runs SFT's steps: transformers' Trainer, its arguments from `sft.*`, and its resume fixed
for vision-language models under transformers 5.x.

transformers 5 saves Qwen2.5-VL weights in the original checkpoint layout (`visual.*`,
`model.layers.*`) and renames them back when `from_pretrained` loads them; but `Trainer`'s resume
loads `model.safetensors` with a bare `load_state_dict(strict=False)`, without the renaming
(huggingface/transformers#43701). Every weight is then reported missing, and training silently
continues from the *base* weights with the checkpoint's optimizer state. Here full-weight
checkpoints are loaded through `from_pretrained` (its renaming) and copied in strictly, so a
mismatch fails loudly. LoRA adapters and DeepSpeed checkpoints keep the Trainer's own paths
(adapter files and ZeRO states use the model's internal names).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from coldstart.common.config import ConfigError, SFTConfig


def check_global_batch(cfg: SFTConfig, world: int) -> None:
    """`sft.global_batch_size`, when given, must be what devices x batch x accumulation produce."""
    actual = world * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    if cfg.global_batch_size is not None and cfg.global_batch_size != actual:
        raise ConfigError(
            f"sft.global_batch_size={cfg.global_batch_size} but {world} devices x "
            f"per_device_train_batch_size={cfg.per_device_train_batch_size} x "
            f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} = {actual}; "
            "change gradient_accumulation_steps or the device count"
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
        # frozen embeddings would stop re-entrant grads
        gradient_checkpointing_kwargs={"use_reentrant": False},
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


def has_full_weights(checkpoint: str | Path) -> bool:
    return any(
        (Path(checkpoint) / name).is_file() for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME)
    )


class SFTTrainer(Trainer):
    """`transformers.Trainer` whose resume restores the checkpoint's weights for VL models."""

    def _load_from_checkpoint(
        self, resume_from_checkpoint: str, model: nn.Module | None = None
    ) -> None:
        model = self.model if model is None else model
        if (
            self.is_deepspeed_enabled
            or hasattr(model, "peft_config")
            or not has_full_weights(resume_from_checkpoint)
        ):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(model.parameters()).dtype
        saved = type(model).from_pretrained(resume_from_checkpoint, dtype=dtype)
        model.load_state_dict(saved.state_dict(), strict=True)
        del saved
