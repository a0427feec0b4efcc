"""The shipped DeepSpeed configs agree with the TrainingArguments once transformers resolves them."""

import json

import pytest
from transformers import TrainingArguments

from coldstart.common.config import ConfigError, SFTConfig, config_from_dict
from coldstart.common.models import load_model
from coldstart.common.zero import CONFIG_FILES, trainer_config_file
from coldstart.sft.trainer import training_arguments


def _autos(node, path=""):
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _autos(v, f"{path}.{k}" if path else k)]
    return [path] if node == "auto" else []


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
@pytest.mark.parametrize("bf16", [False, True])
def test_config_resolves_to_the_training_arguments(stage, bf16, tiny_model_dir, tmp_path):
    raw = json.loads(CONFIG_FILES[stage].read_text())
    assert raw["zero_optimization"]["stage"] == int(stage[-1])
    assert (
        "optimizer" not in raw and "scheduler" not in raw
    )  # the Trainer's AdamW + cosine, as on CPU
    model = load_model(tiny_model_dir)  # before the arguments: ZeRO-3 would partition at load
    cfg = SFTConfig(
        per_device_train_batch_size=3,
        gradient_accumulation_steps=5,
        max_grad_norm=0.7,
        bf16=bf16,
        deepspeed=stage,
    )
    args = training_arguments(cfg, tmp_path, False, str(CONFIG_FILES[stage]), cuda=False)
    ds = args.hf_deepspeed_config
    ds.trainer_config_finalize(args, model, num_training_steps=100)
    resolved = ds.config
    assert _autos(resolved) == []
    assert resolved["train_micro_batch_size_per_gpu"] == 3
    assert resolved["gradient_accumulation_steps"] == 5
    assert resolved["train_batch_size"] == args.world_size * 3 * 5
    assert resolved["gradient_clipping"] == 0.7
    assert resolved["bf16"]["enabled"] is bf16 and resolved["fp16"]["enabled"] is False
    hidden = model.config.text_config.hidden_size
    assert resolved["zero_optimization"]["reduce_bucket_size"] == hidden * hidden


def test_deepspeed_is_used_on_gpus_only():
    assert trainer_config_file("sft", "zero2", accelerator=False) is None
    assert trainer_config_file("sft", "none", accelerator=True) is None
    assert trainer_config_file("sft", "zero3", accelerator=True) == str(CONFIG_FILES["zero3"])


def test_lora_with_zero3_is_rejected_at_the_config():
    with pytest.raises(ConfigError, match=r"sft: .*lora_r > 0 with deepspeed zero3"):
        config_from_dict({"sft": {"lora_r": 8, "deepspeed": "zero3"}})


def test_paper_recipe_arguments(tmp_path):
    """The recipe knobs reach TrainingArguments unchanged (a typo here would silently change runs)."""
    cfg = SFTConfig(
        learning_rate=1e-5,
        weight_decay=0.1,
        adam_beta2=0.95,
        warmup_ratio=0.03,
        gradient_checkpointing=True,
    )
    args: TrainingArguments = training_arguments(
        cfg, tmp_path, has_eval=True, ds_config=None, cuda=False
    )
    assert (
        args.learning_rate,
        args.weight_decay,
        args.adam_beta2,
        args.lr_scheduler_type.value,
    ) == (1e-5, 0.1, 0.95, "cosine")
    assert (
        args.warmup_steps == 0.03
        and args.gradient_checkpointing
        and args.eval_strategy.value == "no"
    )
    assert args.remove_unused_columns is False and args.report_to == []
