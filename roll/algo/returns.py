"""Chunk-level discounted returns and group baselines (`.venv/bin/pytest tests/roll/test_algo_ipa.py -k returns`).

The chunked MDP: a trajectory is the ordered model calls (chunks) k = 1..K of one task attempt; each chunk is
one decision between two environment interactions, and the task's tests give one terminal reward R after the
last. Discounting per chunk rather than per token keeps the decay meaningful: 20 interactions at γ = 0.95
leave the first chunk 0.38 of the reward, where 2,000 tokens would leave it ~0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from rock.contracts import Trajectory


def chunk_returns(num_chunks: int, reward: float, gamma: float = 0.95) -> torch.Tensor:
    """The discounted return of every chunk of one trajectory with a terminal reward.

    With chunks numbered k = 1..K (K = `num_chunks`, k = 1 the first model call, k = K the last) and the
    reward R arriving after chunk K, `G_k = γ^(K−k) · R`: the last chunk gets R·γ^0 = R, the first R·γ^(K−1).
    Returns [K] float32, position i holding G_(i+1).
    """
    if num_chunks < 0:
        raise ValueError(f"num_chunks must be >= 0, got {num_chunks}")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    exponents = torch.arange(num_chunks - 1, -1, -1, dtype=torch.float64)  # [K]: K-1, ..., 1, 0
    return (reward * gamma**exponents).to(torch.float32)  # [K]


def group_advantages(
    returns_by_traj: Sequence[torch.Tensor],
    groups: Sequence[int] | torch.Tensor,
    normalize_std: bool = False,
    eps: float = 1e-6,
) -> list[torch.Tensor]:
    """Chunk advantages `A_k = G_k − b_g` against the mean baseline of the trajectory's group.

    returns_by_traj[i]: [K_i] chunk returns of trajectory i; groups[i]: its group (the attempts at the same
    task) -> list of [K_i] advantages. The baseline `b_g` is the mean, over the group's trajectories, of each
    trajectory's mean chunk return: every attempt counts once whatever its length (a long trajectory must
    not dominate the baseline), and with γ = 1 it is the group's mean reward, i.e. GRPO's baseline.
    With `normalize_std`, advantages are divided by the standard deviation (population) of those same
    per-trajectory values; a group whose values are all equal (std < eps) is left undivided, since dividing
    by ~0 would turn the within-trajectory discount differences into huge steps.
    """
    if len(returns_by_traj) != len(groups):
        raise ValueError(f"{len(returns_by_traj)} trajectories but {len(groups)} group ids")
    group_list = [int(g) for g in groups]
    per_traj = [r.float().mean() if r.numel() else torch.tensor(0.0) for r in returns_by_traj]  # each a scalar
    out: list[torch.Tensor] = [torch.empty(0)] * len(returns_by_traj)
    for g in dict.fromkeys(group_list):
        members = [i for i, gi in enumerate(group_list) if gi == g]
        values = torch.stack([per_traj[i] for i in members])  # [n_g]
        baseline = values.mean()
        std = values.std(unbiased=False)
        scale = std if normalize_std and std >= eps else torch.tensor(1.0)
        for i in members:
            out[i] = (returns_by_traj[i].float() - baseline) / scale  # [K_i]
    return out


class ChunkTargets(NamedTuple):
    returns: torch.Tensor  # [C] G_k
    advantages: torch.Tensor  # [C] A_k
    positive: torch.Tensor  # [C] bool: the chunk's trajectory was resolved


def chunk_targets(
    trajectories: Sequence[Trajectory],
    keys: Sequence[tuple[str, int]],
    gamma: float = 0.95,
    normalize_std: bool = False,
) -> ChunkTargets:
    """Per-chunk G, A and success for the chunk ids of a batch (`PackedBatch.chunk_keys`: (trajectory_id, index)).

    A trajectory's chunks are numbered k = 1..K in `index` order (K = its number of chunks), its reward is the
    terminal R, its group is `group` (the attempts of one RL iteration) or, when unset, its task.
    """
    by_traj = {t.trajectory_id: t for t in trajectories}
    if len(by_traj) != len(trajectories):
        raise ValueError("trajectory ids repeat")
    rets = [chunk_returns(len(t.chunks), t.reward, gamma) for t in trajectories]
    group_of = {
        g: i for i, g in enumerate(dict.fromkeys(t.group if t.group is not None else t.task_id for t in trajectories))
    }
    groups = [group_of[t.group if t.group is not None else t.task_id] for t in trajectories]
    advs = group_advantages(rets, groups, normalize_std=normalize_std)
    where: dict[tuple[str, int], tuple[float, float, bool]] = {}
    for t, g, a in zip(trajectories, rets, advs, strict=True):
        for k, c in enumerate(sorted(t.chunks, key=lambda c: c.index)):
            where[(t.trajectory_id, c.index)] = (g[k].item(), a[k].item(), t.resolved)
    missing = [key for key in keys if key not in where]
    if missing:
        raise ValueError(f"{len(missing)} chunk keys name no chunk of the given trajectories, e.g. {missing[0]}")
    values = [where[key] for key in keys]
    return ChunkTargets(
        returns=torch.tensor([v[0] for v in values], dtype=torch.float32),
        advantages=torch.tensor([v[1] for v in values], dtype=torch.float32),
        positive=torch.tensor([v[2] for v in values], dtype=torch.bool),
    )
