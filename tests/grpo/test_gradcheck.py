"""Gradient check on the tiny model: autograd gradient of the trainer's loss vs finite differences.

The loss is the one the trainer backpropagates (`micro_batch_loss`: forward over prompt +
completion with shared vision features, clipped surrogate, k3 KL, token-mean aggregation),
in float64. Qwen2.5-VL computes RMSNorm and the vision rotary embedding in float32 whatever the
input dtype (by design, for bf16 training); that would cap a finite difference at float32
precision, so the test swaps those two functions for the same formulas without the cast.
Rollout and reference log-probs are fixed constants near the current policy, so
the clip is inactive around the evaluation point and the loss is smooth there; entries are
taken from the language model, the LM head, the vision blocks and the merger.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

from coldstart.grpo.logprobs import completion_logprobs
from coldstart.grpo.trainer import micro_batch_loss
from tests.grpo.test_logprobs import sampled_batch

PARAMS = (
    "model.language_model.layers.0.self_attn.q_proj.weight",
    "model.language_model.layers.1.mlp.down_proj.weight",
    "lm_head.weight",
    "model.visual.blocks.0.attn.qkv.weight",
    "model.visual.merger.mlp.0.weight",
)


def rms_norm_same_dtype(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def rotary_vision_same_dtype(q, k, cos, sin):
    cos, sin = cos.unsqueeze(-2).to(q.dtype), sin.unsqueeze(-2).to(q.dtype)
    return (q * cos) + (qwen.rotate_half(q) * sin), (k * cos) + (qwen.rotate_half(k) * sin)


@pytest.fixture
def float64_model_math(monkeypatch):
    monkeypatch.setattr(qwen.Qwen2_5_VLRMSNorm, "forward", rms_norm_same_dtype)
    monkeypatch.setattr(qwen, "apply_rotary_pos_emb_vision", rotary_vision_same_dtype)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_autograd_matches_finite_differences(tiny_assets, tiny_policy, float64_model_math, mode):
    model, processor, cfg = tiny_policy
    batch = sampled_batch(tiny_assets, model, processor, G=2, tokens=6)
    model = model.double()
    batch.pixel_values = batch.pixel_values.double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        logps, _ = completion_logprobs(model, batch, cfg.temperature)
    batch.old_logps = logps + 0.01 * torch.randn(logps.shape, generator=gen, dtype=torch.float64)
    batch.ref_logps = logps + 0.3 * torch.randn(logps.shape, generator=gen, dtype=torch.float64)
    batch.advantages = torch.randn(len(batch), generator=gen, dtype=torch.float64)
    cfg = cfg.model_copy(update={"kl_coef": 0.1, "loss_agg_mode": mode, "compute_entropy": False})
    norms = {
        "num_tokens": batch.completion_mask.sum().item(),
        "num_seqs": len(batch),
        "max_len": cfg.max_completion_length,
    }

    def loss_value() -> torch.Tensor:
        return micro_batch_loss(model, batch, cfg, norms)[0]

    model.zero_grad()
    loss_value().backward()
    params = dict(model.named_parameters())
    checked = 0
    for name in PARAMS:
        param = params[name]
        flat_grad = param.grad.reshape(-1)
        for idx in [int(flat_grad.abs().argmax()), 0]:
            h = 1e-6
            with torch.no_grad():
                orig = param.view(-1)[idx].item()
                param.view(-1)[idx] = orig + h
                up = loss_value().item()
                param.view(-1)[idx] = orig - h
                down = loss_value().item()
                param.view(-1)[idx] = orig
            numeric = (up - down) / (2 * h)
            analytic = flat_grad[idx].item()
            assert abs(numeric - analytic) <= 1e-7 + 1e-5 * abs(analytic), (
                name,
                idx,
                numeric,
                analytic,
            )
            checked += 1
    assert checked == 2 * len(PARAMS)
