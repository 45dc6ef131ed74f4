"""The driver's bookkeeping between rollout and trainer: `.venv/bin/pytest tests/roll/test_roll_driver.py`."""

import random
from pathlib import Path

from roll.config import load_config
from roll.driver import chunk_advantages, pick_attempts
from roll.rollout import Trajectory
from roll.tasks import make_tasks

TINY = Path(__file__).resolve().parents[2] / "configs/rl/tiny-cpu.yaml"


def traj(group: int, reward: float, n_chunks: int, empty: int = 0) -> Trajectory:
    chunks = [{"prompt_token_ids": [1], "response_token_ids": [2], "response_logprobs": [-1.0]}] * n_chunks
    chunks += [{"prompt_token_ids": [1], "response_token_ids": [], "response_logprobs": []}] * empty
    return Trajectory(f"t{group}{reward}", "sb", "task", group, chunks, reward, "x", 0, False, 1.0)


def test_every_chunk_gets_its_trajectorys_group_advantage_and_empty_calls_are_dropped():
    trajectories = [traj(0, 1.0, 2), traj(0, 0.0, 1, empty=1), traj(1, 0.0, 1), traj(1, 0.0, 1)]
    chunks, advantages = chunk_advantages(trajectories)
    assert len(chunks) == 5
    assert advantages == [0.5, 0.5, -0.5, 0.0, 0.0]


def test_attempts_are_tasks_times_group_size_with_shared_groups():
    cfg = load_config(TINY, ["rollout.tasks_per_iteration=3", "rollout.group_size=2"])
    attempts = pick_attempts(make_tasks(), cfg, random.Random(0))
    assert [a.group for a in attempts] == [0, 0, 1, 1, 2, 2]
    assert attempts[0].task == attempts[1].task != attempts[2].task
    assert len({a.trajectory_id for a in attempts}) == 6
