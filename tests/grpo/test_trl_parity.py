"""Our GRPO loss against TRL's, on the same log-probs, advantages and masks (TRL: dev dependency).

TRL 1.16 computes the loss inside `GRPOTrainer._compute_loss(self, model, inputs)`; there is no
free function to call. We call that method itself, unbound, on a minimal stand-in `self` that
carries the attributes it reads and whose `_get_per_token_logps_and_entropies` returns our
log-prob tensor (the model forward is the one thing not compared here; logprobs tests cover
it). Everything else (ratio, two-sided clip, `delta`, k3 KL, the per-loss-type aggregation and
normalisation, the clip metrics) is TRL's own code running on our tensors.

Matching variants (TRL loss_type -> ours):
  grpo    -> seq-mean-token-mean        per-sequence token mean, then mean over sequences
  bnpo    -> token-mean (own batch)     tokens of this micro-batch
  dapo    -> token-mean (mini-batch)    tokens of the whole accumulation window (num_items_in_batch)
  dr_grpo -> seq-mean-token-sum-norm    token sum / (B * max_completion_length)
TRL's `delta` (cap on the ratio in the unclipped branch) equals dual-clip c for c > 1 + clip_high;
TRL's KL is k3 (exp(ref - logp) - (ref - logp) - 1), in the loss, with coefficient beta.
"""

from __future__ import annotations

import types
from collections import defaultdict

import pytest
import torch

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")

from coldstart.grpo.loss import agg_loss, grpo_token_loss  # noqa: E402

TRL_TO_OURS = {
    "grpo": "seq-mean-token-mean",
    "bnpo": "token-mean",
    "dapo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
}
CLIP_LOW, CLIP_HIGH, DUAL, BETA, MAX_LEN = 0.2, 0.28, 3.0, 0.04, 16


class _Accelerator:
    num_processes = 1

    @staticmethod
    def reduce(tensor, reduction="sum"):
        return tensor

    @staticmethod
    def gather(tensor):
        return tensor


