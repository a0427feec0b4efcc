"""What trains, for SFT and GRPO alike: the vision tower frozen on request (SFT's default, not
GRPO's), the merger optional, LoRA on the language model only."""

import pytest

from coldstart.common.config import GRPOConfig, SFTConfig
from coldstart.common.models import load_model
from coldstart.common.trainable import prepare_trainable, trainable_groups


@pytest.fixture
def model(tiny_model_dir):
    return load_model(tiny_model_dir)


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_default_freezes_the_tower_and_trains_merger_and_language_model(model):
    model = prepare_trainable(model, SFTConfig(), "sft")
    names = _trainable(model)
    assert not any(".visual.blocks." in n or ".visual.patch_embed." in n for n in names)
    assert any(".visual.merger." in n for n in names)
    assert trainable_groups(model) == ["language_model", "lm_head", "visual.merger"]


def test_merger_can_be_frozen_with_the_tower(model):
    model = prepare_trainable(model, SFTConfig(train_merger=False), "sft")
    assert trainable_groups(model) == ["language_model", "lm_head"]


def test_unfrozen_tower_trains_everything(model):
    model = prepare_trainable(model, SFTConfig(freeze_vision_tower=False), "sft")
    assert len(_trainable(model)) == len(list(model.parameters()))


def test_lora_adapts_language_model_linears_and_saves_the_merger(model):
    base_keys = set(model.state_dict())
    peft_model = prepare_trainable(model, SFTConfig(lora_r=4), "sft")
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


def test_grpo_trains_the_tower_by_default_and_freezes_it_as_sft_does(tiny_model_dir):
    """The paper's GRPO trains the vision tower; asked to freeze it, GRPO freezes what SFT freezes."""
    trained = prepare_trainable(load_model(tiny_model_dir), GRPOConfig(), "grpo")
    assert "visual.blocks" in trainable_groups(trained)
    grpo = prepare_trainable(
        load_model(tiny_model_dir), GRPOConfig(freeze_vision_tower=True), "grpo"
    )
    sft = prepare_trainable(load_model(tiny_model_dir), SFTConfig(), "sft")
    assert _trainable(grpo) == _trainable(sft)
