"""Task folders in and out: our format, Terminal-Bench 1.x and Harbor (`pytest tests/roll/test_task_formats.py`).

    specs, errors = load_tasks("tests/fixtures/tasks")   # or "ale": the generated suite
    write_task_dir(specs[0], Path("out") / specs[0].id)

Our folder (what `write_task_dir` writes, `roll tasks export` uses it):
    task.yaml     instruction, difficulty, category, max_agent_timeout_sec, max_test_timeout_sec, family, split,
                  seed, steps, workdir; `image:` when there is no Dockerfile; optional grading (exit_code),
                  solution_steps and source (ale)
    setup.sh      optional: bash run in the sandbox before the agent starts (cwd = workdir)
    Dockerfile    optional, with its build context beside it (every other file outside tests/ and solution/)
    tests/        run-tests.sh (test.sh when graded by reward file) and any other test files
    solution.sh   the golden solution; solution/ holds its other files, if any

Which format a folder is: task.toml → Harbor; task.yaml with a `family` key and no top-level run-tests.sh →
ours; any other task.yaml → Terminal-Bench. Ours is strict (an unknown key is an error); the imported formats
ignore keys we do not use, as their own tools do, and get the offline rule of `roll.tasks.formats.offline`.
Every problem is a `TaskFormatError` naming the folder, the file and the field; `load_tasks` collects them
and goes on with the other folders.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from roll.tasks.formats import harbor, terminal_bench
from roll.tasks.formats.common import TaskFormatError, parse_yaml, read_text, read_tree, validate
from roll.tasks.spec import Environment, Split, TaskSpec

__all__ = ["TaskFormatError", "load_task_dir", "load_tasks", "write_task_dir", "detect_format"]

Format = Literal["ale", "terminal-bench", "harbor"]
RESERVED = {"task.yaml", "setup.sh", "solution.sh", "Dockerfile", "tests/", "solution/"}
# TaskSpec field -> (file, key) in our folder, to name what is wrong when the assembled spec is invalid.
WHERE = {
    "id": ("(folder name)", "id"),
    "agent_timeout_s": ("task.yaml", "max_agent_timeout_sec"),
    "test_timeout_s": ("task.yaml", "max_test_timeout_sec"),
    "environment": ("task.yaml", "image"),
    "tests": ("tests/", "run-tests.sh"),
    "solution": ("solution.sh", "solution.sh"),
}


class TaskYaml(BaseModel):
    """Our task.yaml. Strict: a misspelt key is an error naming it, not a silently ignored setting."""

    model_config = ConfigDict(extra="forbid")
    instruction: str = Field(min_length=1)
    difficulty: Literal["easy", "medium", "hard"] = "easy"
    category: str = "general"
    max_agent_timeout_sec: float = Field(120, gt=0)
    max_test_timeout_sec: float = Field(60, gt=0)
    family: str = Field(min_length=1)
    split: Split = "train"
    seed: int = 0
    steps: int = Field(1, ge=1)
    workdir: str = Field("/app", pattern=r"^/")
    image: str | None = Field(None, min_length=1, description="the image to run; needed when there is no Dockerfile")
    grading: Literal["exit_code", "pytest", "reward_file"] = "exit_code"
    solution_steps: list[str] = Field(default_factory=list)
    source: Literal["generated", "ale", "terminal-bench", "harbor"] = "ale"


def detect_format(folder: Path) -> Format:
    folder = Path(folder)
    if (folder / "task.toml").is_file():
        return "harbor"
    if not (folder / "task.yaml").is_file():
        raise TaskFormatError(
            folder, "task.yaml", "task.yaml", "missing: no task.yaml (ours, Terminal-Bench) or task.toml (Harbor)"
        )
    if (folder / "run-tests.sh").is_file():
        return "terminal-bench"
    data = parse_yaml(folder, "task.yaml")
    return "ale" if "family" in data else "terminal-bench"


def _load_ale(folder: Path) -> dict:
    meta = validate(TaskYaml, parse_yaml(folder, "task.yaml"), folder, "task.yaml")
    entry = "test.sh" if meta.grading == "reward_file" else "run-tests.sh"
    if not (folder / "tests").is_dir():
        raise TaskFormatError(folder, "tests/", "tests/", f"missing: a task needs tests/ with {entry}")
    if not (folder / "tests" / entry).is_file():
        raise TaskFormatError(folder, f"tests/{entry}", f"tests/{entry}", "missing: the script that tests the task")
    if not (folder / "solution.sh").is_file():
        raise TaskFormatError(folder, "solution.sh", "solution.sh", "missing: the golden solution")
    has_dockerfile = (folder / "Dockerfile").is_file()
    if not has_dockerfile and not meta.image:
        raise TaskFormatError(folder, "task.yaml", "image", "required when the folder has no Dockerfile")
    env = Environment(
        image=meta.image,
        dockerfile=read_text(folder, "Dockerfile") if has_dockerfile else None,
        files=read_tree(folder, exclude=RESERVED) if has_dockerfile else {},
        setup=read_text(folder, "setup.sh") if (folder / "setup.sh").is_file() else "",
    )
    return dict(
        instruction=meta.instruction,
        family=meta.family,
        split=meta.split,
        seed=meta.seed,
        difficulty=meta.difficulty,
        category=meta.category,
        steps=meta.steps,
        agent_timeout_s=meta.max_agent_timeout_sec,
        test_timeout_s=meta.max_test_timeout_sec,
        workdir=meta.workdir,
        environment=env,
        tests=read_tree(folder, "tests"),
        grading=meta.grading,
        solution=read_text(folder, "solution.sh"),
        solution_files=read_tree(folder, "solution") if (folder / "solution").is_dir() else {},
        solution_steps=meta.solution_steps,
        source=meta.source,
    )


def load_task_dir(path: str | Path) -> TaskSpec:
    """One task folder of any of the three formats (detected) as a TaskSpec; TaskFormatError if it is wrong."""
    folder = Path(path)
    if not folder.is_dir():
        raise TaskFormatError(folder, "(folder)", "path", "not a directory")
    fmt = detect_format(folder)
    fields = {"ale": _load_ale, "terminal-bench": terminal_bench.load, "harbor": harbor.load}[fmt](folder)
    try:
        return TaskSpec(id=folder.resolve().name, **fields)
    except ValidationError as e:
        err = e.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "(spec)"
        file, field = WHERE.get(key, ("task.toml" if fmt == "harbor" else "task.yaml", key))
        raise TaskFormatError(folder, file, field, err["msg"]) from None


def _is_task(folder: Path) -> bool:
    return (folder / "task.yaml").is_file() or (folder / "task.toml").is_file()


def _task_folders(root: Path) -> list[Path]:
    """Task folders under root: root itself, or its sub-folders, descending into folders that only group tasks.
    A sub-folder with no task anywhere below it is returned too, so that loading it names what is missing."""
    if _is_task(root):
        return [root]
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        nested = not _is_task(d) and any(_is_task(p.parent) for p in d.rglob("task.*"))
        out.extend(_task_folders(d) if nested else [d])
    return out


def load_tasks(
    source: str, families: list[str] | None = None, split: str | None = None
) -> tuple[list[TaskSpec], list[TaskFormatError]]:
    """`"ale"` = the generated suite; else a task folder or a directory of them (nested groups allowed).
    Returns the tasks (filtered by families and split) and one error per folder that could not be loaded."""
    if source == "ale":
        from roll.tasks.suite import generate_suite  # the suite is its own module, generated on demand

        return generate_suite(families=families, split=split), []
    root = Path(source).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"tasks {source}: no such directory (use 'ale' for the generated suite)")
    specs, errors = [], []
    for folder in _task_folders(root):
        try:
            specs.append(load_task_dir(folder))
        except TaskFormatError as e:
            errors.append(e)
    keep = [s for s in specs if (not families or s.family in families) and (split is None or s.split == split)]
    return keep, errors


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as `|` blocks, so task.yaml's instruction reads as written."""


_BlockDumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)


def task_yaml(spec: TaskSpec) -> str:
    """The task.yaml text of our format for `spec`."""
    data = {
        "instruction": spec.instruction,
        "difficulty": spec.difficulty,
        "category": spec.category,
        "max_agent_timeout_sec": spec.agent_timeout_s,
        "max_test_timeout_sec": spec.test_timeout_s,
        "family": spec.family,
        "split": spec.split,
        "seed": spec.seed,
        "steps": spec.steps,
        "workdir": spec.workdir,
    }
    if spec.environment.image:
        data["image"] = spec.environment.image
    if spec.grading != "exit_code":
        data["grading"] = spec.grading
    if spec.solution_steps:
        data["solution_steps"] = list(spec.solution_steps)
    if spec.source != "ale":
        data["source"] = spec.source
    return yaml.dump(data, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=1000)


def _write(path: Path, text: str, executable: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if executable:
        path.chmod(0o755)


def write_task_dir(spec: TaskSpec, path: str | Path, overwrite: bool = False) -> Path:
    """Write `spec` as a folder of our format at `path` (load_task_dir reads it back equal to `spec`).
    An existing non-empty folder is replaced only with overwrite=True."""
    folder = Path(path)
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise ValueError(f"{folder} exists and is not empty (overwrite=True / --force replaces it)")
        shutil.rmtree(folder)
    clash = [f for f in spec.environment.files if f in RESERVED or f.split("/")[0] + "/" in RESERVED]
    if clash:
        raise ValueError(f"task {spec.id}: build context files {clash} clash with the names of our format")
    _write(folder / "task.yaml", task_yaml(spec))
    if spec.environment.setup:
        _write(folder / "setup.sh", spec.environment.setup, executable=True)
    if spec.environment.dockerfile is not None:
        _write(folder / "Dockerfile", spec.environment.dockerfile)
        for rel, text in spec.environment.files.items():
            _write(folder / rel, text)
    for rel, text in spec.tests.items():
        _write(folder / "tests" / rel, text, executable=rel.endswith(".sh"))
    _write(folder / "solution.sh", spec.solution, executable=True)
    for rel, text in spec.solution_files.items():
        _write(folder / "solution" / rel, text, executable=rel.endswith(".sh"))
    return folder
