"""The tiny SFT run learns the cold-start format (configs/tiny.yaml, as `coldstart run` uses it).

Measured on 2 CPU cores (2026-11-26): loss 6.45 -> 0.34 (mean of the last 10 of 305 steps, ~15 s
of training), and 64 of 64 greedy completions on the held-out problems contained `\\boxed{`.
The floors below leave a wide margin for other machines and library versions.
"""

import pytest

from coldstart.common.config import load_config
from coldstart.common.generation import HFBackend, PromptInput, SamplingConfig
from coldstart.common.models import load_model, load_processor
from coldstart.common.saved_datasets import load_with_images
from coldstart.data_prep.stage import DataPrepOutputs, run_data_prep
from coldstart.sft.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BOXED_FLOOR = 0.75
MAX_NEW_TOKENS = 192  # the longest synthetic solutions are ~150 tokens


def test_tiny_sft_learns_the_boxed_format(tmp_path, tiny_model_dir):
    cfg = load_config(
        "configs/tiny.yaml", [f"output_dir={tmp_path / 'outputs'}", "tracking.system_metrics=false"]
    )
    data = DataPrepOutputs.under(tmp_path)
    run_data_prep(cfg, data, tmp_path / "cache")
    metrics = main(cfg, tiny_model_dir, data.sft, tmp_path / "model", "learning")

    assert metrics["sft/train/loss_last"] < metrics["sft/train/loss_first"] / 4
    assert metrics["sft/eval/loss"] < metrics["sft/train/loss_first"] / 4

    model, processor = load_model(tmp_path / "model"), load_processor(tmp_path / "model")
    held_out = load_with_images(data.eval, data.images)
    prompts = [PromptInput(row["problem"], row["images"]) for row in held_out]
    outputs = HFBackend(model, processor, cfg.sft.system_prompt, batch_size=32).generate(
        prompts, SamplingConfig(max_new_tokens=MAX_NEW_TOKENS)
    )
    texts = [group[0].text for group in outputs]
    boxed = sum("\\boxed{" in text for text in texts) / len(texts)
    print(
        f"tiny SFT: loss {metrics['sft/train/loss_first']:.2f} -> {metrics['sft/train/loss_last']:.2f}, "
        f"boxed {boxed:.0%} of {len(texts)} held-out problems"
    )
    assert boxed >= BOXED_FLOOR, texts[:3]
