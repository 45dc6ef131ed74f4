"""The task instance model shared by generators and the rollout (`pytest tests/roll/test_roll_tasks.py`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class TaskInstance(BaseModel):
    """One task, shaped like a Terminal-Bench folder: task.yaml's instruction, setup.sh, tests/run-tests.sh,
    solution.sh. Resolved (reward 1.0) when `test` exits 0 inside the sandbox after the agent has run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    family: str
    split: Literal["train", "held_out"]
    instruction: str
    setup: str = "true"  # bash, run before the agent
    test: str  # bash, exit status 0 = resolved
    solution: str  # bash, the golden solution; the tests check that it resolves the task
