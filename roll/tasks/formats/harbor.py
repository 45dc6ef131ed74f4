"""Harbor / Terminal-Bench 2.0 task folders, imported unchanged (`pytest tests/roll/test_task_formats.py`).

A folder holds `task.toml` ([metadata] difficulty, category, tags; [agent] timeout_sec; [verifier]
timeout_sec; [environment] docker_image, cpus, memory_mb, ...), `instruction.md`, `environment/Dockerfile`
with its build context (the rest of environment/), `tests/test.sh` (writes 1 or 0 to
/logs/verifier/reward.txt, usually from `pytest ... -rA`) beside its other test files, and `solution/solve.sh`
beside the solution's other files.

Keys of task.toml we do not use are ignored (it is Harbor's format); those we use are type-checked. Graded
"reward_file". Family "harbor" and split "heldout" unless [metadata] names `family` / `split`; timeouts
missing from task.toml count 600 s. On import the offline rule (`roll.tasks.formats.offline`) is applied
to tests/test.sh and the Dockerfile; without a Dockerfile, [environment] docker_image is mapped through
configs/tasks/images.yaml.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from roll.tasks.formats import offline
from roll.tasks.formats.common import (
    TaskFormatError,
    difficulty,
    parse_toml,
    read_text,
    read_tree,
    validate,
    workdir_of,
)
from roll.tasks.spec import Environment, Split


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Metadata(_Loose):
    difficulty: str = "unknown"
    category: str = "general"
    family: str = "harbor"
    split: Split = "heldout"
    seed: int = 0

    @field_validator("difficulty")
    @classmethod
    def _difficulty(cls, v: str) -> str:
        return difficulty(v)


class Timeout(_Loose):
    timeout_sec: float = Field(600.0, gt=0)


class EnvironmentSection(_Loose):
    docker_image: str | None = None
    workdir: str | None = Field(None, pattern=r"^/")


class TaskToml(_Loose):
    metadata: Metadata = Field(default_factory=Metadata)
    agent: Timeout = Field(default_factory=Timeout)
    verifier: Timeout = Field(default_factory=Timeout)
    environment: EnvironmentSection = Field(default_factory=EnvironmentSection)


def _environment(folder: Path, cfg: EnvironmentSection) -> tuple[Environment, str]:
    """The environment and the workdir it implies."""
    if (folder / "environment" / "Dockerfile").is_file():
        dockerfile = offline.rewrite_dockerfile(read_text(folder, "environment/Dockerfile"))
        files = read_tree(folder, "environment", exclude={"Dockerfile"})
        return Environment(dockerfile=dockerfile, files=files), cfg.workdir or workdir_of(dockerfile)
    if cfg.docker_image:
        image = offline.map_image(cfg.docker_image) or cfg.docker_image
        return Environment(image=image), cfg.workdir or "/app"
    raise TaskFormatError(folder, "environment/Dockerfile", "environment/Dockerfile", "missing (and no docker_image)")


def load(folder: Path) -> dict:
    """The TaskSpec fields of a Harbor folder (the caller builds the TaskSpec)."""
    cfg = validate(TaskToml, parse_toml(folder, "task.toml"), folder, "task.toml")
    if not (folder / "instruction.md").is_file():
        raise TaskFormatError(folder, "instruction.md", "instruction.md", "missing: the task's instruction")
    if not (folder / "tests").is_dir():
        raise TaskFormatError(folder, "tests/", "tests/", "missing: a task needs a tests/ folder")
    if not (folder / "tests" / "test.sh").is_file():
        raise TaskFormatError(folder, "tests/test.sh", "tests/test.sh", "missing: Harbor runs it to write the reward")
    if not (folder / "solution" / "solve.sh").is_file():
        raise TaskFormatError(folder, "solution/solve.sh", "solution/solve.sh", "missing: the golden solution")
    tests = read_tree(folder, "tests")
    tests["test.sh"] = offline.rewrite_script(tests["test.sh"])
    environment, workdir = _environment(folder, cfg.environment)
    return dict(
        instruction=read_text(folder, "instruction.md"),
        family=cfg.metadata.family,
        split=cfg.metadata.split,
        seed=cfg.metadata.seed,
        difficulty=cfg.metadata.difficulty,
        category=cfg.metadata.category,
        agent_timeout_s=cfg.agent.timeout_sec,
        test_timeout_s=cfg.verifier.timeout_sec,
        workdir=workdir,
        environment=environment,
        tests=tests,
        grading="reward_file",
        solution=read_text(folder, "solution/solve.sh"),
        solution_files=read_tree(folder, "solution", exclude={"solve.sh"}),
        source="harbor",
    )
