"""The RL trainer under ZeRO-3 (train.zero_stage=3: parameters partitioned over the ranks) against ZeRO-2:
`.venv/bin/pytest tests/roll/test_trainer_zero3.py` (about two minutes on 2 busy cores: two Ray actors load torch
and DeepSpeed).

One step on the same trajectories gives the same weights under ZeRO-3 as under ZeRO-2 (within 1e-6 of each tensor's
norm, float32, one torch thread), on one rank in-process and on two ranks (Ray actors, gloo, as the driver starts
them), for IPA with the delta_logp second forward and a rank that runs short (2 + 1 micro-batches) or idle, and
after a non-finite loss on one rank skipped an update; the
weights handed out (`weight_buckets`, `save`) are the whole parameters, gathered by every rank; async snapshots of
old weights are whole on every rank and score stale chunks as under ZeRO-2; `save_state` / `load_state` round-trip on two ranks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import ray
import torch
from test_roll_trainer import trajectory
from trainer_helpers import micro_moe_dir

pytestmark = pytest.mark.slow
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the helpers below run inside the actors

REPO = Path(__file__).resolve().parents[2]


def _full(trainer) -> dict[str, torch.Tensor]:
    return trainer.full_state_dict()


def _set_cfg(trainer, update):
    trainer.cfg = trainer.cfg.model_copy(update=update)


def assert_close(got: dict, want: dict, who: str) -> None:
    assert got.keys() == want.keys(), who
    for name, w in want.items():
        rel = ((got[name].float() - w.float()).norm() / w.float().norm()).item()
        assert rel <= 1e-6, f"{who}: {name} off by {rel:.3g} of its norm"


def cfg(**update):
    from roll.config import TrainConfig

    # one torch thread everywhere: the MoE router's top-k turns another thread count's rounding into 1e-6
    return TrainConfig(lr=1e-3, micro_batch_tokens=16, zero_stage=2, threads=1).model_copy(update=update)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(micro_moe_dir(tmp_path_factory.mktemp("micro")))


@pytest.fixture(scope="module")
def pair(model_dir):
    """(ZeRO-2, ZeRO-3) one-rank trainers in this process, on the same model."""
    from roll.workers.trainer import Trainer

    return Trainer(model_dir, cfg()), Trainer(model_dir, cfg(zero_stage=3))


FOUR = [("ok", 1.0, 0, 1), ("bad", 0.0, 0, 2), ("x", 1.0, 1, 3), ("y", 0.0, 1, 4)]
THREE = [("a", 1.0, 0, 5), ("b", 0.0, 0, 6), ("c", 0.0, 0, 7)]


def trajs(spec) -> list:
    return [trajectory(tid, reward, group, seed=seed) for tid, reward, group, seed in spec]


def test_zero3_partitions_and_one_rank_makes_the_zero2_update(pair, tmp_path):
    from safetensors.torch import load, load_file

    z2, z3 = pair
    assert z3.setup.config["zero_optimization"] == {"stage": 3, "stage3_param_persistence_threshold": 0}
    # the parameters really are partitions (the gather below is needed): none holds its whole tensor
    assert all(p.numel() == 0 for p in z3.model.parameters())
    assert_close(z3.full_state_dict(), z2.full_state_dict(), "before")
    # the last: logits 2 targets at a time, so lm_head runs several times in one forward and again (checkpointed
    # slices) in its backward: ZeRO-3 gathers it and reduces its gradient once per backward all the same
    for spec, ref, slice_len in ((FOUR, ["ok"], 4096), (THREE, [], 4096), (FOUR, ["ok"], 2)):
        for t in pair:
            t.engine.module.slice_len = slice_len
        want, got = z2.step(trajs(spec), reference=ref), z3.step(trajs(spec), reference=ref)
        assert not got["skipped"] and got["grad_norm"] > 0 and got["loss"] != 0
        for k in ("loss", "grad_norm", "chunks", "delta_logp_pos", "delta_logp_neg", "logprob_abs_diff"):
            assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-7), k
        assert_close(z3.full_state_dict(), z2.full_state_dict(), f"ZeRO-3 after a step (slices of {slice_len})")
    sent, whole = {}, {}
    for blob in z3.weight_buckets():
        sent.update(load(blob))
    for blob in z2.weight_buckets():  # ZeRO-2: the model's own whole parameters (checkpoint layout: experts unfused)
        whole.update(load(blob))
    assert_close(sent, whole, "weight_buckets")
    assert {k for k in sent if "experts" in k} and set(sent) >= {"lm_head.weight", "model.embed_tokens.weight"}
    out = Path(z3.save(str(tmp_path / "policy")))
    assert_close(load_file(out / "model.safetensors"), load_file(Path(z2.save(str(tmp_path / "p2"))) /
                 "model.safetensors"), "save")  # fmt: skip


def _async(trainer, on: bool) -> None:
    """Async mode with max_staleness 1 (the last version's weights kept), or back to sync."""
    _set_cfg(trainer, {"mode": "async" if on else "sync", "max_staleness": 1.0})
    trainer.keep_versions = int(on)


def _snapshot(trainer) -> dict:
    return trainer._snapshots[max(trainer._snapshots)]


def stale_steps(sampled_at: int, step) -> dict:
    """Two async steps on chunks sampled by version `sampled_at`: the second's are stale and far off the policy
    (recorded logprob -12), so they are scored under the kept snapshot. `step(trajectories)`: its metrics."""
    for logprob in (-4.0, -12.0):
        spec = [trajectory(f"s{logprob}{i}", float(i % 2), seed=i + 1, logprob=logprob) for i in range(2)]
        for t in spec:
            t.chunks = [c.model_copy(update={"policy_version": sampled_at}) for c in t.chunks]
        got = step(spec)
    assert got["stale_scored_chunks"] == 4 and not got.get("stale_unscored_chunks")
    return got


def test_zero3_async_snapshots_are_whole_and_score_stale_chunks(pair):
    z2, z3 = pair
    for t in pair:
        _async(t, True)
    try:
        want, got = stale_steps(z2.version, z2.step), stale_steps(z3.version, z3.step)
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert_close(_snapshot(z3), _snapshot(z2), "the snapshot")
        assert all(t.numel() > 0 for t in _snapshot(z3).values())
        assert_close(z3.full_state_dict(), z2.full_state_dict(), "after the stale step")
    finally:
        for t in pair:
            _async(t, False)


@pytest.fixture(scope="module")
def group(model_dir, tmp_path_factory):
    """Two ZeRO-3 ranks as Ray actors (roll/workers/trainer_group.py, as the driver starts them)."""
    from roll.config import load_config
    from roll.driver import Run, _start_ray
    from roll.workers.trainer_group import TrainerGroup

    run = Run(load_config(REPO / "configs/rl/tiny-cpu.yaml", [f"runs_dir={tmp_path_factory.mktemp('runs')}",
                                                                "rollout.resample.enabled=false"]))  # fmt: skip
    _start_ray()
    options = {"num_cpus": 0, "runtime_env": {"env_vars": {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "2"}}}
    g = TrainerGroup(model_dir, cfg(zero_stage=3, workers=2, threads=2), "cpu", options, run._get)
    try:
        g.ready()
        yield g
    finally:
        g.kill()
        ray.shutdown()


def _both(group, fn, *args) -> list:
    return ray.get([a.__ray_call__.remote(fn, *args) for a in group.actors])


def test_two_zero3_ranks_make_the_one_rank_zero2_update(model_dir, group, tmp_path):
    from safetensors.torch import load

    from roll.workers.trainer import Trainer

    z2 = Trainer(model_dir, cfg())
    # 4 micro-batches 2 + 2; 3: 2 + 1 (rank 1 runs short, in the step and in the delta_logp forward); all three in
    # one: rank 1 idle
    for spec, ref, update in ((FOUR, ["ok"], {}), (THREE, [], {}), (THREE, ["a"], {"micro_batch_tokens": 4096})):
        if update:
            _set_cfg(z2, update)
            _both(group, _set_cfg, update)
        want = z2.step(trajs(spec), reference=ref)
        got = group.call("step", trajs(spec), ref, {})
        assert not got["skipped"] and got["grad_norm"] > 0
        for k in ("loss", "grad_norm", "chunks", "delta_logp_pos", "delta_logp_neg"):
            assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-7), k
        expected = z2.full_state_dict()
        for rank, weights in enumerate(_both(group, _full)):
            assert_close(weights, expected, f"rank {rank}")
    _set_cfg(z2, {"micro_batch_tokens": 16})
    _both(group, _set_cfg, {"micro_batch_tokens": 16})
    # a non-finite loss on rank 1 (rank 0's micro-batch fine): no update on either, nothing left for the next
    nan = [trajectory("ok", 1.0), trajectory("nan", 0.0, logprob=float("nan"), seed=2)]
    assert z2.step(nan, reference=["ok"])["skipped"] and group.call("step", nan, ["ok"], {})["skipped"]
    for rank, weights in enumerate(_both(group, _full)):
        assert_close(weights, expected, f"rank {rank} after the skipped step")
    want, got = z2.step(trajs(FOUR), reference=["ok"]), group.call("step", trajs(FOUR), ["ok"], {})
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5) and got["grad_norm"] == pytest.approx(
        want["grad_norm"], rel=1e-5
    )
    expected = z2.full_state_dict()
    for rank, weights in enumerate(_both(group, _full)):
        assert_close(weights, expected, f"rank {rank} after the step after the skip")
    sent, whole = {}, {}
    for blob in ray.get(group.first_ref("weight_buckets")):  # every rank gathers, rank 0's buckets
        sent.update(load(blob))
    for blob in z2.weight_buckets():
        whole.update(load(blob))
    assert_close(sent, whole, "weight_buckets")
    path = group.first("save", str(tmp_path / "policy"))
    assert (Path(path) / "model.safetensors").is_file()
    # async: every rank gathers the snapshot (whole on each) and scores its own stale chunks on its host copy
    version = z2.version
    _async(z2, True)
    _both(group, _async, True)
    want = stale_steps(version, z2.step)
    got = stale_steps(version, lambda spec: group.call("step", spec, [], {}))
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    for rank, (weights, snapshot) in enumerate(zip(_both(group, _full), _both(group, _snapshot), strict=True)):
        assert_close(snapshot, _snapshot(z2), f"rank {rank}'s snapshot")
        assert_close(weights, z2.full_state_dict(), f"rank {rank} after the stale step")
    _both(group, _async, False)


