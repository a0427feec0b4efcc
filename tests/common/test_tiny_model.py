"""The tiny preset: built offline, saved as a normal model dir, loaded by path, used with images."""

import json

import torch
from PIL import Image
from safetensors.torch import load_file

from coldstart.common.config import TinyModelConfig
from coldstart.common.generation import HFBackend, PromptInput, SamplingConfig
from coldstart.common.models import ModelLoadError, check_model_dir, load_model, load_processor
from coldstart.common.prompts import prompt_messages
from coldstart.common.tiny_model import build_tiny_model


def test_model_dir_has_the_files_of_a_real_checkpoint(tiny_model_dir):
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
        "generation_config.json",
    } <= names
    assert json.loads((tiny_model_dir / "config.json").read_text())["architectures"] == [
        "Qwen2_5_VLForConditionalGeneration"
    ]


def test_round_trip_forward_with_image_uses_mrope(tiny_model_dir):
    model, processor = load_model(tiny_model_dir), load_processor(tiny_model_dir)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    text = processor.apply_chat_template(
        prompt_messages("How many?", "sys", 1), tokenize=False, add_generation_prompt=True
    )
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text and text.endswith(
        "<|im_start|>assistant\n"
    )
    inputs = processor(text=[text], images=[Image.new("RGB", (56, 56), "red")], return_tensors="pt")
    assert (
        "mm_token_type_ids" in inputs
    )  # without it Qwen2.5-VL silently falls back to 1-D positions
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == int(inputs["image_grid_thw"].prod()) // 4  # 2x2 spatial merge
    out = model(**inputs)
    assert out.logits.shape == (
        1,
        inputs["input_ids"].shape[1],
        model.config.text_config.vocab_size,
    )
    assert torch.isfinite(out.logits).all()


def test_generate_with_image(tiny_model_dir):
    backend = HFBackend(
        load_model(tiny_model_dir), load_processor(tiny_model_dir), "sys", batch_size=2
    )
    prompts = [
        PromptInput("What is 1+1?", [Image.new("RGB", (56, 56), c)])
        for c in ("red", "blue", "green")
    ]
    out = backend.generate(prompts, SamplingConfig(max_new_tokens=8, temperature=1.0, n=2))
    assert [len(group) for group in out] == [2, 2, 2]
    assert all(
        0 < len(c.token_ids) <= 8 and c.finish_reason in ("stop", "length") for g in out for c in g
    )


def test_build_is_seeded_and_deterministic(tmp_path, tiny_model_dir):
    again = build_tiny_model(tmp_path / "again", TinyModelConfig(), 3136, 3136)
    a, b = load_file(tiny_model_dir / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tiny_model_dir / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()
    other = build_tiny_model(tmp_path / "other", TinyModelConfig(seed=1), 3136, 3136)
    c = load_file(other / "model.safetensors")
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_missing_processor_is_named(tmp_path, tiny_model_dir):
    broken = tmp_path / "no_processor"
    broken.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((tiny_model_dir / name).read_bytes())
    try:
        check_model_dir(broken)
    except ModelLoadError as exc:
        assert "no image processor" in str(exc) and str(broken) in str(exc)
    else:
        raise AssertionError("a model dir without a processor must be rejected")