def trl_standin(
    loss_type: str, logp: torch.Tensor, beta: float, delta: float | None, accumulation: int
):
    """The attributes `_compute_loss` reads, nothing else; the model forward returns `logp`."""
    standin = types.SimpleNamespace(
        loss_type=loss_type,
        beta=beta,
        epsilon_low=CLIP_LOW,
        epsilon_high=CLIP_HIGH,
        importance_sampling_level="token",
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        aux_loss_enabled=False,
        _entropy_bonus_enabled=False,
        max_completion_length=MAX_LEN,
        current_gradient_accumulation_steps=accumulation,
        model=types.SimpleNamespace(training=True),
        accelerator=_Accelerator(),
        args=types.SimpleNamespace(
            delta=delta, use_bias_correction_kl=False, steps_per_generation=accumulation
        ),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    standin._get_per_token_logps_and_entropies = lambda *a, **k: (
        logp,
        torch.zeros_like(logp),
        None,
    )
    return standin


def make_inputs(B=8, T=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=gen) * 4
    old = logp + 1.2 * torch.randn(
        B, T, generator=gen
    )  # ratios on both clip sides and past the dual clip
    ref = logp + 0.3 * torch.randn(B, T, generator=gen)
    adv = torch.randn(B, generator=gen).abs() * torch.tensor([1.0, -1.0]).repeat(
        B // 2
    )  # both signs
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    return logp, old, ref, adv, mask


def trl_loss(loss_type, logp, old, ref, adv, mask, rows, num_items, beta, delta, accumulation):
    leaf = logp.clone().requires_grad_(True)
    standin = trl_standin(loss_type, leaf[rows], beta, delta, accumulation)
    inputs = {
        "prompt_ids": torch.zeros(len(adv[rows]), 1, dtype=torch.long),
        "prompt_mask": torch.ones(len(adv[rows]), 1, dtype=torch.long),
        "completion_ids": torch.zeros_like(mask[rows], dtype=torch.long),
        "completion_mask": mask[rows],
        "advantages": adv[rows],
        "old_per_token_logps": old[rows],
        "ref_per_token_logps": ref[rows],
        "num_items_in_batch": torch.tensor(num_items),
    }
    loss = trl_grpo.GRPOTrainer._compute_loss(standin, None, inputs)
    loss.backward()
    return loss.item(), leaf.grad, {k: v[0] for k, v in standin._metrics["train"].items()}


def our_loss(mode, logp, old, ref, adv, mask, rows, norms, beta, dual):
    leaf = logp.clone().requires_grad_(True)
    loss_mat, metrics = grpo_token_loss(
        leaf[rows], old[rows], adv[rows], mask[rows],
        clip_low=CLIP_LOW, clip_high=CLIP_HIGH, clip_dual=dual, ref_logp=ref[rows], kl_coef=beta,
    )  # fmt: skip
    loss = agg_loss(loss_mat, mask[rows], mode, **norms)
    loss.backward()
    return loss.item(), leaf.grad, metrics


@pytest.mark.parametrize("beta", [0.0, BETA])
@pytest.mark.parametrize("dual", [None, DUAL])
@pytest.mark.parametrize("loss_type", sorted(TRL_TO_OURS))
def test_loss_and_gradient_match_trl(loss_type, dual, beta):
    logp, old, ref, adv, mask = make_inputs()
    rows = slice(None)
    norms = {"max_len": MAX_LEN}  # own batch's token / sequence counts
    ours, our_grad, our_metrics = our_loss(
        TRL_TO_OURS[loss_type], logp, old, ref, adv, mask, rows, norms, beta, dual
    )
    theirs, their_grad, their_metrics = trl_loss(
        loss_type, logp, old, ref, adv, mask, rows, mask.sum().item(), beta, dual, 1
    )
    assert abs(ours - theirs) <= 1e-6
    assert (our_grad - their_grad).abs().max().item() <= 1e-6
    for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
        assert our_metrics[key] == pytest.approx(their_metrics[key], abs=1e-6)
    # not vacuous: the batch reaches every clip region the variant has
    assert their_metrics["clip_ratio/low_mean"] > 0 and their_metrics["clip_ratio/high_mean"] > 0
    if dual is not None:
        assert our_metrics["clip_ratio/dual_mean"] > 0
    if beta:
        assert our_metrics["kl"] == pytest.approx(their_metrics["kl"], abs=1e-6)


def test_token_mean_over_accumulated_micro_batches_matches_trl_dapo():
    """Two micro-batches of one mini-batch: ours with the mini-batch token count, TRL's dapo with
    num_items_in_batch over the window; summed losses and gradients agree."""
    logp, old, ref, adv, mask = make_inputs(seed=3)
    total_tokens = mask.sum().item()
    ours = theirs = 0.0
    our_grad = torch.zeros_like(logp)
    their_grad = torch.zeros_like(logp)
    for rows in (slice(0, 5), slice(5, 8)):
        value, grad, _ = our_loss(
            "token-mean", logp, old, ref, adv, mask, rows, {"num_tokens": total_tokens}, BETA, DUAL
        )
        ours, our_grad = ours + value, our_grad + grad
        value, grad, _ = trl_loss(
            "dapo", logp, old, ref, adv, mask, rows, total_tokens, BETA, DUAL, 2
        )
        theirs, their_grad = theirs + value, their_grad + grad
    assert abs(ours - theirs) <= 1e-6
    assert (our_grad - their_grad).abs().max().item() <= 1e-6


def max_parity_diff() -> float:
    """Largest |ours - TRL| over every variant (for the report)."""
    worst = 0.0
    for loss_type in TRL_TO_OURS:
        for dual in (None, DUAL):
            for beta in (0.0, BETA):
                logp, old, ref, adv, mask = make_inputs()
                a, ga, _ = our_loss(
                    TRL_TO_OURS[loss_type],
                    logp,
                    old,
                    ref,
                    adv,
                    mask,
                    slice(None),
                    {"max_len": MAX_LEN},
                    beta,
                    dual,
                )
                b, gb, _ = trl_loss(
                    loss_type,
                    logp,
                    old,
                    ref,
                    adv,
                    mask,
                    slice(None),
                    mask.sum().item(),
                    beta,
                    dual,
                    1,
                )
                worst = max(worst, abs(a - b), (ga - gb).abs().max().item())
    return worst


if __name__ == "__main__":
    print(f"max |ours - TRL| over loss value and gradient: {max_parity_diff():.3e}")
