"""The task instance in memory: what a task folder holds (`roll tasks show ID` prints one).

Environment-centric and Terminal-Bench compatible (ARCHITECTURE "Task instance"): an instruction, an
environment (an image plus `setup.sh`, or a Dockerfile with its build context), `tests/` with an entry
script, and a golden solution. Generated families, our own folders and the Terminal-Bench / Harbor
importers all produce this one model, and the harness runs only this.

How the harness grades (`grading`):
- `exit_code` (our format): `bash /tests/run-tests.sh` exits 0.
- `pytest` (Terminal-Bench 1.x): the run-tests output's `pytest -rA` summary has passes and no failure.
- `reward_file` (Harbor / Terminal-Bench 2.0): `bash /tests/test.sh` writes 1 to /logs/verifier/reward.txt.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Split = Literal["train", "heldout"]


class Environment(BaseModel):
    """Where the task runs: `image` as it is, or `dockerfile` built locally (tagged by content hash)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    image: str | None = Field(None, description="image to run; for a Dockerfile task, filled in once built")
    dockerfile: str | None = Field(None, description="Dockerfile text, built with `files` as its context")
    files: dict[str, str] = Field(default_factory=dict, description="build context: relative path -> text")
    setup: str = Field("", description="bash run in the sandbox (cwd = workdir) before the agent starts")

    @model_validator(mode="after")
    def _one_source(self) -> Environment:
        if not self.image and not self.dockerfile:
            raise ValueError("environment needs an image or a Dockerfile")
        return self


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    instruction: str = Field(min_length=1)
    family: str
    split: Split = "train"
    seed: int = 0
    difficulty: Literal["easy", "medium", "hard"] = "easy"
    category: str = "general"
    steps: int = Field(1, ge=1, description="tool calls the golden solution needs, at the least")
    agent_timeout_s: float = Field(120, gt=0)
    test_timeout_s: float = Field(60, gt=0)
    workdir: str = "/app"
    environment: Environment
    tests: dict[str, str] = Field(description="files of tests/: relative path -> text; holds the entry script")
    grading: Literal["exit_code", "pytest", "reward_file"] = "exit_code"
    solution: str = Field(description="bash: the golden solution (solution.sh / solution/solve.sh)")
    solution_files: dict[str, str] = Field(default_factory=dict, description="other files of solution/")
    solution_steps: list[str] = Field(
        default_factory=list,
        description="the solution as shell commands in order, one tool call each, as an agent would run them "
        "(the oracle teacher plays these); empty = the whole solution as one command",
    )
    source: Literal["generated", "ale", "terminal-bench", "harbor"] = "generated"

    @property
    def test_entry(self) -> str:
        return "test.sh" if self.grading == "reward_file" else "run-tests.sh"

    @model_validator(mode="after")
    def _has_entry(self) -> TaskSpec:
        if self.test_entry not in self.tests:
            raise ValueError(f"tests/ has no {self.test_entry}")
        return self
