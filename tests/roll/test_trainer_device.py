"""The RL trainer honours the run's `device` and `train.workers`: `.venv/bin/pytest tests/roll/test_trainer_device.py`;
one real update on a GPU (NCCL, bf16): `-m gpu tests/roll/test_trainer_device.py` (skipped without CUDA; run by
scripts/gpu_checks.sh).

- `deepspeed_setup(train, device)`: cpu -> gloo, float32, bf16 off; cuda -> NCCL, bfloat16, bf16 on; the rest of
  DeepSpeed's config the same on both; ZeRO-3 with every parameter partitioned (tests/roll/test_trainer_zero3.py);
  unknown devices refused.
- `train.workers` > 1 runs (tests/roll/test_trainer_ranks.py) except colocated on one GPU, and so does ZeRO-3 except
  colocated on cuda: both refused in one line by `roll train` and `driver.train` before anything starts.
- one update: the weights on the device in the device's dtype, the process group's backend, weights moved, finite
  loss, the buckets for the inference worker in that dtype, async snapshots kept on the host and scored there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from trainer_helpers import micro_moe_dir

from rock.contracts import Chunk, Trajectory
from roll.config import RunConfig, TrainConfig, check_train_workers
from roll.errors import ConfigError, RollError
from roll.workers.trainer import Trainer, deepspeed_setup

REPO = Path(__file__).resolve().parents[2]


def test_cpu_is_gloo_and_float32():
    s = deepspeed_setup(TrainConfig(lr=3e-5, zero_stage=1, grad_clip=0.5), "cpu")
    assert (s.device, s.backend, s.dtype) == ("cpu", "gloo", torch.float32)
    assert s.config["bf16"] == {"enabled": False} and s.config["fp16"] == {"enabled": False}
    assert s.config["zero_optimization"] == {"stage": 1} and s.config["gradient_clipping"] == 0.5
    assert s.config["optimizer"]["params"]["lr"] == 3e-5
    assert s.describe() == "cpu, gloo, float32"
    assert deepspeed_setup(TrainConfig()) == deepspeed_setup(TrainConfig(), "cpu")  # the default device is cpu


def test_cuda_is_nccl_and_bf16_and_nothing_else_changes():
    cfg = TrainConfig(lr=3e-5, zero_stage=2)
    cpu, cuda = deepspeed_setup(cfg, "cpu"), deepspeed_setup(cfg, "cuda")
    assert (cuda.device, cuda.backend, cuda.dtype) == ("cuda", "nccl", torch.bfloat16)
    assert cuda.config["bf16"] == {"enabled": True} and cuda.config["fp16"] == {"enabled": False}
    assert {k: v for k, v in cuda.config.items() if k != "bf16"} == {k: v for k, v in cpu.config.items() if k != "bf16"}
    assert cuda.describe() == "cuda, nccl, bfloat16"


def test_zero3_partitions_every_parameter_and_unknown_devices_are_refused():
    z3 = deepspeed_setup(TrainConfig(zero_stage=3), "cuda").config["zero_optimization"]
    assert z3 == {"stage": 3, "stage3_param_persistence_threshold": 0}
    assert deepspeed_setup(TrainConfig(zero_stage=2)).config["zero_optimization"] == {"stage": 2}
    with pytest.raises(RollError, match="cpu or cuda, not 'mps'"):
        deepspeed_setup(TrainConfig(), "mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_a_cuda_trainer_without_cuda_says_so_in_one_line(tmp_path):
    with pytest.raises(RollError, match="^device cuda asked for, but torch sees no CUDA device$"):
        Trainer(str(tmp_path), TrainConfig(), device="cuda")


def run_config(tmp_path: Path, workers: int, **more) -> RunConfig:
    return RunConfig.model_validate({"name": "t", "runs_dir": str(tmp_path / "runs"), "model": {"dir": "/nonexistent"},
                                     "train": {"workers": workers}} | more)  # fmt: skip


def test_several_trainer_ranks_are_accepted_but_not_colocated_on_one_gpu(tmp_path):
    check_train_workers(run_config(tmp_path, 1))
    check_train_workers(
        run_config(tmp_path, 3)
    )  # cpu (roll/workers/trainer_group.py; tests/roll/test_trainer_ranks.py)
    check_train_workers(run_config(tmp_path, 2, device="cuda", cluster={"gpus_per_node": 2}))
    cfg = run_config(tmp_path, 3, device="cuda", cluster={"gpus_per_node": 4}, inference={"engine": "vllm"},
                     train={"workers": 3, "mode": "colocated"})  # fmt: skip
    with pytest.raises(ConfigError) as e:
        check_train_workers(cfg)
    assert str(e.value) == ("train.workers=3: train.mode colocated on cuda runs one trainer rank; set train.workers=1 "
                            "or train.mode sync/async")  # fmt: skip
    from roll.driver import train

    with pytest.raises(ConfigError, match=r"^train.workers=3: train.mode colocated on cuda runs one trainer rank"):
        train(cfg)
    assert not (tmp_path / "runs").exists()  # nothing was started or written


def test_zero3_is_accepted_but_not_colocated_on_cuda(tmp_path):
    check_train_workers(run_config(tmp_path, 2, train={"workers": 2, "zero_stage": 3}))
    check_train_workers(run_config(tmp_path, 1, train={"workers": 1, "zero_stage": 3, "mode": "colocated"}))  # cpu
    check_train_workers(run_config(tmp_path, 2, device="cuda", cluster={"gpus_per_node": 2},
                                   train={"workers": 2, "zero_stage": 3}))  # fmt: skip
    cfg = run_config(tmp_path, 1, device="cuda", cluster={"gpus_per_node": 2}, inference={"engine": "vllm"},
                     train={"workers": 1, "zero_stage": 3, "mode": "colocated"})  # fmt: skip
    with pytest.raises(ConfigError) as e:
        check_train_workers(cfg)
    assert str(e.value) == ("train.zero_stage=3: train.mode colocated on cuda cannot tell the trainer offloaded "
                            "under ZeRO-3; set train.zero_stage 0-2 or train.mode sync/async")  # fmt: skip


def test_roll_train_dry_run_accepts_two_ranks_and_refuses_them_colocated_on_cuda(capsys, tmp_path):
    from roll.cli import main

    config = REPO / "configs/rl/tiny-cpu.yaml"
    assert main(["train", str(config), "train.workers=2", f"runs_dir={tmp_path}", "--dry-run"]) == 0
    assert "is valid and fits; nothing was started" in capsys.readouterr().out
    colocated = ["device=cuda", "cluster.gpus_per_node=2", "train.mode=colocated", "rollout.resample.enabled=false"]
    assert main(["train", str(config), "train.workers=2", f"runs_dir={tmp_path}", *colocated, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "roll: error: train.workers=2: train.mode colocated on cuda runs one" in err
    assert not any(tmp_path.iterdir())


def test_roll_train_dry_run_accepts_the_30b_recipe_on_zero3(capsys, tmp_path):
    from roll.cli import main

    assert main(["train", str(REPO / "configs/rl/rome-30b-a3b.yaml"), f"runs_dir={tmp_path}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "train: DeepSpeed ZeRO-3 over 24 GPUs" in out and "is valid and fits; nothing was started" in out


# -- one real update


def trajectory(tid: str, reward: float, logprob: float, seed: int) -> Trajectory:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (16,), generator=g).tolist()
    chunks = [
        Chunk(trajectory_id=tid, sandbox_id="s", index=i, prompt_token_ids=ids[:a], response_token_ids=ids[a:b],
              response_logprobs=[logprob] * (b - a), policy_version=0, latency_s=0.0, created_at=0.0)
        for i, (a, b) in enumerate([(5, 8), (11, 16)])
    ]  # fmt: skip
    return Trajectory(trajectory_id=tid, task_id="task", family="f", split="train", reward=reward,
                      status="resolved" if reward else "unresolved", chunks=chunks, group=0)  # fmt: skip


def one_update(model_dir: Path, device: str) -> None:
    """Two updates in async mode: the first trains a group; the second trains the same (now stale) rollouts,
    recorded with logprobs far off the policy, so their mismatch test scores them under the kept version 0."""
    trainer = Trainer(str(model_dir), TrainConfig(lr=1e-2, mode="async", max_staleness=1, threads=1), device)
    setup = deepspeed_setup(trainer.cfg, device)
    assert torch.distributed.get_backend() == setup.backend
    params = list(trainer.model.parameters())
    assert {p.device.type for p in params} == {device} and {p.dtype for p in params} == {setup.dtype}
    before = {k: v.detach().float().cpu().clone() for k, v in trainer.model.state_dict().items()}
    stats = trainer.step([trajectory("ok", 1.0, -4.0, seed=1), trajectory("bad", 0.0, -4.0, seed=2)])
    assert not stats["skipped"] and stats["chunks"] == 4 and torch.isfinite(torch.tensor(stats["loss"]))
    assert stats["grad_norm"] > 0 and stats["loss"] != 0
    after = {k: v.detach().float().cpu() for k, v in trainer.model.state_dict().items()}
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])
    assert all(t.device.type == "cpu" for t in trainer._snapshots[0].values())  # host copies, not device memory

    stats = trainer.step([trajectory("ok2", 1.0, -12.0, seed=1), trajectory("bad2", 0.0, -12.0, seed=2)])
    assert not stats["skipped"] and stats["stale_scored_chunks"] == 4 and not stats.get("stale_unscored_chunks")

    from safetensors.torch import load

    sent = {}
    for blob in trainer.weight_buckets():
        sent.update(load(blob))
    head = sent["lm_head.weight"]
    assert head.dtype == setup.dtype and torch.equal(head, trainer.model.lm_head.weight.detach().cpu())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return micro_moe_dir(tmp_path_factory.mktemp("micro"))


@pytest.mark.slow
def test_one_update_on_cpu(model_dir):
    if os.environ.get("DS_ACCELERATOR", "cpu") != "cpu":
        pytest.skip("DeepSpeed was set up for another accelerator in this process")
    one_update(model_dir, "cpu")


@pytest.mark.gpu
def test_one_update_on_cuda_is_bf16_over_nccl(model_dir):
    if os.environ.get("DS_ACCELERATOR", "cuda") != "cuda":
        pytest.skip("DeepSpeed was set up for another accelerator in this process (run the gpu tests alone)")
    one_update(model_dir, "cuda")
