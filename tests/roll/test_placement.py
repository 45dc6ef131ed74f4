"""Ray actor options per role (roll/workers/placement.py): `.venv/bin/pytest tests/roll/test_placement.py`; the
placement on a real GPU: `-m gpu tests/roll/test_placement.py` (skipped without CUDA)."""

from __future__ import annotations

import pytest

from roll.config import RunConfig
from roll.workers.placement import PlacementError, actor_options


def run_config(device: str = "cpu", **sections) -> RunConfig:
    data = {"name": "t", "model": {"dir": "/nonexistent"}, "device": device}
    if device == "cuda":
        data["cluster"] = {"gpus_per_node": 8}
    for key, value in sections.items():
        data[key] = value
    return RunConfig.model_validate(data)


def test_on_cpu_every_actor_asks_no_cpu_and_no_gpu_and_gets_the_cpu_backends():
    opts = actor_options(run_config("cpu", inference={"engines": 2, "kvcache_gb": 3}, train={"mode": "async"}))
    assert set(opts) == {"inference", "trainer"}
    for role in opts.values():
        assert role["num_cpus"] == 0 and "num_gpus" not in role
        env = role["runtime_env"]["env_vars"]
        assert env["DS_ACCELERATOR"] == "cpu" and env["VLLM_CPU_KVCACHE_SPACE"] == "3"
        assert env["ROME_VLLM_SLEEP_MODE"] == "0"


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_on_cuda_an_engine_asks_its_tensor_parallel_gpus_and_a_trainer_rank_one(tp):
    opts = actor_options(run_config("cuda", inference={"tensor_parallel": tp}, train={"mode": "async"}))
    assert opts["inference"]["num_gpus"] == tp and opts["inference"]["num_cpus"] == 1
    assert opts["trainer"]["num_gpus"] == 1 and opts["trainer"]["num_cpus"] == 1
    for role in opts.values():  # the CPU backends are not forced on a GPU run
        env = role["runtime_env"]["env_vars"]
        assert "DS_ACCELERATOR" not in env and "VLLM_CPU_KVCACHE_SPACE" not in env


def test_on_cuda_colocated_the_engine_and_the_trainer_share_one_gpu_and_the_engine_can_sleep():
    opts = actor_options(run_config("cuda", train={"mode": "colocated"}))
    assert opts["inference"]["num_gpus"] + opts["trainer"]["num_gpus"] == 1
    assert opts["inference"]["runtime_env"]["env_vars"]["ROME_VLLM_SLEEP_MODE"] == "1"


def test_on_cuda_colocated_more_than_one_engine_gpu_is_refused_naming_the_settings():
    with pytest.raises(PlacementError, match=r"tensor_parallel 2.*set them to 1"):
        actor_options(run_config("cuda", inference={"tensor_parallel": 2}, train={"mode": "colocated"}))


@pytest.mark.gpu
def test_the_actors_start_on_the_gpus_their_options_ask_for():
    import ray
    import torch

    n = torch.cuda.device_count()
    mode = "async" if n >= 2 else "colocated"  # disjoint GPUs need two; one GPU is shared
    opts = actor_options(run_config("cuda", cluster={"gpus_per_node": n}, train={"mode": mode}))

    class Probe:
        def where(self) -> dict:
            import os

            import torch

            return {"gpu_ids": ray.get_gpu_ids(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                    "cuda": torch.cuda.is_available() and torch.ones(1, device="cuda").item() == 1.0}  # fmt: skip

    ray.init(address="local", include_dashboard=False, num_gpus=n)
    try:
        probes = {role: ray.remote(Probe).options(**o).remote() for role, o in opts.items()}
        seen = {role: ray.get(p.where.remote(), timeout=300) for role, p in probes.items()}
    finally:
        ray.shutdown()
    for role, where in seen.items():
        assert where["cuda"] and len(where["gpu_ids"]) == 1 and where["visible"], (role, where)
    same = seen["inference"]["gpu_ids"] == seen["trainer"]["gpu_ids"]
    assert same if mode == "colocated" else not same, seen
