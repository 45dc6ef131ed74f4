"""The pure math against hand-computed values: `.venv/bin/pytest tests/roll/test_roll_algo.py`."""

import math

import pytest
import torch

from rock.contracts import Chunk
from roll.algo import chunk_ratio, collate_chunks, group_advantages, policy_gradient_loss, token_logprobs


def test_logprobs_match_log_softmax_by_hand():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # [1, 2, 2]
    targets = torch.tensor([[1, 0]])
    got = token_logprobs(logits, targets)
    assert got.shape == (1, 2)
    assert got[0, 0].item() == pytest.approx(math.log(0.5))
    assert got[0, 1].item() == pytest.approx(math.log(0.75))


def test_advantage_is_reward_minus_group_mean():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    assert group_advantages(rewards, groups).tolist() == [0.5, -0.5, 0.0, 0.0, 0.0, 0.0]


def test_advantage_with_uneven_groups_and_gaps_in_ids():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    groups = torch.tensor([3, 3, 3, 7])
    got = group_advantages(rewards, groups)
    assert got.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0.0])


def test_chunk_ratio_is_geometric_mean_over_response_tokens_only():
    new = torch.tensor([[0.0, math.log(2.0), math.log(8.0), 5.0]])
    old = torch.zeros(1, 4)
    mask = torch.tensor([[0, 1, 1, 0]])
    # geometric mean of 2 and 8 = 4; the unmasked 5.0 must not count
    assert chunk_ratio(new, old, mask).item() == pytest.approx(4.0)


def test_loss_unclipped_is_minus_mean_ratio_times_advantage():
    new = torch.tensor([[0.1, 0.1], [0.0, 0.0]], requires_grad=True)
    old = torch.zeros(2, 2)
    mask = torch.ones(2, 2)
    adv = torch.tensor([1.0, -1.0])
    loss, stats = policy_gradient_loss(new, old, mask, adv, clip_low=0.2, clip_high=0.28)
    r0 = math.exp(0.1)
    assert loss.item() == pytest.approx(-(r0 * 1.0 + 1.0 * -1.0) / 2)
    loss.backward()
    # d loss / d new[0, t] = -(1/2) * r0 * A0 * (1/2 tokens)
    assert new.grad[0].tolist() == pytest.approx([-r0 / 4, -r0 / 4])
    assert new.grad[1].tolist() == pytest.approx([0.25, 0.25])
    assert stats["clip_frac"] == 0.0


def test_loss_clips_a_large_ratio_with_positive_advantage():
    new = torch.tensor([[1.0]], requires_grad=True)  # ratio e ~ 2.718 > 1.28
    loss, stats = policy_gradient_loss(new, torch.zeros(1, 1), torch.ones(1, 1), torch.tensor([2.0]), 0.2, 0.28)
    assert loss.item() == pytest.approx(-1.28 * 2.0)
    loss.backward()
    assert new.grad.item() == 0.0  # clipped: no push further in the same direction
    assert stats["clip_frac"] == 1.0


def test_loss_keeps_a_large_ratio_with_negative_advantage():
    new = torch.tensor([[1.0]], requires_grad=True)
    loss, _ = policy_gradient_loss(new, torch.zeros(1, 1), torch.ones(1, 1), torch.tensor([-1.0]), 0.2, 0.28)
    assert loss.item() == pytest.approx(math.e)  # min(e * -1, 1.28 * -1) = -e
    loss.backward()
    assert new.grad.item() == pytest.approx(math.e)


def chunk(prompt: list[int], response: list[int], logprobs: list[float], index: int = 0) -> Chunk:
    return Chunk(trajectory_id="t", sandbox_id="s", index=index, prompt_token_ids=prompt, response_token_ids=response,
                 response_logprobs=logprobs, latency_s=0.0, created_at=0.0)  # fmt: skip


def test_collate_aligns_response_to_shifted_targets():
    chunks = [chunk([5, 6, 7], [8, 9], [-0.5, -0.25]), chunk([1], [2], [-1.0], index=1)]
    b = collate_chunks(chunks, [1.0, -1.0], pad_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9], [1, 2, 0, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b.targets.tolist() == [[6, 7, 8, 9], [2, 0, 0, 0]]
    assert b.response_mask.tolist() == [[0, 0, 1, 1], [1, 0, 0, 0]]
    assert b.old_logprobs.tolist() == [[0, 0, -0.5, -0.25], [-1.0, 0, 0, 0]]
    assert b.advantages.tolist() == [1.0, -1.0]


def test_collate_rejects_mismatched_logprobs():
    with pytest.raises(ValueError, match="mismatched"):
        collate_chunks([chunk([1], [2, 3], [-1.0])], [0.0])
