"""What trains: frozen vision tower by default, merger optional, LoRA on the language model only."""

import pytest

from components.common.config import SFTConfig
from components.common.models import load_model
from components.sft.freezing import prepare_trainable, trainable_groups


@pytest.fixture
def model(tiny_model_dir):
    return load_model(tiny_model_dir)


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_default_freezes_the_tower_and_trains_merger_and_language_model(model):
    model = prepare_trainable(model, SFTConfig())
    names = _trainable(model)
    assert not any(".visual.blocks." in n or ".visual.patch_embed." in n for n in names)
    assert any(".visual.merger." in n for n in names)
    assert trainable_groups(model) == ["language_model", "lm_head", "visual.merger"]


def test_merger_can_be_frozen_with_the_tower(model):
    model = prepare_trainable(model, SFTConfig(train_merger=False))
    assert trainable_groups(model) == ["language_model", "lm_head"]


def test_unfrozen_tower_trains_everything(model):
    model = prepare_trainable(model, SFTConfig(freeze_vision_tower=False))
    assert len(_trainable(model)) == len(list(model.parameters()))


def test_lora_adapts_language_model_linears_and_saves_the_merger(model):
    base_keys = set(model.state_dict())
    peft_model = prepare_trainable(model, SFTConfig(lora_r=4))
    names = _trainable(peft_model)
    lora = [n for n in names if "lora_" in n]
    assert lora and all(".language_model." in n for n in lora)
    assert {n for n in names if "lora_" not in n} and all(
        ".merger." in n for n in names if "lora_" not in n
    )
    merged = peft_model.merge_and_unload()
    assert (
        set(merged.state_dict()) == base_keys
    )  # a plain model again: what vLLM and the next stage load
