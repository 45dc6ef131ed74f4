"""IPA math against hand-computed values and gradients: `.venv/bin/pytest tests/roll/test_algo_ipa.py -q`."""

import math

import pytest
import torch
from pydantic import ValidationError

from rock.contracts import Chunk, Trajectory
from roll.algo import advantage
from roll.algo.ipa import IPAConfig, grpo_loss, ipa_loss, ppo_clip_loss
from roll.algo.ratio import chunk_means, chunk_ratios, chunk_sums
from roll.algo.returns import chunk_returns, chunk_targets, group_advantages

# ---- returns ------------------------------------------------------------------------------------------------


def test_returns_last_chunk_gets_the_reward_and_each_earlier_one_a_factor_gamma_less():
    assert chunk_returns(3, 1.0, gamma=0.5).tolist() == [0.25, 0.5, 1.0]
    assert chunk_returns(1, 2.0).tolist() == [2.0]
    assert chunk_returns(4, 0.0).tolist() == [0.0] * 4
    assert chunk_returns(0, 1.0).tolist() == []
    # the default γ = 0.95 over 20 interactions leaves the first chunk 0.95^19 of the reward
    assert chunk_returns(20, 1.0)[0].item() == pytest.approx(0.95**19)


def test_returns_reject_bad_input():
    with pytest.raises(ValueError, match="gamma"):
        chunk_returns(3, 1.0, gamma=0.0)
    with pytest.raises(ValueError, match="gamma"):
        chunk_returns(3, 1.0, gamma=1.5)
    with pytest.raises(ValueError, match="num_chunks"):
        chunk_returns(-1, 1.0)


def test_returns_group_advantages_mean_baseline_by_hand():
    # group 0: a success in 2 chunks (γ = 0.5 -> [0.5, 1]) and a failure in 3; group 1: one success in 1 chunk
    rets = [chunk_returns(2, 1.0, 0.5), chunk_returns(3, 0.0, 0.5), chunk_returns(1, 1.0, 0.5)]
    got = group_advantages(rets, [0, 0, 1])
    # b_0 = mean(mean[0.5, 1], mean[0, 0, 0]) = mean(0.75, 0) = 0.375; b_1 = 1
    assert got[0].tolist() == pytest.approx([0.125, 0.625])
    assert got[1].tolist() == pytest.approx([-0.375] * 3)
    assert got[2].tolist() == pytest.approx([0.0])


def test_returns_group_advantages_std_normalised_by_hand():
    rets = [chunk_returns(2, 1.0, 0.5), chunk_returns(3, 0.0, 0.5), chunk_returns(2, 1.0, 0.5)]
    got = group_advantages(rets, torch.tensor([0, 0, 1]), normalize_std=True)
    # group 0: values (0.75, 0), population std 0.375
    assert got[0].tolist() == pytest.approx([0.125 / 0.375, 0.625 / 0.375])
    assert got[1].tolist() == pytest.approx([-1.0] * 3)
    # group 1 has a single trajectory: std 0, left undivided (b = 0.75)
    assert got[2].tolist() == pytest.approx([-0.25, 0.25])


def test_returns_with_gamma_one_match_the_grpo_baseline():
    rewards = [1.0, 0.0, 0.0, 1.0, 1.0]
    groups = [3, 3, 3, 7, 7]
    rets = [chunk_returns(k, r, gamma=1.0) for k, r in zip([2, 4, 1, 3, 5], rewards, strict=True)]
    got = group_advantages(rets, groups)
    grpo = advantage.group_advantages(torch.tensor(rewards), torch.tensor(groups))
    for g, a in zip(got, grpo.tolist(), strict=True):
        assert g.tolist() == pytest.approx([a] * g.numel())


def test_returns_group_advantages_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="2 trajectories but 1 group"):
        group_advantages([torch.ones(1), torch.ones(2)], [0])


def _traj(tid, indices, resolved, task="x", group=None):
    chunks = [Chunk(trajectory_id=tid, sandbox_id="s", index=i, latency_s=0.0, created_at=0.0) for i in indices]
    status = "resolved" if resolved else "unresolved"
    return Trajectory(
        trajectory_id=tid,
        task_id=task,
        family="f",
        split="train",
        reward=float(resolved),
        status=status,
        chunks=chunks,
        group=group,
    )


def test_returns_chunk_targets_follow_the_batch_keys():
    # a: resolved in 2 chunks recorded out of order (indices 3, 1); b: failed in 1; same task, so one group
    trajs = [_traj("a", [3, 1], True), _traj("b", [0], False), _traj("c", [0], True, task="y")]
    got = chunk_targets(trajs, [("b", 0), ("a", 3), ("a", 1), ("c", 0)], gamma=0.5)
    # a's returns by index order: index 1 -> 0.5, index 3 -> 1.0; baseline (0.75 + 0) / 2; c alone in its group
    assert got.returns.tolist() == [0.0, 1.0, 0.5, 1.0]
    assert got.advantages.tolist() == pytest.approx([-0.375, 0.625, 0.125, 0.0])
    assert got.positive.tolist() == [False, True, True, True]
    # an explicit group overrides the task: a and b apart, so b's baseline is its own 0
    got = chunk_targets([_traj("a", [1], True, group=1), _traj("b", [0], False, group=2)], [("b", 0)], gamma=0.5)
    assert got.advantages.tolist() == [0.0]
    with pytest.raises(ValueError, match="name no chunk"):
        chunk_targets(trajs, [("a", 2)])


