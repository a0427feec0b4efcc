"""DeepSpeed ZeRO-2 / ZeRO-3 for SFT on GPUs (the paper trained with ZeRO-2).

The configs are shared with GRPO (`components/common/zero.py`, `zero2.json`, `zero3.json`):
every value the Trainer knows is "auto" there, so transformers fills it from the
TrainingArguments and they cannot disagree, which `tests/sft/test_zero.py` checks through
transformers' own resolver. No optimizer or scheduler section: the Trainer then builds its
AdamW and cosine schedule, the same ones a CPU or single-GPU run uses, from `sft.*`.
"""

from __future__ import annotations

from components.common.config import SFTConfig
from components.common.zero import CONFIG_FILES, zero_wanted

__all__ = ["CONFIG_FILES", "deepspeed_config"]


def deepspeed_config(cfg: SFTConfig, cuda: bool) -> str | None:
    """Path of the DeepSpeed config for TrainingArguments, or None (no ZeRO, or no GPU to run it on)."""
    if not zero_wanted("sft", cfg.deepspeed, cuda):
        return None
    return str(CONFIG_FILES[cfg.deepspeed])
