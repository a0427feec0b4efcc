"""Which weights a training stage updates: one meaning of the keys for SFT and GRPO.

Qwen2.5-VL keeps the vision tower at `model.visual` and the aligner (patch merger, the MLP that
maps vision features into the language model's width) at `model.visual.merger`; the language
model is `model.language_model` plus `lm_head`.

- `freeze_vision_tower`: the tower's blocks and patch embedding get no updates; the merger
  trains when `train_merger`. Default: frozen in SFT, trained in GRPO (the paper's recipe).
- `lora_r > 0`: LoRA adapters (`lora_alpha`, `lora_dropout`) on the language model's linear
  layers only; every base weight is frozen, the vision tower included, and the merger trains
  (saved whole through `modules_to_save`) when `train_merger`.
"""

from __future__ import annotations

import logging
import re
from typing import Protocol

from torch import nn

from coldstart.common.errors import InputError

log = logging.getLogger(__name__)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Language-model linears only: the vision tower has modules of the same names (mlp.gate_proj ...).
LORA_TARGET_REGEX = rf".*language_model\..*\.({'|'.join(LORA_TARGETS)})$"


class TrainableSettings(Protocol):
    """The keys of `sft.*` and `grpo.*` read here (config.TrainedWeightsConfig)."""

    freeze_vision_tower: bool
    train_merger: bool
    lora_r: int
    lora_alpha: int
    lora_dropout: float


def vision_tower(model: nn.Module) -> nn.Module:
    """The vision encoder of a Qwen2(.5)-VL model, wherever this transformers version puts it."""
    for path in ("model.visual", "visual"):
        module: nn.Module | None = model
        for name in path.split("."):
            module = getattr(module, name, None)
        if module is not None:
            return module
    raise InputError(
        f"{type(model).__name__} has no vision tower at model.visual; "
        "only Qwen2/2.5-VL models are supported"
    )


def freeze(model: nn.Module, cfg: TrainableSettings) -> nn.Module:
    """Everything trains but the vision tower when `freeze_vision_tower` (its merger trains when
    `train_merger`)."""
    model.requires_grad_(True)
    if cfg.freeze_vision_tower:
        visual = vision_tower(model)
        visual.requires_grad_(False)
        if cfg.train_merger:
            visual.get_submodule("merger").requires_grad_(True)
    return model


def apply_lora(model: nn.Module, cfg: TrainableSettings, section: str) -> nn.Module:
    """Wrap the language model's linears in LoRA adapters; everything else frozen but the merger."""
    from peft import LoraConfig, get_peft_model

    if not cfg.freeze_vision_tower:
        log.warning(
            "%s.lora_r > 0: the vision tower stays frozen (LoRA adapts the language model only)",
            section,
        )
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=LORA_TARGET_REGEX,
        modules_to_save=["merger"] if cfg.train_merger else None,
        task_type="CAUSAL_LM",
    )
    peft_model: nn.Module = get_peft_model(model, lora)
    return peft_model


def prepare_trainable(model: nn.Module, cfg: TrainableSettings, section: str) -> nn.Module:
    """Apply the configured freezing or LoRA; returns the model to train (a PeftModel for LoRA).

    `section` ("sft" / "grpo") names the config section in logs and warnings.
    """
    model = apply_lora(model, cfg, section) if cfg.lora_r > 0 else freeze(model, cfg)
    counts = parameter_counts(model)
    log.info(
        "%s: training %d of %d parameters (%s)",
        section,
        counts["trainable"],
        counts["total"],
        ", ".join(trainable_groups(model)),
    )
    return model


def parameter_counts(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def trainable_groups(model: nn.Module) -> list[str]:
    """Coarse names of what trains (`visual.merger`, `language_model`, `lm_head`, `lora`), for logs."""
    groups = set()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "lora_" in name:
            groups.add("lora")
        elif match := re.search(r"visual\.(merger|blocks|patch_embed)", name):
            groups.add(f"visual.{match.group(1)}")
        elif "language_model" in name:
            groups.add("language_model")
        else:
            groups.add(name.split(".")[-2] if "." in name else name)
    return sorted(groups)
