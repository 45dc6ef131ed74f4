"""The DeepSpeed step on a tiny random Qwen3-MoE with synthetic chunks: `.venv/bin/pytest tests/roll/test_roll_trainer.py`."""

import pytest
import torch
from trainer_helpers import micro_moe_dir

from rock.contracts import Chunk, Trajectory

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    out = micro_moe_dir(tmp_path_factory.mktemp("tiny"))
    (out / "tokenizer_config.json").write_text("{}")  # stands for the tokenizer files copied along
    return out


def trajectory(tid: str, reward: float, group: int = 0, logprob: float = -4.0, seed: int = 1) -> Trajectory:
    """Two chunks whose prompts extend each other (they pack into one sequence) with random tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (16,), generator=g).tolist()
    chunks = [
        Chunk(trajectory_id=tid, sandbox_id="s", index=0, prompt_token_ids=ids[:5], response_token_ids=ids[5:8],
              response_logprobs=[logprob] * 3, policy_version=0, latency_s=0.0, created_at=0.0),
        Chunk(trajectory_id=tid, sandbox_id="s", index=1, prompt_token_ids=ids[:11], response_token_ids=ids[11:16],
              response_logprobs=[logprob] * 5, policy_version=0, latency_s=0.0, created_at=0.0),
    ]  # fmt: skip
    return Trajectory(trajectory_id=tid, task_id=f"task{group}", family="f", split="train", reward=reward,
                      status="resolved" if reward else "unresolved", chunks=chunks, group=group)  # fmt: skip


def weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def changed(before: dict, after: dict) -> list[str]:
    return [k for k in before if not torch.equal(before[k], after[k])]


def test_step_changes_weights_and_the_buckets_and_saved_dir_hold_them(tiny_model_dir, tmp_path):
    from safetensors.torch import load
    from transformers import AutoModelForCausalLM

    from roll.config import TrainConfig
    from roll.workers.trainer import Trainer

    trainer = Trainer(str(tiny_model_dir), TrainConfig(lr=1e-2))
    before = weights(trainer)
    # a success beside a failure in one group, and a group that failed twice (no signal)
    trajs = [trajectory("ok", 1.0), trajectory("bad", 0.0, seed=2), trajectory("x", 0.0, 1, seed=3),
             trajectory("y", 0.0, 1, seed=4)]  # fmt: skip
    stats = trainer.step(trajs)
    assert not stats["skipped"] and stats["chunks"] == 8 and stats["grad_norm"] > 0
    assert stats["pos_chunks"] == 2 and stats["neg_chunks"] == 6 and stats["loss"] != 0
    after = trainer.model.state_dict()
    assert "lm_head.weight" in changed(before, after) and len(changed(before, after)) > len(before) // 2

    sent = {}
    for blob in trainer.weight_buckets():
        sent.update(load(blob))
    saved = trainer.save(str(tmp_path / "policy" / "v1"))
    assert not list((tmp_path / "policy").glob(".*tmp*"))
    assert (tmp_path / "policy/v1/tokenizer_config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).state_dict()
    for k in ("lm_head.weight", "model.embed_tokens.weight"):
        assert torch.equal(loaded[k], after[k]) and torch.equal(sent[k], after[k])

    # every attempt of the group failed: no baseline to beat, no success to imitate, the loss is exactly 0
    stats = trainer.step([trajectory("a", 0.0), trajectory("b", 0.0, seed=2)])
    assert stats["loss"] == 0.0 and stats["pos_chunks"] == 0


@pytest.fixture(scope="module")
def ipa_trainer(tiny_model_dir):
    from roll.config import TrainConfig
    from roll.workers.trainer import Trainer

    return Trainer(str(tiny_model_dir), TrainConfig(lr=1e-2))


def test_ipa_raises_the_success_and_lowers_the_failure(ipa_trainer):
    # First step of a fresh optimizer. Both as references: μ is the trainer's own, ρ = 1 (-4.0 would be mismatch).
    ok, bad = trajectory("ok", 1.0), trajectory("bad", 0.0, seed=2)
    stats = ipa_trainer.step([ok, bad], reference=["ok", "bad"])
    assert stats["pos_term"] > 0 and stats["neg_term"] < 0 and stats["mismatch_chunks"] == 0
    assert stats["delta_logp_pos"] > 0 > stats["delta_logp_neg"]


def test_reference_chunks_are_never_mismatch_masked_and_far_policy_chunks_are(ipa_trainer):
    # the oracle's recorded logprobs are 0.0 (not μ): replaced by the trainer's own; a policy chunk whose
    # recorded μ is far from the trainer's (-30 per token) is a train/inference mismatch and left out
    stats = ipa_trainer.step([trajectory("oracle", 1.0, logprob=0.0), trajectory("far", 0.0, logprob=-30.0, seed=2)],
                             reference=["oracle"])  # fmt: skip
    assert stats["pos_chunks"] == 2 and stats["mismatch_chunks"] == 2 and stats["neg_chunks"] == 0
    assert stats["mismatch_frac"] == 0.5 and stats["reference_chunks"] == 2


def test_a_nan_loss_applies_no_update_and_says_so(ipa_trainer):
    before = weights(ipa_trainer)
    stats = ipa_trainer.step([trajectory("ok", 1.0), trajectory("nan", 0.0, logprob=float("nan"), seed=2)],
                             reference=["ok"])  # fmt: skip
    assert stats["skipped"] and "non-finite loss" in stats["error"]
    assert changed(before, weights(ipa_trainer)) == []
    assert not ipa_trainer.step([trajectory("ok", 1.0), trajectory("b", 0.0, seed=2)], reference=["ok", "b"])["skipped"]


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_token_level_grpo_and_ppo_run_through_the_same_step(ipa_trainer, algorithm):
    trainer = ipa_trainer
    cfg = trainer.cfg
    trainer.cfg = cfg.model_copy(update={"algorithm": algorithm})  # one DeepSpeed set-up for all: a few s each
    try:
        before = weights(trainer)
        stats = trainer.step([trajectory("ok", 1.0), trajectory("bad", 0.0, seed=2)], reference=["ok", "bad"])
    finally:
        trainer.cfg = cfg
    # on-policy (ratio 1) the surrogate's value is Σ A = 0 over a group; its gradient is not
    assert stats["algorithm"] == algorithm and stats["grad_norm"] > 0 and 0 <= stats["clip_frac"] <= 1
    assert changed(before, weights(trainer))  # (the direction is not asserted: Adam's momentum of earlier tests)


def test_a_given_prefix_is_imitated_whatever_became_of_the_resampled_attempt(ipa_trainer):
    # a resampled attempt that failed after the reference's chunk 0 (given: recorded logprobs 0.0, not μ)
    resampled = trajectory("resampled", 0.0, logprob=0.0)
    resampled.chunks[1].response_logprobs = [-4.0] * 5  # the policy's own chunk
    stats = ipa_trainer.step([resampled], given={"resampled": 1})
    # the given chunk: imitated at ratio 1; the sampled one: a failure (or a mismatch, after the earlier tests' steps)
    assert stats["given_chunks"] == 1 and stats["pos_chunks"] == 1 and stats["pos_term"] > 0
    assert stats["neg_chunks"] + stats["mismatch_chunks"] == 1
    cfg = ipa_trainer.cfg
    ipa_trainer.cfg = cfg.model_copy(update={"algorithm": "grpo"})
    try:  # token-level GRPO has no imitation term: the given chunk is context only
        assert ipa_trainer.step([resampled], given={"resampled": 1})["chunks"] == 1
    finally:
        ipa_trainer.cfg = cfg


def test_a_skipped_update_leaves_nothing_behind_for_the_next(tiny_model_dir):
    """ZeRO-2 sums each backward's gradients until the step: the micro-batches trained before the non-finite one
    must not reach the next update (they did, 3% of the weights, before `_discard_gradients` cleared them)."""
    from roll.config import TrainConfig
    from roll.workers.trainer import Trainer

    cfg = TrainConfig(lr=1e-3, micro_batch_tokens=16, zero_stage=2)
    skipped, fresh = Trainer(str(tiny_model_dir), cfg), Trainer(str(tiny_model_dir), cfg)
    bad = [trajectory("ok", 1.0), trajectory("nan", 0.0, logprob=float("nan"), seed=2)]
    plan, _ = skipped._plan(bad, lambda k: k[0] == "ok", {})
    assert [mb.keys[0][0] for mb in plan] == ["ok", "nan"]  # a backward before the bad micro-batch
    assert skipped.step(bad, reference=["ok"])["skipped"]
    good = [trajectory("ok", 1.0), trajectory("b", 0.0, seed=2)]
    skipped.step(good, reference=["ok"])
    fresh.step(good, reference=["ok"])
    assert changed(weights(skipped), weights(fresh)) == []


def test_epochs_are_that_many_updates_on_the_same_rollouts_under_one_version(tiny_model_dir):
    """`train.epochs=2` is two optimizer updates on one iteration's rollouts, the second's ratios under the moved
    policy: the weights of two one-epoch steps on the same rollouts, published as one version."""
    from roll.config import TrainConfig
    from roll.workers.trainer import Trainer

    group = [trajectory("ok", 1.0), trajectory("bad", 0.0, seed=2), trajectory("p", 0.0, logprob=-3.5, seed=3)]
    twice, once = (
        Trainer(str(tiny_model_dir), TrainConfig(lr=1e-3, epochs=2)),
        Trainer(str(tiny_model_dir), TrainConfig(lr=1e-3)),
    )
    stats = twice.step(group, reference=["ok", "bad"])
    assert stats["epochs"] == 2 and twice.version == 1 and not stats["skipped"]
    first = once.step(group, reference=["ok", "bad"])
    assert changed(weights(once), weights(twice))  # one update is not two
    once.step(group, reference=["ok", "bad"])
    assert once.version == 2 and first["epochs"] == 1
    for k, v in weights(once).items():
        torch.testing.assert_close(weights(twice)[k], v, rtol=0, atol=1e-6)
    assert stats["loss"] == first["loss"]  # the metrics are the first pass's (the rollouts' own policy)


def test_epochs_are_refused_in_async_mode():
    from pydantic import ValidationError

    from roll.config import RunConfig

    with pytest.raises(ValidationError, match="train.epochs 2 is for train.mode sync or colocated"):
        RunConfig(name="x", model={"dir": "m"}, train={"mode": "async", "epochs": 2})
