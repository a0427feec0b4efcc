"""Group-relative advantages: each completion is scored against its siblings from the same prompt.

GRPO needs no value model: the baseline of a completion is the mean reward of the G
completions sampled for the same prompt, and (in the original GRPO and in the paper) the
difference is divided by the group's standard deviation. Dr. GRPO drops the division, which
otherwise up-weights groups that are nearly all right or all wrong.
"""

from __future__ import annotations

import torch


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-completion advantage ``(r - mean_group) / (std_group + eps)``, or ``r - mean_group``.

    Args:
        rewards: (N,) scalar reward per completion, N = num_prompts * group_size, the G
            completions of prompt i at rows ``i*G : (i+1)*G`` (the order the rollout returns).
        group_size: G, completions per prompt (>= 2: one completion has no baseline).
        scale_by_std: divide by the group's std (GRPO, the paper); False is Dr. GRPO.
        eps: added to the std; a group whose rewards are all equal gets advantage 0.

    Returns:
        advantages: (N,) float32.
        metrics: ``frac_reward_zero_std`` (groups that carry no learning signal) and
            ``reward/group_std_mean``. The std is the unbiased one (``torch.std``), as in
            TRL and verl.
    """
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a multiple of group_size={group_size} entries, got {tuple(rewards.shape)}"
        )
    if group_size < 2:
        raise ValueError("group_size must be >= 2: a group of one has no baseline")
    grouped = rewards.float().view(-1, group_size)  # (num_prompts, G)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True)
    advantages = grouped - mean
    if scale_by_std:
        advantages = advantages / (std + eps)
    zero_std = torch.isclose(std, torch.zeros_like(std))
    metrics = {
        "frac_reward_zero_std": zero_std.float().mean().item(),
        "reward/group_std_mean": std.mean().item(),
    }
    return advantages.view(-1), metrics
