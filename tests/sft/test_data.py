"""Row checks before training: named errors for bad rows, `sft.overlong` applied, lengths exact."""

from pathlib import Path

import datasets
import pytest

from coldstart.common.config import SFTConfig
from coldstart.sft.collator import SFTCollator
from coldstart.sft.data import SFTDataError, check_split, load_sft_splits, row_lengths


def _edit(rows: datasets.Dataset, index: int, **values) -> datasets.Dataset:
    def change(row, i):
        return {**row, **values} if i == index else row

    return rows.map(change, with_indices=True)


def test_lengths_match_the_collator_token_for_token(processor, train_rows):
    """The header-only length count must equal what the processor really produces."""
    rows = train_rows.select(range(6))
    cfg = SFTConfig()
    counted = row_lengths(rows, processor, cfg.system_prompt)
    collate = SFTCollator(processor, cfg.system_prompt, 10_000)
    for row, length in zip(rows, counted, strict=False):
        batch = collate([row])
        assert batch["input_ids"].shape[1] == length.total
        assert int((batch["labels"][0] == -100).sum()) == length.prompt
        assert length.row_id == row["id"]


def test_row_without_an_answer_is_named(processor, train_rows):
    rows = _edit(train_rows.select(range(4)), 2, solution="  ")
    bad_id = rows[2]["id"]
    with pytest.raises(
        SFTDataError, match=rf"split 'train': 1 rows have no assistant answer.*{bad_id}"
    ):
        check_split(rows, processor, SFTConfig(), "train")


def test_reserved_tokens_in_text_are_named(processor, train_rows):
    rows = _edit(train_rows.select(range(3)), 1, problem="Look: <|image_pad|> how many?")
    with pytest.raises(
        SFTDataError, match=rf"reserved chat/vision tokens.*{rows[1]['id']} \(<\|image_pad\|>\)"
    ):
        check_split(rows, processor, SFTConfig(), "train")


def test_overlong_error_mode_names_rows_and_limit(processor, train_rows):
    rows = train_rows.select(range(4))
    longest = max(row_lengths(rows, processor, SFTConfig().system_prompt), key=lambda r: r.total)
    cfg = SFTConfig(max_length=longest.total - 1, overlong="error")
    with pytest.raises(
        SFTDataError,
        match=rf"longer than sft.max_length={longest.total - 1} tokens.*{longest.row_id} \({longest.total} tokens\)",
    ):
        check_split(rows, processor, cfg, "train")


def test_overlong_truncate_mode_truncates_answers_and_drops_unfit_prompts(processor, train_rows):
    rows = train_rows.select(
        range(0, len(train_rows), 4)
    )  # every family: prompts of several lengths
    lengths = row_lengths(rows, processor, SFTConfig().system_prompt)
    # The longest prompt (with its image tokens) no longer fits: that row is dropped; the shorter
    # prompts fit and their rows lose the tail of their answer.
    limit = max(r.prompt for r in lengths)
    assert min(r.prompt for r in lengths) < limit
    checked = check_split(
        rows, processor, SFTConfig(max_length=limit, overlong="truncate"), "train"
    )
    unfit = [r.row_id for r in lengths if r.prompt >= limit]
    assert checked.dropped == unfit and unfit
    assert sorted(checked.truncated) == sorted(
        r.row_id for r in lengths if r.prompt < limit < r.total
    )
    assert len(checked.dataset) == len(rows) - len(unfit)
    batch = SFTCollator(processor, SFTConfig().system_prompt, limit)(list(checked.dataset))
    assert batch["input_ids"].shape[1] <= limit


def test_truncate_mode_with_nothing_left_is_an_error(processor, train_rows):
    with pytest.raises(
        SFTDataError, match=r"every row's prompt \+ image tokens exceed sft.max_length=16"
    ):
        check_split(train_rows.select(range(2)), processor, SFTConfig(max_length=16), "train")


def test_missing_columns_and_splits_are_named(tmp_path: Path, train_rows):
    train_rows.remove_columns("solution").save_to_disk(str(tmp_path / "nosol"))
    with pytest.raises(SFTDataError, match=r"nosol split 'train': missing columns \['solution'\]"):
        load_sft_splits(tmp_path / "nosol")
    datasets.DatasetDict({"test": train_rows}).save_to_disk(str(tmp_path / "nosplit"))
    with pytest.raises(SFTDataError, match=r"no 'train' split \(found \['test'\]\)"):
        load_sft_splits(tmp_path / "nosplit")
    with pytest.raises(SFTDataError, match=r"not a dataset saved with datasets.save_to_disk"):
        load_sft_splits(tmp_path / "absent")


def test_checking_a_set_reads_its_images_batch_by_batch(processor, tmp_path):
    """The set stays memory-mapped: checking 256 rows of ~100 KB images never holds every image's
    bytes in Python at once (the old reader turned the whole images column into one list)."""
    import io
    import tracemalloc

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)

    def noise_png() -> bytes:  # random pixels: PNG cannot compress them, ~97 KB each
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (180, 180, 3), dtype=np.uint8)).save(out, "PNG")
        return out.getvalue()

    def rows():
        for i in range(256):
            yield {"id": str(i), "images": [{"bytes": noise_png(), "path": None}],
                   "problem": f"What is {i} + 1?", "solution": f"\\boxed{{{i + 1}}}"}  # fmt: skip

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "images": datasets.Sequence(datasets.Image()),
            "problem": datasets.Value("string"),
            "solution": datasets.Value("string"),
        }
    )
    datasets.Dataset.from_generator(
        rows, features=features, cache_dir=str(tmp_path / "cache")
    ).save_to_disk(str(tmp_path / "set"))
    ds = datasets.load_from_disk(str(tmp_path / "set"))
    image_bytes = sum(
        len(img["bytes"])
        for batch in ds.select_columns(["images"]).with_format("arrow").iter(batch_size=64)
        for row in batch["images"].to_pylist()
        for img in row
    )
    assert image_bytes > 20_000_000

    tracemalloc.start()
    try:
        checked = check_split(ds, processor, SFTConfig(), "train")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(checked.dataset) == 256
    assert peak < image_bytes / 2, (peak, image_bytes)