# ---- chunk ratios -------------------------------------------------------------------------------------------


def _packed_row():
    # one packed row: a prompt token, chunk 0 (2 tokens), a tool-result token, chunk 1 (2 tokens), and a token
    # of chunk 0 that the mask leaves out (its huge difference must not count)
    ids = torch.tensor([[-1, 0, 0, -1, 1, 1, 0]])
    mask = torch.tensor([[0, 1, 1, 0, 1, 1, 0]])
    old = torch.zeros(1, 7)
    new = torch.tensor([[9.0, math.log(2.0), math.log(8.0), 9.0, 0.0, -math.log(4.0), 5.0]], requires_grad=True)
    return new, old, ids, mask


def test_ratio_is_the_geometric_mean_per_chunk_in_a_packed_row():
    new, old, ids, mask = _packed_row()
    r = chunk_ratios(new, old, ids, mask, low=0.6, high=2.0)
    assert r.ratio.tolist() == pytest.approx([4.0, 0.5])  # sqrt(2·8), sqrt(1·1/4)
    assert r.n_tokens.tolist() == [2.0, 2.0]
    # both leave [0.6, 2]: flagged as train/inference mismatch
    assert r.mismatch.tolist() == [True, True]
    r.log_ratio.sum().backward()
    # d mean_t / d new[t] = 1/2 on the chunks' tokens, 0 on prompt, tool result and the masked token
    assert new.grad.tolist() == [[0.0, 0.5, 0.5, 0.0, 0.5, 0.5, 0.0]]


def test_ratio_bounds_are_inclusive_and_empty_chunks_count_no_tokens():
    new, old, ids, mask = _packed_row()
    r = chunk_ratios(new, old, ids, mask, num_chunks=3, low=0.5, high=4.0)
    assert r.mismatch.tolist() == [False, False, False]
    assert r.n_tokens.tolist() == [2.0, 2.0, 0.0]
    assert r.ratio[2].item() == 1.0


def test_ratio_rejects_bad_bounds_shapes_and_ids():
    new, old, ids, mask = _packed_row()
    with pytest.raises(ValueError, match="low"):
        chunk_ratios(new, old, ids, mask, low=1.2, high=2.0)
    with pytest.raises(ValueError, match="shapes differ"):
        chunk_sums(new, ids[:, :3], mask)
    with pytest.raises(ValueError, match="out of range"):
        chunk_means(new, ids, mask, num_chunks=1)


# ---- IPA ----------------------------------------------------------------------------------------------------


