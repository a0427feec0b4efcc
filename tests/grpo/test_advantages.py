"""Group-normalised advantages: vectorised code against a plain per-group loop."""

from __future__ import annotations

import math

import pytest
import torch

from coldstart.grpo.advantages import group_advantages


def loop_advantages(rewards: list[float], G: int, scale: bool, eps: float) -> list[float]:
    out = []
    for start in range(0, len(rewards), G):
        group = rewards[start : start + G]
        mean = sum(group) / G
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (G - 1))  # unbiased, as torch.std
        out.extend((r - mean) / (std + eps) if scale else r - mean for r in group)
    return out


@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("G", [2, 4, 7])
def test_matches_loop(scale, G):
    gen = torch.Generator().manual_seed(G)
    rewards = torch.rand(5 * G, generator=gen).round(decimals=1)
    adv, _ = group_advantages(rewards, G, scale_by_std=scale, eps=1e-6)
    expected = torch.tensor(loop_advantages(rewards.tolist(), G, scale, 1e-6))
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=1e-5)


def test_zero_std_groups_get_zero_advantage_and_are_counted():
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    adv, metrics = group_advantages(rewards, 4)
    assert adv[:8].abs().max() == 0
    assert metrics["frac_reward_zero_std"] == pytest.approx(2 / 3)
    # the one informative group: the single success is pushed up, the failures down, summing to 0
    assert adv[8] > 0 and (adv[9:] < 0).all() and adv[8:].sum().abs() < 1e-5


def test_dr_grpo_keeps_reward_scale():
    rewards = torch.tensor([0.0, 10.0, 0.0, 0.1])
    adv, _ = group_advantages(rewards, 2, scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([-5.0, 5.0, -0.05, 0.05]))
    scaled, _ = group_advantages(rewards, 2, scale_by_std=True)
    torch.testing.assert_close(
        scaled[:2].abs(), scaled[2:].abs(), atol=1e-3, rtol=0
    )  # std scaling equalises them


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="group of one"):
        group_advantages(torch.zeros(4), 1)
