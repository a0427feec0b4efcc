"""Rollout layout: groups stay together, padding is trimmed; a prompt over the limit is a bug here."""

from __future__ import annotations

import pytest
import torch

from coldstart.common.generation import Completion, HFBackend, PromptInput, SamplingConfig
from coldstart.grpo.rollout import build_rollout_batch, encode_prompts, generate_rollout
from tests.grpo.test_logprobs import SYSTEM, prompts_from


def test_rollout_groups_and_the_prompt_limit(tiny_assets, tiny_policy):
    """G rows per prompt, the prompt whole; a prompt longer than the limit reaching the rollout (the
    set's were dropped at load, data.load_rl_prompts) is an error, never a cut."""
    model, processor, _ = tiny_policy
    (short,) = prompts_from(tiny_assets["rl"], rows=(0,))
    long = PromptInput(
        short.problem + " Explain every step of the count in great detail." * 6, short.images
    )
    lengths = encode_prompts(processor, [short, long], SYSTEM).lengths.tolist()
    limit = (lengths[0] + lengths[1]) // 2
    backend = HFBackend(model, processor, SYSTEM)
    rollout = generate_rollout(
        backend, processor, [short], SamplingConfig(4, 1.0, 1.0, 3), SYSTEM, limit
    )
    assert len(rollout.batch) == 3 and rollout.batch.prompt_index.tolist() == [0, 0, 0]
    assert (
        int(rollout.batch.attention_mask[0].sum()) - int(rollout.batch.completion_mask[0].sum())
        == lengths[0]
    )
    with pytest.raises(RuntimeError, match="load-time measure"):
        generate_rollout(backend, processor, [short, long], SamplingConfig(4), SYSTEM, limit)


def test_layout_left_padded_prompts_right_padded_completions(tiny_assets, tiny_policy):
    _, processor, _ = tiny_policy
    prompts = prompts_from(tiny_assets["rl"], rows=(0, 40))
    enc = encode_prompts(processor, prompts, SYSTEM)
    completions = [[Completion("", [5, 6, 7], "stop"), Completion("", [8], "stop")],
                   [Completion("", [9, 10], "length"), Completion("", [], "error")]]  # fmt: skip
    batch = build_rollout_batch(enc, completions, pad_token_id=0)
    assert batch.completion_mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert batch.completion_ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0], [0, 0, 0]]
    assert batch.prompt_index.tolist() == [0, 0, 1, 1]
    P = enc.input_ids.shape[1]
    torch.testing.assert_close(batch.input_ids[:, :P], enc.input_ids[[0, 0, 1, 1]])
    assert batch.mm_token_type_ids[:, P:].abs().sum() == 0  # completion tokens are text
    micro = batch.select(torch.tensor([1]))
    assert micro.completion_len == 1 and micro.images_per_prompt.tolist() == [1]
    assert micro.attention_mask[0, 0] == 1  # the all-padding prefix columns are gone
