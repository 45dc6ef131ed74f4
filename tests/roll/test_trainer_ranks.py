"""The RL trainer as 2 DeepSpeed ranks (Ray actors, gloo) against 1 rank: `.venv/bin/pytest tests/roll/test_trainer_ranks.py`
(about a minute and a half on 2 busy cores: two actors load torch and DeepSpeed).

One update of the group (roll/workers/trainer_group.py, as the driver starts it) = the same update as one
in-process rank on all the trajectories: the weights within 1e-6 of each tensor's norm (float32; 7e-8 measured) on
every rank, the metrics equal, for IPA and GRPO, with even shares (2 + 2 micro-batches), uneven ones (2 + 1) and a
rank with none (all in one micro-batch). Both sides take the same updates in turn (Adam's state goes along). A
non-finite loss on one rank skips the update on all; the weights out and the state come from the group; a rank
that dies is a WorkerDied naming it.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest
import ray
import torch
from test_roll_trainer import trajectory
from trainer_helpers import micro_moe_dir

pytestmark = pytest.mark.slow
# the helpers below run inside the actors (`__ray_call__`), where this test module cannot be imported
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

REPO = Path(__file__).resolve().parents[2]
# metrics that are not the update's (seconds) or that a rank sums in another order (float rounding)
_TIMING = "step_"


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    """(one rank in-process, a group of two Ray actors, the driver's Run whose `_get` the group reports through)."""
    from roll.config import TrainConfig, load_config
    from roll.driver import Run, _start_ray
    from roll.workers.trainer import Trainer
    from roll.workers.trainer_group import TrainerGroup

    model_dir = str(micro_moe_dir(tmp_path_factory.mktemp("tiny")))
    # one torch thread on every side: a matmul split over another thread count rounds otherwise, and the MoE
    # router's top-k turns that into 1e-6 of the weights (the group's 2 threads split into 1 a rank)
    cfg = TrainConfig(lr=1e-3, micro_batch_tokens=16, zero_stage=2, threads=1)
    run = Run(load_config(REPO / "configs/rl/tiny-cpu.yaml", [f"runs_dir={tmp_path_factory.mktemp('runs')}",
                                                                "rollout.resample.enabled=false"]))  # fmt: skip
    _start_ray()
    options = {"num_cpus": 0, "runtime_env": {"env_vars": {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "2"}}}
    group = TrainerGroup(model_dir, cfg.model_copy(update={"workers": 2, "threads": 2}), "cpu", options, run._get)
    try:
        one = Trainer(model_dir, cfg)
        group.ready()
        yield one, group, run
    finally:
        group.kill()
        ray.shutdown()


def configure(one, group, **update) -> None:
    """The same train config on both sides (the tests of the one-rank trainer swap it the same way)."""
    one.cfg = one.cfg.model_copy(update=update)
    for ref in [a.__ray_call__.remote(_set_cfg, update) for a in group.actors]:
        ray.get(ref)


def _set_cfg(trainer, update):
    trainer.cfg = trainer.cfg.model_copy(update=update)


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in trainer.model.state_dict().items()}


def assert_same_update(one, group, trajectories, **step_args) -> tuple[dict, dict]:
    """One step on both sides: the weights of every rank within ~1e-6 of the one rank's, the metrics equal."""
    want = one.step(trajectories, **step_args)
    got = group.call("step", trajectories, sorted(step_args.get("reference", ())), step_args.get("given", {}))
    expected = _weights(one)
    for rank, actor in enumerate(group.actors):
        weights = ray.get(actor.__ray_call__.remote(_weights))
        for name, w in expected.items():
            rel = ((weights[name] - w).norm() / w.norm()).item()
            assert rel <= 1e-6, f"rank {rank}: {name} off by {rel:.3g} of its norm"
    assert got.keys() == want.keys()
    for k, v in want.items():
        if k.startswith(_TIMING):
            continue
        if isinstance(v, float) and not math.isnan(v):
            assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
        elif not (isinstance(v, float) and math.isnan(v)):
            assert got[k] == v, k
    return want, got


def test_two_ranks_make_the_one_rank_update_ipa_and_grpo_even_uneven_and_with_an_idle_rank(sides):
    from roll.workers.trainer import shares

    one, group, _ = sides
    four = [trajectory("ok", 1.0), trajectory("bad", 0.0, seed=2), trajectory("x", 1.0, 1, seed=3),
            trajectory("y", 0.0, 1, seed=4)]  # fmt: skip
    three = [trajectory("a", 1.0, seed=5), trajectory("b", 0.0, seed=6), trajectory("c", 0.0, seed=7)]
    assert shares([16] * 4, 2) == [[0, 2], [1, 3]] and shares([16] * 3, 2) == [[0, 2], [1]]
    assert shares([16], 2) == [[0], []]

    # IPA, 4 micro-batches of one trajectory each, 2 per rank; references ride along (ratio 1 on them)
    want, _ = assert_same_update(one, group, four, reference=["ok"])
    assert want["chunks"] == 8 and want["pos_chunks"] > 0 and want["grad_norm"] > 0 and want["loss"] != 0
    # GRPO (per-trajectory denominators), the same shares
    configure(one, group, algorithm="grpo")
    want, _ = assert_same_update(one, group, four)
    assert want["algorithm"] == "grpo" and want["grad_norm"] > 0
    # IPA, 3 micro-batches: 2 + 1
    configure(one, group, algorithm="ipa")
    want, _ = assert_same_update(one, group, three)
    assert want["chunks"] == 6 and want["grad_norm"] > 0
    # all three trajectories in one micro-batch: rank 1 has none and joins the reduction with zeros
    configure(one, group, micro_batch_tokens=4096)
    want, _ = assert_same_update(one, group, three, reference=["a"])
    assert want["chunks"] == 6 and want["grad_norm"] > 0


