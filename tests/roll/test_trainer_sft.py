"""The supervised trainer (`.venv/bin/pytest tests/roll/test_trainer_sft.py`): shared-prefix gradients equal
separate rows, token-budget micro-batching gives the update of one big batch, the schedule spans the real
step count, NaN steps are skipped and repeated ones stop the run on the last good weights, a checkpoint of
another shape is refused, the HF export loads and gives the same logits, TensorBoard files and the PNG exist.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from trainer_helpers import make_sequences, small_model_dir

from roll.trainer import (
    CheckpointError,
    DivergedError,
    EpochSampler,
    NoDataError,
    SupervisedTrainer,
    TrainerConfig,
    lr_at,
)
from roll.trainer.forward import MicroBatch, common_prefix_len, microbatch_nll, plan_microbatches


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return small_model_dir(tmp_path_factory.mktemp("models"))


def cfg(**kw) -> TrainerConfig:
    base = dict(batch_sequences=4, micro_batch_tokens=4096, lr=1e-2, min_shared_prefix=16, progress=False)
    return TrainerConfig(**{**base, **kw})


def weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_jit_ops_build_under_the_venv_and_a_stale_build_lock_is_removed(tmp_path, monkeypatch):
    """PyTorch's JIT loader waits forever on a build `lock` a killed process left; a fresh one (a build under way in
    another process) is left alone. Without TORCH_EXTENSIONS_DIR the ops go under the venv, not a shared cache."""
    import os
    import sys
    import time

    from roll.trainer.trainer import STALE_LOCK_S, extensions_dir

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert extensions_dir() == Path(sys.prefix) / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale, fresh = tmp_path / "deepspeed_shm_comm" / "lock", tmp_path / "other_op" / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir()
        lock.touch()
    old = time.time() - STALE_LOCK_S - 60
    os.utime(stale, (old, old))
    assert extensions_dir() == tmp_path
    assert not stale.exists() and fresh.exists()


def test_schedule_warms_up_then_decays_to_min_lr_at_the_last_step():
    c = TrainerConfig(lr=1.0, min_lr=0.1, warmup_steps=2, schedule="cosine")
    lrs = [lr_at(c, s, 10) for s in range(10)]
    assert lrs[:3] == [0.5, 1.0, 1.0]
    assert lrs[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))
    assert lr_at(TrainerConfig(lr=0.3, schedule="constant"), 7, 10) == 0.3
    with pytest.raises(ValueError, match="min_lr"):
        TrainerConfig(lr=1e-4, min_lr=1e-3)
    with pytest.raises(ValueError, match="extra"):
        TrainerConfig(learning_rate=1e-4)


def test_epoch_sampler_sees_each_sequence_once_per_epoch_and_never_twice_in_a_batch():
    sampler = EpochSampler(5, seed=0)
    batches = [sampler.next_batch(4) for _ in range(5)]
    flat = [i for b in batches for i in b]
    assert all(len(set(b)) == 4 for b in batches)
    assert [sorted(flat[k : k + 5]) for k in range(0, 20, 5)] == [list(range(5))] * 4
    sampler, copy = EpochSampler(5, seed=0), EpochSampler(5, seed=0)
    sampler.next_batch(4), sampler.next_batch(4)
    copy.load_state_dict(sampler.state_dict())
    assert [copy.next_batch(3) for _ in range(4)] == [sampler.next_batch(3) for _ in range(4)]


def test_plan_puts_every_sequence_in_one_microbatch_and_finds_the_prefix():
    seqs = make_sequences(7, prefix_len=50)
    for shared in (False, True):
        plan = plan_microbatches(seqs, 200, shared_prefix=shared, min_prefix=16)
        assert sorted(i for mb in plan for i in mb.indices) == list(range(7))
        if shared:
            assert all(mb.prefix_len >= 50 for mb in plan if len(mb.sequences) > 1)
            assert all(mb.cost <= 200 for mb in plan if len(mb.sequences) > 1)
    assert common_prefix_len(seqs) == 50


def test_shared_prefix_gives_the_gradients_of_separate_rows(model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64, experts_implementation="eager")
    seqs = make_sequences(5, prefix_len=60, seed=3)
    P = common_prefix_len(seqs)
    results = []
    for prefix_len in (0, P):
        model.zero_grad()
        nll, counts = microbatch_nll(model, MicroBatch(list(range(5)), seqs, prefix_len), slice_len=7)
        nll.sum().backward()
        results.append((nll.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (nll_rows, g_rows), (nll_pre, g_pre) = results
    assert P == 60 and counts.tolist() == [int(s.loss_mask.sum()) for s in seqs]
    assert torch.allclose(nll_rows, nll_pre, rtol=1e-5, atol=1e-5)
    # and each equals the sequence alone, unpadded (right padding needs no attention mask in a causal model)
    with torch.no_grad():
        alone = torch.cat([microbatch_nll(model, MicroBatch([i], [s]), slice_len=7)[0] for i, s in enumerate(seqs)])
    assert torch.allclose(alone, nll_rows, rtol=1e-5, atol=1e-5)
    assert g_rows.keys() == g_pre.keys() and len(g_rows) > 10
    for name in g_rows:
        torch.testing.assert_close(g_pre[name], g_rows[name], rtol=1e-5, atol=1e-6, msg=name)


def grads_at_optimizer_step(trainer) -> dict[int, torch.Tensor]:
    """Record the gradients the optimizer steps on (stage 0: the torch optimizer itself)."""
    seen: dict[int, torch.Tensor] = {}
    opt = trainer.engine.optimizer
    real_step = opt.step

    def step(*a, **kw):
        for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
            seen[i] = p.grad.clone()
        return real_step(*a, **kw)

    opt.step = step
    return seen


@pytest.mark.slow
def test_token_budget_microbatches_give_the_update_of_one_big_batch(model_dir, tmp_path):
    seqs = make_sequences(6, prefix_len=40)
    # grad_clip off: clipping (and Adam) would hide a gradient off by a constant factor. The routers' balancing
    # loss is off: it is taken per micro-batch (as Megatron-LM's), so cutting a step changes it by design.
    one = SupervisedTrainer(model_dir, cfg(batch_sequences=6, shared_prefix=False, grad_clip=0, router_aux_coef=0),
                            tmp_path / "one")  # fmt: skip
    one_grads = grads_at_optimizer_step(one)
    one.fit(seqs, steps=1)
    # a budget that fits one sequence per micro-batch: six backward passes accumulate into one step
    many = SupervisedTrainer(model_dir, cfg(batch_sequences=6, micro_batch_tokens=75, grad_clip=0, router_aux_coef=0),
                             tmp_path / "many")  # fmt: skip
    many_grads = grads_at_optimizer_step(many)
    rows = []
    many.fit(seqs, steps=1, on_step=rows.append)
    assert rows[0]["tokens"] == sum(int(s.loss_mask.sum()) for s in seqs)
    assert len(one_grads) == len(many_grads) > 10
    for i in one_grads:
        torch.testing.assert_close(many_grads[i], one_grads[i], rtol=1e-4, atol=1e-7)
    lr = one.cfg.lr
    assert max_diff(weights(one), small_model_weights(model_dir)) > 0.5 * lr  # the step moved the weights
    # Adam divides by |grad|: float32 noise on near-zero gradients moves such weights by up to ~0.1 % of a step
    assert max_diff(weights(one), weights(many)) < 1e-2 * lr
    # ZeRO-2, micro-batches of a shared prefix and two or three suffixes: the same weights again
    zero2_cfg = many.cfg.model_copy(update={"zero_stage": 2, "micro_batch_tokens": 150})
    assert all(len(mb.sequences) > 1 and mb.prefix_len == 40 for mb in plan_microbatches(seqs, 150, True, 16))
    zero2 = SupervisedTrainer(model_dir, zero2_cfg, tmp_path / "zero2")
    zero2.fit(seqs, steps=1)
    assert max_diff(weights(one), weights(zero2)) < 1e-2 * lr


def small_model_weights(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()


@pytest.mark.slow
def test_schedule_length_is_the_real_step_count_and_metrics_are_written(model_dir, tmp_path):
    trainer = SupervisedTrainer(model_dir, cfg(lr=1e-3, min_lr=1e-4, warmup_steps=1), tmp_path / "run")
    seqs = make_sequences(6)
    with pytest.raises(NoDataError, match="no sequences"):
        trainer.fit([], steps=1)
    unlearnable = [s.__class__(**{**s.__dict__, "loss_mask": torch.zeros_like(s.loss_mask)}) for s in seqs]
    with pytest.raises(NoDataError, match="loss-bearing"):
        trainer.fit(unlearnable, steps=1)
    lrs = []
    summary = trainer.fit(seqs, epochs=1.5, on_step=lambda row: lrs.append((row["lr"], trainer.engine.get_lr()[0])))
    assert summary["steps"] == summary["total_steps"] == 3  # ceil(1.5 * 6 / 4)
    assert [a for a, _ in lrs] == [b for _, b in lrs]  # the optimizer ran at the logged rate
    assert lrs[0][0] == 1e-3 and lrs[-1][0] == pytest.approx(1e-4)
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["loss"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    seen = [i for r in rows for i in r["samples"]]
    assert sorted(seen[:6]) == list(range(6))  # one epoch sees every sequence once
    assert list((tmp_path / "run/tb").glob("events.out.tfevents.*"))
    assert (tmp_path / "run/loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "run/checkpoints/latest").read_text().strip() == "step-3"
    # a second phase: its own schedule over its own steps, the step count and the metrics carried on
    lrs.clear()
    second = trainer.fit(seqs, steps=3, on_step=lambda row: lrs.append((row["lr"], trainer.engine.get_lr()[0])))
    assert (second["steps"], second["global_step"]) == (3, 6)
    assert [a for a, _ in lrs] == [b for _, b in lrs] and [a for a, _ in lrs][::2] == [1e-3, pytest.approx(1e-4)]
    assert [json.loads(x)["step"] for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]


@pytest.mark.slow
def test_nan_step_is_skipped_and_repeated_nan_stops_on_the_last_good_weights(model_dir, tmp_path, monkeypatch):
    import roll.trainer.trainer as trainer_mod

    seqs = make_sequences(8, prefix_len=40)
    config = cfg(batch_sequences=4, micro_batch_tokens=75, schedule="constant", max_bad_steps=2, shared_prefix=False)
    real, calls = trainer_mod.microbatch_nll, []
    poisoned = {(2, 2), (4, 1), (5, 1)}  # (step, micro-batch): step 2 after one backward, then steps 4 and 5

    def nll_with_faults(model, mb, slice_len, pad_id=0, router_logits=None):
        step = trainer.step + 1
        calls.append(step)
        nll, counts = real(model, mb, slice_len, pad_id, router_logits)
        return (nll * float("nan"), counts) if (step, calls.count(step)) in poisoned else (nll, counts)

    monkeypatch.setattr(trainer_mod, "microbatch_nll", nll_with_faults)
    trainer = SupervisedTrainer(model_dir, config, tmp_path / "run")
    after = {}
    with pytest.raises(DivergedError, match=r"2 steps in a row \(\[4, 5\]\).*weights of step 3"):
        trainer.fit(seqs, steps=6, on_step=lambda row: after.setdefault(row["step"], (row, weights(trainer))))
    assert calls.count(1) == 4  # each step is four micro-batches (one sequence each): step 2 broke in the middle
    skipped = [s for s, (row, _) in after.items() if row["skipped"]]
    assert skipped == [2, 4, 5] and after[2][0]["loss"] is None and after[3][0]["loss"] > 0
    assert max_diff(after[1][1], after[2][1]) == 0  # the bad step changed nothing
    assert max_diff(after[3][1], after[5][1]) == 0
    exported = small_model_weights(trainer.save_hf(tmp_path / "export"))
    assert max_diff(after[3][1], exported) == 0

    # The grads the bad step's first micro-batch left were dropped: step 3 equals a run that never saw step 2.
    monkeypatch.setattr(trainer_mod, "microbatch_nll", real)
    order = [r["samples"] for s, (r, _) in sorted(after.items()) if s in (1, 3)]

    class Replay:
        def next_batch(self, n):
            return order.pop(0)

        def state_dict(self):
            return {}

    reference = SupervisedTrainer(model_dir, config, tmp_path / "reference")
    reference.fit(seqs, steps=2, sampler=Replay())
    assert max_diff(weights(reference), after[3][1]) < 1e-6


@pytest.mark.slow
def test_hf_export_loads_with_the_same_logits_and_the_chat_template(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer = SupervisedTrainer(model_dir, cfg(), tmp_path / "run")
    sampler = EpochSampler(4)
    sampler.update = lambda indices, losses: updates.append((indices, losses))  # what phase 2's sampler gets
    updates = []
    trainer.fit(make_sequences(4), steps=1, sampler=sampler)
    assert len(updates) == 1 and sorted(updates[0][0]) == [0, 1, 2, 3] and all(x > 0 for x in updates[0][1])
    out = trainer.save_hf(tmp_path / "export" / "model")
    assert not [p for p in (tmp_path / "export").iterdir() if p.name.startswith(".")]
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = make_sequences(1)[0].input_ids[None]
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, trainer.model(input_ids=ids).logits)
    tok = AutoTokenizer.from_pretrained(out)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>assistant" in text
    trainer.save_hf(out)  # replacing an existing export works too
    assert (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_checkpoint_of_another_model_shape_is_refused_naming_both(model_dir, tmp_path):
    SupervisedTrainer(model_dir, cfg(), tmp_path / "run").fit(make_sequences(4), steps=2)
    wider = small_model_dir(model_dir.parent, hidden=48)
    with pytest.raises(CheckpointError, match=r"hidden_size=32.*but the model has shape \[.*hidden_size=48"):
        SupervisedTrainer(wider, cfg(), tmp_path / "run", resume=True)
    # without resume, a new run replaces the old one's checkpoints (and, once it logs, its metrics)
    SupervisedTrainer(wider, cfg(), tmp_path / "run").fit(make_sequences(4), steps=1)
    assert (tmp_path / "run/checkpoints/latest").read_text().strip() == "step-1"
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir()) == ["latest", "step-1"]


@pytest.mark.slow
def test_zero3_trains_exports_and_resumes_like_stage_0(model_dir, tmp_path):
    seqs = make_sequences(4)
    plain = SupervisedTrainer(model_dir, cfg(), tmp_path / "zero0")
    plain.fit(seqs, steps=1)
    sharded = SupervisedTrainer(model_dir, cfg(zero_stage=3), tmp_path / "zero3")
    sharded.fit(seqs, steps=1)
    exported = small_model_weights(sharded.save_hf(tmp_path / "export"))  # gathered from the partitions
    assert max_diff(weights(plain), exported) < 1e-2 * plain.cfg.lr
    assert SupervisedTrainer(model_dir, cfg(zero_stage=3), tmp_path / "zero3", resume=True).step == 1
