"""The collator's labels: the assistant's answer and its end-of-turn token, nothing else."""

import pytest
import torch

from coldstart.common.config import PAPER_SYSTEM_PROMPT
from coldstart.common.errors import InputError
from coldstart.common.models import load_model
from coldstart.sft.collator import IGNORE_INDEX, SFTCollator


def _batch(processor, rows, max_length=512):
    return SFTCollator(processor, PAPER_SYSTEM_PROMPT, max_length)(rows)


def test_labels_are_exactly_the_assistant_answers(processor, train_rows):
    rows = [train_rows[i] for i in range(3)]
    batch = _batch(processor, rows)
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(processor.image_token)
    assert {
        "input_ids",
        "attention_mask",
        "labels",
        "pixel_values",
        "image_grid_thw",
        "mm_token_type_ids",
    } <= set(batch)
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1, "rows of different lengths: padding must be exercised"
    for i, row in enumerate(rows):
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        supervised = labels != IGNORE_INDEX
        # What is learned is the answer followed by <|im_end|>, as one contiguous span at the end.
        assert tok.decode(labels[supervised]) == row["solution"] + "<|im_end|>"
        assert torch.equal(labels[supervised], ids[supervised])
        span = supervised.nonzero().flatten()
        assert span[-1] - span[0] + 1 == len(span)
        assert span[-1] == lengths[i] - 1  # right padding: the answer ends the sequence
        # System prompt, user turn, image tokens and padding are never supervised.
        assert not supervised[ids == image_id].any()
        assert (ids == image_id).sum() > 0
        prompt = tok.decode(ids[: span[0]])
        assert (
            PAPER_SYSTEM_PROMPT in prompt
            and row["problem"] in prompt
            and prompt.endswith("assistant\n")
        )
        assert (labels[lengths[i] :] == IGNORE_INDEX).all()
        # mm_token_type_ids marks exactly the image tokens (Qwen2.5-VL's M-RoPE needs it).
        assert torch.equal(batch["mm_token_type_ids"][i].bool(), ids == image_id)


def test_model_loss_is_mean_cross_entropy_over_answer_tokens(processor, train_rows, tiny_model_dir):
    """The labels mean what we think once the model shifts them: a hand-computed loss agrees."""
    batch = _batch(processor, [train_rows[i] for i in range(2)])
    model = load_model(tiny_model_dir).eval()
    with torch.no_grad():
        out = model(**batch)
    logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    manual = torch.nn.functional.cross_entropy(logits[mask], labels[mask])
    torch.testing.assert_close(out.loss, manual, rtol=1e-5, atol=1e-5)


def test_truncation_cuts_the_answer_never_the_image(processor, train_rows):
    row = train_rows[0]
    full = _batch(processor, [row])
    start = int((full["labels"][0] != IGNORE_INDEX).nonzero()[0])
    limit = start + 5
    cut = _batch(processor, [row], max_length=limit)
    assert cut["input_ids"].shape[1] == limit
    assert torch.equal(cut["input_ids"][0], full["input_ids"][0, :limit])
    assert (cut["labels"][0] != IGNORE_INDEX).sum() == 5
    assert torch.equal(cut["pixel_values"], full["pixel_values"])


def test_truncation_through_image_tokens_is_refused(processor, train_rows):
    with pytest.raises(
        InputError, match=r"count_shapes-.*sft.max_length=20 would cut inside the image tokens"
    ):
        _batch(processor, [train_rows[0]], max_length=20)
