"""The GRPO objective as free functions on tensors: per-token losses, then their aggregation.

Shapes: B sequences (completions) in the batch, T completion positions (right-padded);
``mask`` is 1.0 on real completion tokens. Per-token functions return a (B, T) loss matrix
and a metrics dict; ``agg_loss`` turns the matrix into the scalar that is backpropagated.
Keeping the two apart is what makes the aggregation modes (token-mean, seq-mean-token-mean,
seq-mean-token-sum-norm) one switch instead of three copies of the loss.

For gradient accumulation, ``agg_loss`` takes the normalisers of the whole mini-batch
(``num_tokens``, ``num_seqs``): each micro-batch's share is then exactly its part of the
mini-batch loss, and the summed gradients equal those of one big batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LOG_RATIO_LIMIT = 20.0
"""log-ratios are clamped to +-20 before exp (as verl does): finite for any inputs, and far
outside the clip range, so the loss and its gradient are unchanged wherever they matter."""


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is 1 (0 for an empty mask). Shapes broadcast."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


# --------------------------------------------------------------------------- KL to the reference


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log pi - log pi_ref: unbiased, high variance, can be negative. (B, T)."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = (log pi - log pi_ref)^2 / 2: low variance, biased. (B, T)."""
    return 0.5 * (logp - ref_logp).square()


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = exp(d) - d - 1 with d = log pi_ref - log pi: unbiased, >= 0, low variance
    (verl's ``low_var_kl``, TRL's GRPO KL; the paper's choice). (B, T)."""
    delta = (ref_logp - logp).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    return torch.exp(delta) - delta - 1.0


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def get_kl_estimator(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    try:
        return KL_ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown KL estimator {name!r}; valid: {sorted(KL_ESTIMATORS)}") from None


# --------------------------------------------------------------------------- policy loss


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    clip_dual: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate per token, with separate low/high clip and dual-clip.

    ``loss = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))`` with ``r = pi / pi_old``;
    for A < 0 it is further capped at ``-A * clip_dual`` (dual-clip, Ye et al. 2020), so a
    token whose probability already rose far above the rollout policy's cannot produce an
    unbounded push. ``clip_high > clip_low`` is "clip-higher" (DAPO): low-probability tokens
    may gain more before the clip stops them.

    Args:
        logp, old_logp: (B, T) log-probs of the sampled tokens under the current policy and
            under the policy that generated them (detached).
        advantages: (B,) one advantage per sequence, broadcast over its tokens (or (B, T)).
        mask: (B, T) 1.0 on completion tokens; used only for the metrics here.
        clip_dual: c > 1 for dual-clip; None disables it.

    Returns:
        loss: (B, T) per-token loss (padding positions hold garbage-free finite values;
            aggregation masks them).
        metrics: masked means over tokens: ``clip_ratio/low_mean`` (A < 0 and r < 1 - low),
            ``clip_ratio/high_mean`` (A > 0 and r > 1 + high), ``clip_ratio/region_mean``
            (either; TRL's definitions), ``clip_ratio/dual_mean`` (A < 0 and r > c), and
            ``ppo_kl`` (mean of log pi_old - log pi, how far the update has moved).
    """
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages  # (B, 1) or (B, T)
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    if clip_dual is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * clip_dual), loss)

    with torch.no_grad():
        low = (ratio < 1.0 - clip_low) & (adv < 0)
        high = (ratio > 1.0 + clip_high) & (adv > 0)
        dual = (ratio > clip_dual) & (adv < 0) if clip_dual is not None else torch.zeros_like(low)
        metrics = {
            "clip_ratio/low_mean": masked_mean(low.float(), mask).item(),
            "clip_ratio/high_mean": masked_mean(high.float(), mask).item(),
            "clip_ratio/region_mean": masked_mean((low | high).float(), mask).item(),
            "clip_ratio/dual_mean": masked_mean(dual.float(), mask).item(),
            "ppo_kl": masked_mean(-log_ratio, mask).item(),
        }
    return loss, metrics


def grpo_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    clip_dual: float | None = None,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate plus ``kl_coef * KL(pi || pi_ref)`` per token. (B, T) and metrics.

    The KL term is in the loss (not in the reward), per token, as in the paper and TRL.
    ``ref_logp`` may be None only when ``kl_coef`` is 0. Adds metric ``kl`` when it is used.
    """
    loss, metrics = clipped_surrogate(
        logp, old_logp, advantages, mask, clip_low, clip_high, clip_dual
    )
    if kl_coef != 0.0:
        if ref_logp is None:
            raise ValueError("kl_coef != 0 needs ref_logp (the frozen reference model's log-probs)")
        kl = get_kl_estimator(kl_estimator)(logp, ref_logp)
        loss = loss + kl_coef * kl
        metrics["kl"] = masked_mean(kl.detach(), mask).item()
    return loss, metrics


# --------------------------------------------------------------------------- aggregation


Normaliser = torch.Tensor | float


def _token_mean(
    loss: torch.Tensor, mask: torch.Tensor, num_tokens: Normaliser, num_seqs: float, max_len: float
) -> torch.Tensor:
    return (loss * mask).sum() / num_tokens


def _seq_mean_token_mean(
    loss: torch.Tensor, mask: torch.Tensor, num_tokens: Normaliser, num_seqs: float, max_len: float
) -> torch.Tensor:
    per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_seq.sum() / num_seqs


def _seq_mean_token_sum_norm(
    loss: torch.Tensor, mask: torch.Tensor, num_tokens: Normaliser, num_seqs: float, max_len: float
) -> torch.Tensor:
    return (loss * mask).sum() / (num_seqs * max_len)


AGG_MODES: dict[str, Callable[..., torch.Tensor]] = {
    "token-mean": _token_mean,  # every token of the mini-batch weighs the same (DAPO, the paper)
    "seq-mean-token-mean": _seq_mean_token_mean,  # mean per sequence, then over sequences (GRPO)
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,  # token sum / constant length (Dr. GRPO)
}


def agg_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: float | None = None,
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar.

    ``token-mean``: sum over tokens / num_tokens. ``seq-mean-token-mean``: each sequence's
    token mean, summed, / num_seqs. ``seq-mean-token-sum-norm``: sum over tokens /
    (num_seqs * max_len), a constant normaliser that adds no length bias (Dr. GRPO).

    The normalisers default to this batch's own (mask.sum(), B, T). A caller that splits a
    mini-batch into micro-batches passes the mini-batch's totals (and the fixed generation
    budget as ``max_len``), so the micro-batch losses sum to the mini-batch loss.
    """
    try:
        fn = AGG_MODES[mode]
    except KeyError:
        raise ValueError(f"unknown loss aggregation {mode!r}; valid: {sorted(AGG_MODES)}") from None
    mask = mask.to(loss_mat.dtype)
    tokens: torch.Tensor | float = (
        mask.sum().clamp(min=1.0) if num_tokens is None else max(float(num_tokens), 1.0)
    )
    seqs = float(loss_mat.shape[0]) if num_seqs is None else max(float(num_seqs), 1.0)
    length = float(loss_mat.shape[-1]) if max_len is None else float(max_len)
    return fn(loss_mat, mask, tokens, seqs, length)
