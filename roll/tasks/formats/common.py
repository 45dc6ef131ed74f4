"""What every task-folder reader shares: the error that names folder, file and field, and file reading.

`pytest tests/roll/test_task_formats.py` checks that each broken fixture gives the error naming its field.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from roll.errors import RollError

M = TypeVar("M", bound=BaseModel)
SKIP = {".git", "__pycache__", ".DS_Store", ".pytest_cache"}


class TaskFormatError(RollError):
    """A task folder that cannot be loaded; str() is one line naming the folder, the file and the field."""

    def __init__(self, folder: str | Path, file: str, field: str, message: str):
        self.folder, self.file, self.field, self.message = str(folder), file, field, message
        super().__init__(f"{self.folder}: {file}: {field}: {message}")

    def __reduce__(self):  # keeps the four arguments when pickled (Ray workers, multiprocessing)
        return type(self), (self.folder, self.file, self.field, self.message)


def read_text(folder: Path, rel: str) -> str:
    """The UTF-8 text of folder/rel; a binary file is a TaskFormatError naming it (specs hold text only)."""
    try:
        return (folder / rel).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TaskFormatError(folder, rel, "content", "not UTF-8 text (binary files are not supported)") from None


def read_tree(folder: Path, sub: str = "", exclude: set[str] = frozenset()) -> dict[str, str]:
    """Every file under folder/sub as {path relative to folder/sub: text}, skipping `exclude` (relative names)."""
    root = folder / sub if sub else folder
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_dir() or SKIP & set(p.relative_to(root).parts) or p.suffix == ".pyc":
            continue
        if rel in exclude or rel.split("/")[0] + "/" in exclude:
            continue
        out[rel] = read_text(folder, f"{sub}/{rel}" if sub else rel)
    return out


def parse_yaml(folder: Path, name: str, kind: type = dict):
    """The mapping (or `kind`) in folder/name; a syntax error names its line, another shape says so."""
    try:
        data = yaml.safe_load(read_text(folder, name))
    except yaml.YAMLError as e:
        mark, ctx = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
        where = f"line {mark.line + 1}" if mark else "syntax"
        message = str(getattr(e, "problem", None) or e)
        if ctx is not None and getattr(e, "context", None):
            message += f" ({e.context} on line {ctx.line + 1})"
        raise TaskFormatError(folder, name, where, message) from None
    if not isinstance(data, kind):
        want = "a mapping of keys" if kind is dict else f"a {kind.__name__}"
        raise TaskFormatError(folder, name, "(top level)", f"must be {want}, not {type(data).__name__}")
    return data


def parse_toml(folder: Path, name: str) -> dict:
    try:
        return tomllib.loads(read_text(folder, name))
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        where = f"line {m.group(1)}" if m else "syntax"
        raise TaskFormatError(folder, name, where, re.sub(r"\s*\(at line.*\)", "", str(e))) from None


def validate(model: type[M], data: dict, folder: Path, name: str) -> M:
    """`model` from `data`, a ValidationError turned into one TaskFormatError naming the (first) bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errs = e.errors()
        field = ".".join(str(x) for x in errs[0]["loc"]) or "(top level)"
        more = f" (and {len(errs) - 1} more: {', '.join(_loc(x) for x in errs[1:])})" if len(errs) > 1 else ""
        raise TaskFormatError(folder, name, field, _message(errs[0]) + more) from None


def _loc(err: dict) -> str:
    return ".".join(str(x) for x in err["loc"])


def _message(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required, missing"
    if err["type"] == "value_error":
        return err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    return f"{err['msg']} (got {got!r})" if not isinstance(got, dict | list) else err["msg"]


def workdir_of(dockerfile: str, default: str = "/app") -> str:
    """The last absolute WORKDIR of a Dockerfile: where its task's agent and tests run."""
    dirs = re.findall(r"^\s*WORKDIR\s+(/\S*)", dockerfile, re.IGNORECASE | re.MULTILINE)
    return dirs[-1] if dirs else default


def difficulty(value: str | None) -> str:
    """Imported difficulty: easy/medium/hard as given; missing or Terminal-Bench's 'unknown' count as medium."""
    v = (value or "unknown").strip().lower()
    if v == "unknown":
        return "medium"
    if v not in ("easy", "medium", "hard"):
        raise ValueError(f"must be easy, medium, hard or unknown (got {value!r})")
    return v
