"""The driver's bookkeeping between rollout and trainer: `.venv/bin/pytest tests/roll/test_roll_driver.py`."""

import random
from pathlib import Path

import pytest

from rock.contracts import Chunk, Trajectory
from roll.config import load_config
from roll.driver import chunk_advantages, pick_attempts
from roll.errors import ConfigError
from roll.tasks.spec import Environment, TaskSpec

TINY = Path(__file__).resolve().parents[2] / "configs/rl/tiny-cpu.yaml"


def chunk(i: int, response: list[int]) -> Chunk:
    return Chunk(trajectory_id="t", sandbox_id="sb", index=i, prompt_token_ids=[1], response_token_ids=response,
                 response_logprobs=[-1.0] * len(response), latency_s=0.0, created_at=0.0)  # fmt: skip


def traj(group: int, reward: float, n_chunks: int, empty: int = 0) -> Trajectory:
    chunks = [chunk(i, [2]) for i in range(n_chunks)] + [chunk(n_chunks + i, []) for i in range(empty)]
    return Trajectory(trajectory_id=f"t{group}{reward}", task_id="task", family="f", split="train", reward=reward,
                      status="resolved" if reward else "unresolved", chunks=chunks, group=group)  # fmt: skip


def test_every_chunk_gets_its_trajectorys_group_advantage_and_empty_calls_are_dropped():
    trajectories = [traj(0, 1.0, 2), traj(0, 0.0, 1, empty=1), traj(1, 0.0, 1), traj(1, 0.0, 1)]
    chunks, advantages = chunk_advantages(trajectories)
    assert len(chunks) == 5 and all(isinstance(c, Chunk) and c.response_token_ids for c in chunks)
    assert advantages == [0.5, 0.5, -0.5, 0.0, 0.0]


def test_attempts_are_tasks_times_group_size_with_shared_groups():
    cfg = load_config(TINY, ["rollout.tasks_per_iteration=3", "rollout.group_size=2"])
    tasks = [TaskSpec(id=f"t{i}", instruction="x", family="f", environment=Environment(image="i"),
                      tests={"run-tests.sh": "true"}, solution="true") for i in range(5)]  # fmt: skip
    attempts = pick_attempts(tasks, cfg, random.Random(0))
    assert [a.group for a in attempts] == [0, 0, 1, 1, 2, 2]
    assert attempts[0].task == attempts[1].task != attempts[2].task
    assert len({a.trajectory_id for a in attempts}) == 6


def test_the_default_config_draws_from_the_suite_and_unknown_families_are_named():
    cfg = load_config(TINY)
    assert cfg.tasks.families == ["create_file"]
    with pytest.raises(ConfigError, match="no_such_family"):
        load_config(TINY, ["tasks.families=[create_file, no_such_family]"])
