"""The RL set at load: prompts longer than grpo.max_prompt_length are measured as the processor
encodes them, dropped once and counted; none left is an error naming the field to change."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from coldstart.common.errors import InputError
from coldstart.common.generation import PromptInput
from coldstart.common.token_counts import prompt_lengths
from coldstart.grpo.data import PromptsTooLongError, load_rl_prompts
from coldstart.grpo.distributed import World
from coldstart.grpo.rollout import encode_prompts
from coldstart.grpo.stage import check_images_for_zero3
from tests.grpo.conftest import tiny_config
from tests.grpo.test_trainer import DENSE, FAST, paths_for

LONG = " Explain every step of the count in great detail." * 8  # ~190 more tokens


def with_long_rows(
    rl_dir: str | Path, out: Path, long_text: str, rows: int, every: int = 2
) -> tuple[Path, Path]:
    """The first `rows` rows of the RL set with every `every`-th one (rows every-1, 2*every-1, ...)
    made longer, saved to `out`; returns (set, the image store its keys point into)."""
    raw = datasets.load_from_disk(str(rl_dir)).select(range(rows))
    raw = raw.map(
        lambda row, i: {"problem": row["problem"] + (long_text if i % every == every - 1 else "")},
        with_indices=True,
    )
    raw.save_to_disk(str(out))
    return out, Path(rl_dir).parent / "images"


def test_prompt_lengths_are_the_processors(tiny_assets, tiny_policy):
    """Measured from text and image headers = encoded with the images decoded (as the rollout does)."""
    _, processor, cfg = tiny_policy
    raw = datasets.load_from_disk(str(tiny_assets["rl"])).select(range(0, 96, 8))
    from coldstart.common.image_store import ImageStore

    store = ImageStore(tiny_assets["rl"].parent / "images")
    lengths, n_images = prompt_lengths(raw, processor, cfg.system_prompt, store)
    prompts = [PromptInput(r["problem"], store.decoded_row(r["images"])) for r in raw]
    encoded = [int(encode_prompts(processor, [p], cfg.system_prompt).lengths[0]) for p in prompts]
    assert lengths == encoded
    assert n_images == [len(p.images) for p in prompts] and all(n_images)


def test_too_long_rows_are_dropped_at_load_and_training_runs_on_the_rest(tiny_assets, tmp_path):
    rl, images = with_long_rows(tiny_assets["rl"], tmp_path / "rl", LONG, rows=16, every=4)
    cfg = tiny_config(
        *FAST, "grpo.kl_coef=0", "grpo.max_prompt_length=128", f"output_dir={tmp_path}"
    )
    from coldstart.common.models import load_processor

    processor = load_processor(tiny_assets["model"], cfg.grpo.min_pixels, cfg.grpo.max_pixels)
    dataset, metrics = load_rl_prompts(rl, images, processor, cfg.grpo)
    assert metrics["data/dropped_too_long"] == 4 and metrics["data/rows"] == len(dataset) == 12
    assert metrics["data/longest_prompt"] > 128 and metrics["data/rows_without_image"] == 0
    assert not any(LONG in p for p in dataset["problem"])

    from coldstart.grpo.stage import run_grpo

    logged: list[tuple[dict[str, float], int]] = []
    paths = paths_for({"model": tiny_assets["model"], "rl": rl}, tmp_path)
    paths.images = images
    _, history = run_grpo(cfg, paths, log_fn=lambda m, s: logged.append((m, s)), **DENSE)
    assert [h["step"] for h in history] == [1, 2]
    assert logged[0] == ({f"grpo/{k}": v for k, v in metrics.items()}, 0)  # once, before step 1
    assert not any("dropped" in k for m, _ in logged[1:] for k in m)
    json.dumps(history)


def test_every_row_too_long_names_the_field(tiny_assets, tmp_path):
    rl, images = with_long_rows(tiny_assets["rl"], tmp_path / "rl", LONG, rows=4, every=1)
    cfg = tiny_config("grpo.max_prompt_length=128").grpo
    from coldstart.common.models import load_processor

    processor = load_processor(tiny_assets["model"], cfg.min_pixels, cfg.max_pixels)
    with pytest.raises(PromptsTooLongError) as caught:
        load_rl_prompts(rl, images, processor, cfg)
    message = str(caught.value)
    assert (
        "every prompt of the RL set (4 rows) is longer than grpo.max_prompt_length=128" in message
    )
    assert "raise grpo.max_prompt_length or lower grpo.max_pixels" in message
    assert isinstance(caught.value, InputError)


def test_zero3_over_several_processes_needs_an_image_in_every_row(tmp_path):
    check_images_for_zero3(tmp_path, 0, "zero3", World(0, 2))
    check_images_for_zero3(tmp_path, 3, "zero2", World(0, 2))
    check_images_for_zero3(tmp_path, 3, "zero3", World())
    with pytest.raises(
        InputError, match=r"3 RL rows without an image, and grpo\.deepspeed=zero3 over 2"
    ):
        check_images_for_zero3(tmp_path, 3, "zero3", World(1, 2))
