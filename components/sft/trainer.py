"""The Trainer, with resume fixed for vision-language models under transformers 5.x.

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
from transformers import Trainer
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME


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
