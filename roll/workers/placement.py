"""Where the run's Ray actors go: `actor_options(cfg)` gives the options per role (`.venv/bin/pytest
tests/roll/test_placement.py`; on a GPU: `-m gpu tests/roll/test_placement.py`).

- device cpu: every actor asks `num_cpus=0` and nothing else, because on a 2-core machine the engines and the
  trainer must all coexist and the OS time-shares them; DeepSpeed on its CPU accelerator, vLLM's CPU KV cache.
- device cuda: an engine asks `inference.tensor_parallel` GPUs (Ray sets its CUDA_VISIBLE_DEVICES to them, so
  vLLM's tensor-parallel workers inside it see exactly those), a trainer rank one GPU; one CPU each. Ray then
  places them on disjoint GPUs (async and sync modes) or refuses to start what the cluster cannot hold.
- device cuda with `train.mode=colocated`: the engine and the trainer share one GPU (half each, so that Ray puts
  them on the same device) and take turns on it (sleep/wake, offload/onload; roll/colocate.py).
"""

from __future__ import annotations

import os

from roll.config import RunConfig
from roll.errors import RollError

ROLES = ("inference", "trainer")


class PlacementError(RollError):
    """The run's actors cannot be placed as configured."""


def actor_env(cfg: RunConfig) -> dict[str, str]:
    """The environment of every actor of the run."""
    env = {"OMP_NUM_THREADS": str(os.cpu_count() or 1), "TOKENIZERS_PARALLELISM": "false",
           # colocated: a CUDA engine starts in vLLM's sleep mode so that it can give the device back
           "ROME_VLLM_SLEEP_MODE": "1" if cfg.train.mode == "colocated" else "0"}  # fmt: skip
    if cfg.device == "cpu":
        env |= {"DS_ACCELERATOR": "cpu", "VLLM_CPU_KVCACHE_SPACE": str(cfg.inference.kvcache_gb)}
    return env


def actor_options(cfg: RunConfig) -> dict[str, dict]:
    """Ray `.options(...)` per role: 'inference' for each engine, 'trainer' for each trainer rank."""
    runtime_env = {"env_vars": actor_env(cfg)}
    if cfg.device == "cpu":
        return {role: {"num_cpus": 0, "runtime_env": runtime_env} for role in ROLES}
    tp = cfg.inference.tensor_parallel
    if cfg.train.mode == "colocated":
        if tp > 1 or cfg.inference.engines > 1 or cfg.train.workers > 1:
            raise PlacementError(f"train.mode colocated on cuda shares one GPU between one engine and one trainer "
                                 f"rank (inference.engines {cfg.inference.engines}, tensor_parallel {tp}, "
                                 f"train.workers {cfg.train.workers} asked); set them to 1")  # fmt: skip
        share = {"num_cpus": 1, "num_gpus": 0.5, "runtime_env": runtime_env}
        return {"inference": share, "trainer": dict(share)}
    return {"inference": {"num_cpus": 1, "num_gpus": tp, "runtime_env": runtime_env},
            "trainer": {"num_cpus": 1, "num_gpus": 1, "runtime_env": runtime_env}}  # fmt: skip
