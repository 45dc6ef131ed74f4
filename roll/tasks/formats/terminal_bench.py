"""Terminal-Bench 1.x task folders, imported unchanged (`pytest tests/roll/test_task_formats.py`).

A folder holds `task.yaml` (instruction, difficulty, category, tags, parser_name, max_agent_timeout_sec,
max_test_timeout_sec, ...), a `Dockerfile` whose build context is the folder (docker-compose.yaml is noted
and ignored: a sandbox is one container), a top-level `run-tests.sh` that runs `pytest ... -rA` over
`tests/`, and `solution.sh` (or `solution.yaml`, a list of `{command: ...}` run in order).

Keys of task.yaml we do not use are ignored, as Terminal-Bench itself does; keys we use are type-checked.
Graded "pytest" (the `pytest -rA` summary). Family "terminal-bench" and split "heldout" unless task.yaml
names `family` / `split`. On import the offline rule (`roll.tasks.formats.offline`) is applied to
run-tests.sh and the Dockerfile, and run-tests.sh gets `TEST_DIR` defaulting to /tests, which the
Terminal-Bench harness sets and our harness does not need to know about.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from roll.tasks.formats import offline
from roll.tasks.formats.common import (
    TaskFormatError,
    difficulty,
    parse_yaml,
    read_text,
    read_tree,
    validate,
    workdir_of,
)
from roll.tasks.spec import Environment, Split

# Not part of the image's build context: the grader's and the solution's files, and our own metadata.
NOT_CONTEXT = {"task.yaml", "run-tests.sh", "solution.sh", "solution.yaml", "docker-compose.yaml", "Dockerfile"}
NOT_CONTEXT |= {"tests/", "solution/"}
TEST_DIR_LINE = 'export TEST_DIR="${TEST_DIR:-/tests}"  # [ale:offline] set by the Terminal-Bench harness'


class Description(BaseModel):
    model_config = ConfigDict(extra="ignore")
    key: str = "base"
    description: str


class TbTaskYaml(BaseModel):
    """The keys of a Terminal-Bench task.yaml that we read (the others are theirs)."""

    model_config = ConfigDict(extra="ignore")
    instruction: str | None = Field(None, min_length=1)
    descriptions: list[Description] = Field(default_factory=list, description="older form of `instruction`")
    difficulty: str = "unknown"
    category: str = "general"
    parser_name: Literal["pytest"] = Field("pytest", description="how the test output is read; ours reads pytest's")
    max_agent_timeout_sec: float = Field(180.0, gt=0)
    max_test_timeout_sec: float = Field(30.0, gt=0)
    family: str = "terminal-bench"
    split: Split = "heldout"
    seed: int = 0

    @field_validator("difficulty")
    @classmethod
    def _difficulty(cls, v: str) -> str:
        return difficulty(v)

    def text(self) -> str | None:
        if self.instruction:
            return self.instruction
        by_key = {d.key: d.description for d in self.descriptions}
        return by_key.get("base") or next(iter(by_key.values()), None)


class SolutionCommand(BaseModel):
    model_config = ConfigDict(extra="ignore")
    command: str = Field(min_length=1)


def _solution(folder: Path) -> tuple[str, list[str]]:
    if (folder / "solution.sh").is_file():
        return read_text(folder, "solution.sh"), []
    if (folder / "solution.yaml").is_file():
        data = parse_yaml(folder, "solution.yaml", list)
        steps = [
            validate(SolutionCommand, d if isinstance(d, dict) else {}, folder, "solution.yaml").command for d in data
        ]
        return "#!/bin/bash\n" + "".join(s if s.endswith("\n") else s + "\n" for s in steps), [s.strip() for s in steps]
    raise TaskFormatError(folder, "solution.sh", "solution.sh", "missing: a task needs solution.sh or solution.yaml")


def with_test_dir(script: str) -> str:
    """run-tests.sh with TEST_DIR defaulting to /tests, after its shebang line (idempotent)."""
    if TEST_DIR_LINE in script:
        return script
    head, sep, rest = script.partition("\n") if script.startswith("#!") else ("", "", script)
    return f"{head}{sep}{TEST_DIR_LINE}\n{rest}" if head else f"{TEST_DIR_LINE}\n{script}"


def load(folder: Path) -> dict:
    """The TaskSpec fields of a Terminal-Bench folder (the caller builds the TaskSpec)."""
    meta = validate(TbTaskYaml, parse_yaml(folder, "task.yaml"), folder, "task.yaml")
    instruction = meta.text()
    if not instruction:
        raise TaskFormatError(folder, "task.yaml", "instruction", "required, missing")
    if not (folder / "tests").is_dir():
        raise TaskFormatError(folder, "tests/", "tests/", "missing: a task needs a tests/ folder")
    if not (folder / "run-tests.sh").is_file():
        raise TaskFormatError(folder, "run-tests.sh", "run-tests.sh", "missing: Terminal-Bench runs it to test")
    if not (folder / "Dockerfile").is_file():
        raise TaskFormatError(folder, "Dockerfile", "Dockerfile", "missing: the task's environment")
    tests = read_tree(folder, "tests")
    tests["run-tests.sh"] = with_test_dir(offline.rewrite_script(read_text(folder, "run-tests.sh")))
    dockerfile = offline.rewrite_dockerfile(read_text(folder, "Dockerfile"))
    solution, steps = _solution(folder)
    return dict(
        instruction=instruction,
        family=meta.family,
        split=meta.split,
        seed=meta.seed,
        difficulty=meta.difficulty,
        category=meta.category,
        agent_timeout_s=meta.max_agent_timeout_sec,
        test_timeout_s=meta.max_test_timeout_sec,
        workdir=workdir_of(dockerfile),
        environment=Environment(dockerfile=dockerfile, files=read_tree(folder, exclude=NOT_CONTEXT)),
        tests=tests,
        grading="pytest",
        solution=solution,
        solution_steps=steps,
        source="terminal-bench",
    )