def test_a_non_finite_loss_on_one_rank_skips_the_update_on_every_rank(sides):
    one, group, _ = sides
    configure(one, group, micro_batch_tokens=16)
    before = [ray.get(actor.__ray_call__.remote(_weights)) for actor in group.actors]
    trajs = [trajectory("ok", 1.0), trajectory("nan", 0.0, logprob=float("nan"), seed=2)]  # one rank ok, the other NaN
    want = one.step(trajs, reference=["ok"])
    got = group.call("step", trajs, ["ok"], {})
    assert want["skipped"] and got["skipped"] and re.match(r"trainer rank [01]: non-finite loss", got["error"])
    for actor, was in zip(group.actors, before, strict=True):
        weights = ray.get(actor.__ray_call__.remote(_weights))
        assert all(torch.equal(weights[k], v) for k, v in was.items())
    assert_same_update(one, group, [trajectory("ok", 1.0), trajectory("b", 0.0, seed=2)], reference=["ok"])


def test_the_weights_out_and_the_state_come_from_the_group(sides, tmp_path):
    from safetensors.torch import load

    one, group, _ = sides
    sent = {}
    for blob in ray.get(group.first_ref("weight_buckets")):
        sent.update(load(blob))
    rank0 = ray.get(group.actors[0].__ray_call__.remote(_weights))
    for k in ("lm_head.weight", "model.embed_tokens.weight", "model.layers.1.mlp.gate.weight"):  # (experts unfused)
        assert torch.equal(sent[k], rank0[k]), k
    out = group.call("save_state", str(tmp_path / "ck"))
    assert sorted(p.name for p in Path(out).glob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]  # fmt: skip
    assert group.call("load_state", out) == one.version
    from roll.trainer.errors import CheckpointError

    with pytest.raises(CheckpointError, match="written by 2 trainer rank\\(s\\) but this run has 1; resume with "
                                              "train.workers=2"):  # fmt: skip
        one.load_state(out)


def test_a_rank_that_dies_is_a_worker_died_naming_it(sides):
    from roll.driver import WorkerDied

    one, group, _ = sides
    ray.kill(group.actors[1])
    with pytest.raises(WorkerDied, match=r"^trainer rank 1 of 2 died \("):
        group.call("step", [trajectory("ok", 1.0), trajectory("b", 0.0, seed=2)], ["ok"], {})


@pytest.mark.gpu
def test_two_ranks_on_two_gpus_over_nccl_make_the_one_rank_update(tmp_path):
    """The same on cuda (`-m gpu`, alone: DeepSpeed's accelerator is per process; needs 2 GPUs): NCCL, bf16 weights.
    bf16 rounds the two sides apart, so the ranks must agree with each other exactly and with one rank closely."""
    import os

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs (one per rank)")
    if os.environ.get("DS_ACCELERATOR", "cuda") != "cuda":
        pytest.skip("DeepSpeed was set up for another accelerator in this process (run the gpu tests alone)")
    from roll.config import TrainConfig
    from roll.workers.trainer import Trainer
    from roll.workers.trainer_group import TrainerGroup

    model_dir = str(micro_moe_dir(tmp_path / "tiny"))
    cfg = TrainConfig(lr=1e-3, micro_batch_tokens=16, zero_stage=2)
    trajs = [trajectory("ok", 1.0), trajectory("bad", 0.0, seed=2), trajectory("x", 1.0, 1, seed=3)]
    ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        options = {"num_cpus": 1, "num_gpus": 1}
        get = lambda name, ref, timeout=None: ray.get(ref, timeout=timeout)  # noqa: E731
        group = TrainerGroup(model_dir, cfg.model_copy(update={"workers": 2}), "cuda", options, get)
        group.ready()
        got = group.call("step", trajs, ["ok"], {})
        ranks = [ray.get(a.__ray_call__.remote(_weights)) for a in group.actors]
        group.kill()
    finally:
        ray.shutdown()
    want = Trainer(model_dir, cfg, device="cuda").step(trajs, reference=["ok"])
    assert not got["skipped"] and got["chunks"] == want["chunks"] == 6
    assert got["loss"] == pytest.approx(want["loss"], rel=2e-2) and got["grad_norm"] == pytest.approx(
        want["grad_norm"], rel=2e-2
    )
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
