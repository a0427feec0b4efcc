"""Log-probs of sampled completions: aligned with what generation saw, same with shared vision features."""

from __future__ import annotations

import pytest
import torch

from coldstart.common.generation import Completion, HFBackend, PromptInput, SamplingConfig
from coldstart.grpo.data import load_rl_dataset
from coldstart.grpo.logprobs import completion_logprobs, shares_vision_features
from coldstart.grpo.rollout import build_rollout_batch, encode_prompts, trainable_length

SYSTEM = "Please reason step by step."


def prompts_from(rl_dir, rows=(0, 40, 90)):
    ds = load_rl_dataset(rl_dir)  # image keys decoded from the images/ store beside rl/
    return [PromptInput(ds[i]["problem"], ds[i]["images"]) for i in rows]


def test_logprobs_match_generation_scores(tiny_assets, tiny_policy):
    """Greedy generate with its logits; our one-pass forward over prompt + completion gives the same
    log-probs token by token (checks the position shift, left padding and M-RoPE positions)."""
    model, processor, _ = tiny_policy
    prompts = prompts_from(tiny_assets["rl"])
    enc = encode_prompts(processor, prompts, SYSTEM)
    model_inputs = {
        k: v for k, v in vars(enc).items() if k != "images_per_prompt" and v is not None
    }
    with torch.no_grad():
        out = model.generate(**model_inputs, max_new_tokens=12, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=processor.tokenizer.pad_token_id)  # fmt: skip
    new = out.sequences[:, enc.input_ids.shape[1] :]
    gen_logps = torch.stack([step.log_softmax(-1) for step in out.logits], dim=1).gather(
        -1, new[..., None]
    )[..., 0]
    eos = set(
        [model.generation_config.eos_token_id]
        if isinstance(model.generation_config.eos_token_id, int)
        else model.generation_config.eos_token_id
    )
    completions = []
    for ids in new.tolist():
        cut = next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))
        completions.append([Completion("", ids[:cut], "stop")])
    batch = build_rollout_batch(enc, completions, processor.tokenizer.pad_token_id)
    with torch.no_grad():
        logps, _ = completion_logprobs(model, batch)
    mask = batch.completion_mask.bool()
    assert mask.sum() > 10
    torch.testing.assert_close(
        logps[mask], gen_logps[:, : batch.completion_len][mask], atol=1e-4, rtol=1e-4
    )


def sampled_batch(tiny_assets, model, processor, G=3, tokens=10, rows=(0, 40, 90)):
    torch.manual_seed(1)
    prompts = prompts_from(tiny_assets["rl"], rows)
    completions = HFBackend(model, processor, SYSTEM).generate(
        prompts, SamplingConfig(tokens, 1.0, 1.0, G)
    )
    placeholders = [processor.image_token_id, processor.video_token_id]
    return build_rollout_batch(
        encode_prompts(processor, prompts, SYSTEM),
        completions,
        processor.tokenizer.pad_token_id,
        placeholders,
    )


def test_shared_vision_features_equal_per_sequence_encoding(tiny_assets, tiny_policy):
    model, processor, _ = tiny_policy
    assert shares_vision_features(model)
    batch = sampled_batch(tiny_assets, model, processor)
    shared, ent_shared = completion_logprobs(
        model, batch, temperature=0.7, compute_entropy=True, share_vision=True
    )
    repeated, ent_repeated = completion_logprobs(
        model, batch, temperature=0.7, compute_entropy=True, share_vision=False
    )
    mask = batch.completion_mask.bool()
    torch.testing.assert_close(shared[mask], repeated[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent_shared[mask], ent_repeated[mask], atol=1e-5, rtol=1e-5)


def test_select_gives_the_same_logprobs_as_the_full_batch(tiny_assets, tiny_policy):
    """Micro-batches cut by `select` (subset of prompts' images, padding columns trimmed) change nothing."""
    model, processor, _ = tiny_policy
    batch = sampled_batch(tiny_assets, model, processor)
    with torch.no_grad():
        full, _ = completion_logprobs(model, batch)
        for rows in (torch.tensor([0]), torch.tensor([2, 3, 4]), torch.tensor([5, 6, 7, 8])):
            micro = batch.select(rows)
            assert (
                micro.images_per_prompt.sum()
                == len(micro.image_grid_thw)
                == len(set(batch.prompt_index[rows].tolist()))
            )
            part, _ = completion_logprobs(model, micro)
            m = micro.completion_mask.bool()
            torch.testing.assert_close(
                part[m], full[rows, : micro.completion_len][m], atol=1e-5, rtol=1e-5
            )


def test_sampled_image_placeholder_ends_the_trainable_part():
    assert trainable_length([5, 6, 99, 7], {99}) == 2
    assert trainable_length([5, 6, 7], {99}) == 3


@pytest.mark.parametrize("share", [True, False])
def test_gradient_flows_into_the_vision_tower(tiny_assets, tiny_policy, share):
    model, processor, _ = tiny_policy
    batch = sampled_batch(tiny_assets, model, processor, G=2, tokens=6)
    logps, _ = completion_logprobs(model, batch, share_vision=share)
    (logps * batch.completion_mask).sum().backward()
    visual = [p.grad for n, p in model.named_parameters() if ".visual." in f".{n}"]
    assert all(g is not None for g in visual) and sum(g.abs().sum() for g in visual) > 0
