"""DeepSpeed ZeRO-2 / ZeRO-3 configs, shared by SFT and GRPO (the paper trained with ZeRO-2):
the one place where the stages' ZeRO settings live. GRPO's engine on top of them is
components/grpo/engine_zero.py.

The JSON files next to this module (package data, so the images have them) leave every value
a trainer knows to "auto": batch sizes, accumulation, clipping, bf16/fp16 and the bucket sizes
derived from the model's width. SFT hands the file to transformers' TrainingArguments, which
fills the "auto"s from `sft.*`; GRPO runs its own loop, so it fills them here (`resolve_auto`)
from `grpo.*`. One file per stage of ZeRO, two ways of filling it: the settings that are not
"auto" (overlap, bucketing, ZeRO-3 limits) cannot drift apart between the two stages.

They have no optimizer or scheduler section on purpose: both stages build their own AdamW and
schedule, the same ones a run without DeepSpeed uses.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

ZERO_STAGES = ("zero2", "zero3")
CONFIG_FILES = {stage: Path(__file__).with_name(f"{stage}.json") for stage in ZERO_STAGES}
AUTO = "auto"


def zero_template(stage: str) -> dict[str, Any]:
    """A fresh copy of the shipped config of `stage` ("zero2" or "zero3"), "auto" values included."""
    if stage not in CONFIG_FILES:
        raise ValueError(f"unknown ZeRO stage {stage!r}; valid: {list(ZERO_STAGES)}")
    return json.loads(CONFIG_FILES[stage].read_text())


def model_width(model: torch.nn.Module) -> int:
    """The language model's hidden size, looked up as transformers does for its "auto" buckets."""
    config = model.config
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is None:
            continue
        if getattr(cfg, "hidden_size", None):
            return int(cfg.hidden_size)
        if getattr(cfg, "hidden_sizes", None):
            return int(max(cfg.hidden_sizes))
    raise ValueError(
        f"{type(model).__name__}: its config has no hidden_size; cannot size the ZeRO buckets"
    )


def width_buckets(hidden_size: int) -> dict[str, int]:
    """The bucket sizes transformers derives from the model width (`HfTrainerDeepSpeedConfig`)."""
    return {
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }


def resolve_auto(config: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `config` with each "auto" leaf replaced by `values[dotted key]`.

    Keys of `values` that are absent from `config` or not "auto" there are ignored (ZeRO-2 has
    no stage3_* keys; a value the file fixes stays fixed). An "auto" left without a value is an
    error: DeepSpeed itself would reject it far from here.
    """
    out = copy.deepcopy(dict(config))
    missing: list[str] = []

    def fill(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                fill(value, f"{dotted}.")
            elif value == AUTO:
                if dotted in values:
                    node[key] = values[dotted]
                else:
                    missing.append(dotted)

    fill(out, "")
    if missing:
        raise ValueError(
            f"DeepSpeed config values left 'auto' with nothing to fill them: {missing}"
        )
    return out


def zero_wanted(section: str, stage: str, accelerator: bool) -> bool:
    """Whether `<section>.deepspeed=<stage>` applies: a ZeRO stage and a device to run it on."""
    if stage == "none":
        return False
    if not accelerator:
        log.info(
            "%s.deepspeed=%s ignored: no CUDA device (DeepSpeed ZeRO is for GPU runs)",
            section,
            stage,
        )
        return False
    return True


def trainer_config_file(section: str, stage: str, accelerator: bool) -> str | None:
    """Path of the ZeRO config for transformers' TrainingArguments(deepspeed=...), or None (no
    ZeRO asked for, or no GPU to run it on). Every value the Trainer knows is "auto" there, so
    transformers fills it from the TrainingArguments and they cannot disagree."""
    if not zero_wanted(section, stage, accelerator):
        return None
    return str(CONFIG_FILES[stage])