def test_save_state_load_state_round_trip_on_two_zero3_ranks(group, tmp_path):
    before = _both(group, _full)
    out = group.call("save_state", str(tmp_path / "ck"))
    assert sorted(p.name for p in Path(out).glob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]  # fmt: skip
    version = ray.get(group.actors[0].__ray_call__.remote(lambda t: t.version))
    first = group.call("step", trajs(FOUR), ["ok"], {})  # moves the weights and Adam's state on
    moved = _both(group, _full)
    assert any(not torch.equal(moved[0][k], before[0][k]) for k in before[0])
    assert group.call("load_state", out) == version
    for rank, weights in enumerate(_both(group, _full)):
        assert_close(weights, before[rank], f"rank {rank} restored")
    again = group.call("step", trajs(FOUR), ["ok"], {})  # the same step from the same state: the same update
    assert again["loss"] == pytest.approx(first["loss"], rel=1e-6) and again["grad_norm"] == pytest.approx(
        first["grad_norm"], rel=1e-6
    )
    for rank, weights in enumerate(_both(group, _full)):
        assert_close(weights, moved[rank], f"rank {rank} stepped again")


@pytest.mark.gpu
def test_zero3_on_cuda_makes_the_zero2_update_in_bf16(tmp_path):
    """The same on one GPU (`-m gpu`, alone: DeepSpeed's accelerator is per process): NCCL, bf16 weights; bf16
    rounds the two apart, so close, not equal; the buckets whole and in bf16."""
    import os

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if os.environ.get("DS_ACCELERATOR", "cuda") != "cuda":
        pytest.skip("DeepSpeed was set up for another accelerator in this process (run the gpu tests alone)")
    from safetensors.torch import load

    from roll.workers.trainer import Trainer

    model_dir = str(micro_moe_dir(tmp_path / "micro"))
    z2 = Trainer(model_dir, cfg(threads=None), device="cuda")
    z3 = Trainer(model_dir, cfg(zero_stage=3, threads=None), device="cuda")
    want, got = z2.step(trajs(FOUR), reference=["ok"]), z3.step(trajs(FOUR), reference=["ok"])
    assert not got["skipped"] and got["loss"] == pytest.approx(want["loss"], rel=2e-2)
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=2e-2)
    a, b = z2.full_state_dict(), z3.full_state_dict()
    for k, v in a.items():
        assert ((b[k].float() - v.float()).norm() / v.float().norm()).item() < 2e-2, k
    sent = {}
    for blob in z3.weight_buckets():
        sent.update(load(blob))
    assert {t.dtype for t in sent.values()} == {torch.bfloat16} and all(t.numel() for t in sent.values())
