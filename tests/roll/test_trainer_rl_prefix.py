"""The RL trainer's shared prefix (`train.shared_prefix`, roll/workers/trainer.py and roll/trainer/forward.py's
`hidden_at`, `plan_units`): `.venv/bin/pytest tests/roll/test_trainer_rl_prefix.py`.

Every iflow trajectory starts with the same ~976-token system prompt; a micro-batch's trajectories that share it
run it once. The logprobs and gradients are those of separate rows (float64, targets inside the prefix too), the
planner puts trajectories that start alike together and leaves the others alone, and one update with the prefix
shared moves the weights as one without.
"""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import micro_moe_dir

from rock.contracts import Chunk, Trajectory
from roll.algo.packing import pack_trajectory
from roll.trainer.forward import plan_units

PREFIX = 80  # the "system prompt" every trajectory below starts with (micro_moe_dir: 64 tokens, 128 positions)


def trajectory(tid: str, reward: float, group: int, seed: int, prefix: list[int]) -> Trajectory:
    """Two chunks after `prefix`: a prompt of its own, a 4-token answer, a tool result, another answer."""
    g = torch.Generator().manual_seed(seed)
    own = torch.randint(1, 64, (16,), generator=g).tolist()
    first = prefix + own[:5]
    second = first + own[5:9] + own[9:12]
    chunks = [Chunk(trajectory_id=tid, sandbox_id="s", index=i, prompt_token_ids=p, response_token_ids=r,
                    response_logprobs=[-4.0] * 4, policy_version=0, latency_s=0.0, created_at=0.0)
              for i, (p, r) in enumerate([(first, own[5:9]), (second, own[12:16])])]  # fmt: skip
    return Trajectory(trajectory_id=tid, task_id=f"task{group}", family="f", split="train", reward=reward,
                      status="resolved" if reward else "unresolved", chunks=chunks, group=group)  # fmt: skip


def batch() -> list[Trajectory]:
    """Two groups of two that share the prefix, and one trajectory that starts otherwise."""
    g = torch.Generator().manual_seed(0)
    prefix, other = (torch.randint(1, 64, (PREFIX,), generator=g).tolist() for _ in range(2))
    return [trajectory("a0", 1.0, 0, 1, prefix), trajectory("a1", 0.0, 0, 2, prefix),
            trajectory("b0", 0.0, 1, 3, prefix), trajectory("b1", 1.0, 1, 4, prefix),
            trajectory("c0", 1.0, 2, 5, other)]  # fmt: skip


def test_the_plan_shares_the_prefix_of_trajectories_that_start_alike():
    packs = [pack_trajectory(t.chunks) for t in batch()]
    assert [len(p) for p in packs] == [1] * 5  # each trajectory's chunks pack into one sequence
    plan = plan_units(packs, 4096, shared_prefix=True, min_prefix=64)
    assert sorted(plan) == [([0, 1, 2, 3], PREFIX), ([4], 0)]
    # the budget counts the prefix once: 80 + 4 x 17 tokens fit where 4 x 97 do not
    assert [ix for ix, _ in plan_units(packs, 200, shared_prefix=True, min_prefix=64)] == [[0, 1, 2, 3], [4]]
    assert all(len(ix) <= 2 for ix, p in plan_units(packs, 200, shared_prefix=False) if not p)


def test_logprobs_and_gradients_with_the_prefix_once_are_those_of_separate_rows(tmp_path):
    from transformers import AutoModelForCausalLM

    from roll.algo.packing import pad_sequences
    from roll.workers.trainer import _ResponseLogprobs

    model = AutoModelForCausalLM.from_pretrained(micro_moe_dir(tmp_path), dtype=torch.float64,
                                                 experts_implementation="eager")  # fmt: skip
    module = _ResponseLogprobs(model, slice_len=7)
    padded = pad_sequences([s for t in batch()[:4] for s in pack_trajectory(t.chunks)])
    rows, cols = padded.loss_mask.nonzero(as_tuple=True)
    # targets inside the prefix too (a shared answer): predicted from the prefix's own states, the same for all rows
    rows, cols = torch.cat([rows, torch.tensor([0, 2, 3])]), torch.cat([cols, torch.tensor([10, 10, PREFIX - 1])])
    results = []
    for prefix_len in (0, PREFIX):
        model.zero_grad()
        logp = module(padded.input_ids, rows, cols, prefix_len)  # [N]
        (logp * torch.linspace(0.5, 1.5, len(logp), dtype=torch.float64)).sum().backward()
        results.append((logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (rows_logp, rows_grad), (pre_logp, pre_grad) = results
    torch.testing.assert_close(pre_logp, rows_logp, rtol=1e-9, atol=1e-9)
    assert rows_grad.keys() == pre_grad.keys() and len(rows_grad) > 10
    # Qwen3's RMSNorm computes in float32 even for float64 weights: gradients summed in another order differ ~1e-8
    for name in rows_grad:
        torch.testing.assert_close(pre_grad[name], rows_grad[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_an_update_with_the_prefix_shared_equals_one_without(tmp_path):
    from roll.config import TrainConfig
    from roll.workers.trainer import Trainer

    micro_moe_dir(tmp_path)
    lr = 1e-2
    shared, rows = (Trainer(str(tmp_path), TrainConfig(lr=lr, shared_prefix=on, logprob_shift=False)) for on in (1, 0))
    plan, _ = shared._plan(batch(), lambda k: False, {})
    assert sorted((len(mb.keys), mb.prefix_len) for mb in plan) == [(2, 0), (8, PREFIX)]
    assert {mb.prefix_len for mb in rows._plan(batch(), lambda k: False, {})[0]} == {0}
    before = {k: v.detach().clone() for k, v in shared.model.state_dict().items()}
    a, b = shared.step(batch(), reference=["a0", "b1"]), rows.step(batch(), reference=["a0", "b1"])
    assert a["chunks"] == b["chunks"] == 10 and a["pos_chunks"] == b["pos_chunks"] > 0
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    after_a, after_b = shared.model.state_dict(), rows.model.state_dict()
    moved = max((after_a[k] - before[k]).abs().max().item() for k in before)
    # Adam's first step is ~lr x sign(grad): a wrong gradient flips signs (2 x lr apart); float32 noise does not
    assert moved > 0.5 * lr
    assert max((after_a[k] - after_b[k]).abs().max().item() for k in before) < 1e-2 * lr