def _ipa_batch():
    # row 0: chunk 0 (success, 2 tokens, ρ = 1) then chunk 1 (failure, 1 token, ρ = 0.5);
    # row 1: chunk 2 (failure, 2 tokens, ρ = 1.5) and a masked token
    new = torch.tensor([[-1.0, -3.0, -2.0], [-0.5, -1.5, -7.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -3.0, -2.0 + math.log(2.0)], [-0.5 - math.log(1.5), -1.5 - math.log(1.5), 0.0]])
    ids = torch.tensor([[0, 0, 1], [2, 2, 2]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    returns = torch.tensor([0.9, 0.0, 0.0])
    adv = torch.tensor([0.4, -0.6, -0.3])
    positive = torch.tensor([True, False, False])
    return new, old, ids, mask, returns, adv, positive


def test_ipa_loss_and_gradient_by_hand():
    new, old, ids, mask, returns, adv, positive = _ipa_batch()
    loss, m = ipa_loss(new, old, ids, mask, returns, adv, positive, neg_weight=0.5)
    # ℓ = (-2, -2, -1); pos: -0.9·-2 = 1.8; neg: sg(0.5)·0.6·-2 + sg(min(1.5, 1))·0.3·-1 = -0.9; D = 3
    assert loss.item() == pytest.approx((1.8 + 0.5 * -0.9) / 3)
    loss.backward()
    # success tokens: -G/(n·D) = -0.9/6; failed chunk 1: λ·0.5·0.6/(1·3); failed chunk 2: λ·1·0.3/(2·3).
    # The ratio is a stop-gradient weight: a gradient through ρ would add to chunk 1 and chunk 2's entries.
    assert new.grad.tolist() == [pytest.approx([-0.15, -0.15, 0.05]), pytest.approx([0.025, 0.025, 0.0])]
    assert m["pos_chunks"] == 1.0 and m["neg_chunks"] == 2.0 and m["mismatch_chunks"] == 0.0
    assert m["neg_weight_mean"] == pytest.approx(0.75)
    assert m["pos_term"] == pytest.approx(0.6) and m["neg_term"] == pytest.approx(-0.15)


def test_ipa_descent_raises_success_and_lowers_failure():
    new, old, ids, mask, returns, adv, positive = _ipa_batch()
    loss, _ = ipa_loss(new, old, ids, mask, returns, adv, positive)
    loss.backward()
    stepped = new.detach() - 0.1 * new.grad
    ell_before, _ = chunk_means(new.detach(), ids, mask, 3)
    ell_after, _ = chunk_means(stepped, ids, mask, 3)
    assert ell_after[0] > ell_before[0]
    assert ell_after[1] < ell_before[1] and ell_after[2] < ell_before[2]


def test_ipa_masks_mismatched_chunks_out_of_loss_gradient_and_count():
    new, old, ids, mask, returns, adv, positive = _ipa_batch()
    loss, m = ipa_loss(new, old, ids, mask, returns, adv, positive, neg_weight=0.5, ratio_high=1.4)
    assert loss.item() == pytest.approx((1.8 + 0.5 * 0.5 * 0.6 * -2) / 2)  # chunk 2 (ρ 1.5) excluded, D = 2
    loss.backward()
    assert new.grad[1].tolist() == [0.0, 0.0, 0.0]
    assert m["mismatch_chunks"] == 1.0 and m["neg_chunks"] == 1.0


def test_ipa_given_denominator_and_zero_neg_weight():
    new, old, ids, mask, returns, adv, positive = _ipa_batch()
    loss, _ = ipa_loss(new, old, ids, mask, returns, adv, positive, neg_weight=0.5, denominator=10)
    assert loss.item() == pytest.approx(1.35 / 10)
    loss, _ = ipa_loss(new, old, ids, mask, returns, adv, positive, neg_weight=0.0)
    assert loss.item() == pytest.approx(1.8 / 3)


def test_ipa_rejects_per_chunk_tensors_of_the_wrong_size():
    new, old, ids, mask, returns, adv, positive = _ipa_batch()
    with pytest.raises(ValueError, match="must all be"):
        ipa_loss(new, old, ids, mask, returns, adv[:2], positive)


def test_ipa_config_defaults_and_validation():
    c = IPAConfig()
    assert (c.gamma, c.neg_weight, c.ratio_low, c.ratio_high) == (0.95, 1.0, 0.5, 2.0)
    with pytest.raises(ValidationError):
        IPAConfig(gamma=1.5)
    with pytest.raises(ValidationError):
        IPAConfig(neg_wieght=1.0)


# ---- GRPO and PPO-clip --------------------------------------------------------------------------------------


def _token_batch():
    # token ratios 1.5, 1.0 (sample 0, A = +1) and 0.5 (sample 1, A = -1), ε = 0.2
    new = torch.tensor([[math.log(1.5), 0.0, math.log(0.5)]], requires_grad=True)
    return new, torch.zeros(1, 3), torch.tensor([[0, 0, 1]]), torch.ones(1, 3), torch.tensor([1.0, -1.0])


def test_grpo_loss_and_gradient_by_hand():
    new, old, ids, mask, adv = _token_batch()
    loss, m = grpo_loss(new, old, ids, mask, adv, clip_eps=0.2)
    # surrogates: min(1.5, 1.2) = 1.2 (clipped), 1.0, min(-0.5, -0.8) = -0.8 (clipped); per sample 1.1 and -0.8
    assert loss.item() == pytest.approx(-(1.1 - 0.8) / 2)
    loss.backward()
    # only the unclipped token moves: -(1/2 samples)(1/2 tokens)·r·A = -0.25
    assert new.grad.tolist() == [pytest.approx([0.0, -0.25, 0.0])]
    assert m["clip_frac"] == pytest.approx(2 / 3)


def test_ppo_clip_loss_and_gradient_by_hand():
    new, old, ids, mask, adv = _token_batch()
    loss, m = ppo_clip_loss(new, old, ids, mask, adv, clip_eps=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 1.0 - 0.8) / 3)
    loss.backward()
    assert new.grad.tolist() == [pytest.approx([0.0, -1 / 3, 0.0])]
    assert m["clip_frac"] == pytest.approx(2 / 3)


def test_grpo_and_ppo_ignore_masked_tokens():
    new, old, ids, mask, adv = _token_batch()
    mask = torch.tensor([[1, 1, 0]])
    loss, _ = grpo_loss(new, old, ids, mask, adv)
    assert loss.item() == pytest.approx(-1.1)  # sample 1 has no token left: D = 1
    loss, _ = ppo_clip_loss(new, old, ids, mask, adv)
    assert loss.item() == pytest.approx(-2.2 / 2)
