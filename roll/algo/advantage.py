"""Group-baselined advantages (`pytest tests/roll/test_roll_algo.py -k advantage`)."""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """reward minus the mean reward of its group (the attempts at the same task).

    rewards: [N] float, group_ids: [N] long (any non-negative ids) -> [N] float.
    No division by the group's standard deviation: with 0/1 rewards and small groups it turns a
    single lucky success into a huge step (Dr. GRPO's argument).
    """
    n_groups = int(group_ids.max()) + 1 if group_ids.numel() else 0
    sums = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, group_ids, rewards)  # [G]
    counts = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, group_ids, torch.ones_like(rewards))  # [G]
    return rewards - (sums / counts.clamp(min=1))[group_ids]  # [N]
