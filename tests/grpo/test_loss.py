"""The GRPO loss: vectorised per-token loss and aggregation against loops written from the formulas."""

from __future__ import annotations

import math

import pytest
import torch

from coldstart.grpo.loss import (
    AGG_MODES,
    KL_ESTIMATORS,
    agg_loss,
    clipped_surrogate,
    get_kl_estimator,
    grpo_token_loss,
)


def make_batch(B=6, T=9, seed=0, spread=1.0):
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 3
    old = logp + spread * torch.randn(
        B, T, generator=gen, dtype=torch.float64
    )  # ratios from ~0.05 to ~20
    ref = logp + 0.5 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    adv = torch.randn(B, generator=gen, dtype=torch.float64)
    adv[0] = 0.0
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[1] = 0  # an empty completion (generation error) must not divide by zero
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    return logp, old, ref, adv, mask


def loop_token_loss(logp, old, adv, low, high, dual):
    out = torch.zeros_like(logp)
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            r = math.exp(logp[b, t] - old[b, t])
            a = float(adv[b])
            loss = max(-a * r, -a * min(max(r, 1 - low), 1 + high))
            if dual is not None and a < 0:
                loss = min(loss, -a * dual)
            out[b, t] = loss
    return out


@pytest.mark.parametrize("dual", [None, 3.0])
def test_clipped_surrogate_matches_loop(dual):
    logp, old, _, adv, mask = make_batch()
    loss, metrics = clipped_surrogate(logp, old, adv, mask, 0.2, 0.3, dual)
    torch.testing.assert_close(loss, loop_token_loss(logp, old, adv, 0.2, 0.3, dual))
    assert 0 < metrics["clip_ratio/low_mean"] < 1 and 0 < metrics["clip_ratio/high_mean"] < 1
    if dual is not None:
        assert metrics["clip_ratio/dual_mean"] > 0  # the batch does reach the dual-clip region


def test_clipped_surrogate_on_policy_gradient_is_minus_advantage():
    """ratio = 1: loss = -A and d loss / d logp = -A at every token."""
    logp, _, _, adv, mask = make_batch()
    logp.requires_grad_(True)
    loss, _ = clipped_surrogate(logp, logp.detach(), adv, mask, 0.2, 0.3, 3.0)
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, (-adv)[:, None].expand_as(logp))


def test_dual_clip_caps_negative_advantage_loss():
    logp = torch.tensor([[math.log(10.0)]])
    old = torch.zeros(1, 1)
    mask = torch.ones(1, 1)
    loss, _ = clipped_surrogate(logp, old, torch.tensor([-1.0]), mask, 0.2, 0.3, 3.0)
    assert loss.item() == pytest.approx(3.0)  # not 10
    loss, _ = clipped_surrogate(logp, old, torch.tensor([-1.0]), mask, 0.2, 0.3, None)
    assert loss.item() == pytest.approx(10.0)


def test_kl_estimators():
    logp, _, ref, _, _ = make_batch()
    d = ref - logp
    torch.testing.assert_close(get_kl_estimator("k1")(logp, ref), -d)
    torch.testing.assert_close(get_kl_estimator("k2")(logp, ref), 0.5 * d**2)
    torch.testing.assert_close(get_kl_estimator("k3")(logp, ref), d.exp() - d - 1)
    assert (get_kl_estimator("k3")(logp, ref) >= 0).all()
    assert get_kl_estimator("k3")(logp, logp).abs().max() == 0
    with pytest.raises(ValueError, match="valid: \\['k1', 'k2', 'k3'\\]"):
        get_kl_estimator("k4")
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}


def loop_agg(loss, mask, mode, max_len):
    B = loss.shape[0]
    if mode == "token-mean":
        return (
            sum(loss[b, t] for b in range(B) for t in range(loss.shape[1]) if mask[b, t])
            / mask.sum()
        )
    if mode == "seq-mean-token-mean":
        per_seq = []
        for b in range(B):
            n = int(mask[b].sum())
            per_seq.append(sum(loss[b, t] for t in range(n)) / max(n, 1))
        return sum(per_seq) / B
    return sum(loss[b, t] for b in range(B) for t in range(loss.shape[1]) if mask[b, t]) / (
        B * max_len
    )


@pytest.mark.parametrize("mode", sorted(AGG_MODES))
def test_agg_matches_loop(mode):
    _, _, _, _, mask = make_batch()
    loss = torch.randn(mask.shape, dtype=torch.float64)
    got = agg_loss(loss, mask, mode, max_len=16)
    torch.testing.assert_close(
        got, torch.as_tensor(loop_agg(loss, mask, mode, 16), dtype=torch.float64)
    )


@pytest.mark.parametrize("mode", sorted(AGG_MODES))
def test_micro_batches_sum_to_the_mini_batch_loss_and_gradient(mode):
    """Split 6 sequences into micro-batches of 4 + 2 with the mini-batch's normalisers: same loss, same grad."""
    logp, old, ref, adv, mask = make_batch(spread=0.3)

    def total(parts):
        logp_ = logp.clone().requires_grad_(True)
        norms = {"num_tokens": mask.sum().item(), "num_seqs": len(mask), "max_len": 12}
        value = 0.0
        for rows in parts:
            loss_mat, _ = grpo_token_loss(
                logp_[rows], old[rows], adv[rows], mask[rows], clip_low=0.2, clip_high=0.3, clip_dual=3.0,
                ref_logp=ref[rows], kl_coef=0.05,
            )  # fmt: skip
            part = agg_loss(loss_mat, mask[rows], mode, **norms)
            part.backward()
            value += part.item()
        return value, logp_.grad

    whole, grad_whole = total([slice(0, 6)])
    split, grad_split = total([slice(0, 4), slice(4, 6)])
    assert split == pytest.approx(whole, abs=1e-12)
    torch.testing.assert_close(grad_split, grad_whole)


def test_unknown_agg_mode_names_the_valid_ones():
    with pytest.raises(ValueError, match="seq-mean-token-sum-norm"):
        agg_loss(torch.zeros(1, 1), torch.ones(1, 1), "sum")


def test_kl_needs_reference():
    logp, old, _, adv, mask = make_batch()
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_token_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2, kl_coef=0.1)
