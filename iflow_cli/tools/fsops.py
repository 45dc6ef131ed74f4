"""python3 -m iflow_cli.tools.fsops OP 'JSON-ARGS' (prints a JSON result): the read-only file-system tools.

Self-contained on purpose (standard library, no package imports): the local executor calls these
functions in-process, and the ROCK executor sends this very file to the sandbox's python3, so the
tools give the same results on both sides.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import sys

SKIP_DIRS = {".git", "node_modules", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache"}
MAX_GLOB = 500
MAX_MATCHES = 200


def list_directory(path: str, ignore: list[str] | None = None) -> str:
    """Entries of a directory, directories first and marked with a trailing slash."""
    if not os.path.isdir(path):
        raise ValueError(f"not a directory: {path}")
    names = [n for n in os.listdir(path) if not any(fnmatch.fnmatch(n, p) for p in ignore or [])]
    dirs = sorted(n + "/" for n in names if os.path.isdir(os.path.join(path, n)))
    files = sorted(n for n in names if not os.path.isdir(os.path.join(path, n)))
    if not dirs and not files:
        return f"{path} is empty"
    return f"{path}:\n" + "\n".join(dirs + files)


def walk_files(root: str):
    """Every file under root, skipping VCS and cache directories, in a stable order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            yield os.path.join(dirpath, name)


def glob_match(rel: str, pattern: str) -> bool:
    """fnmatch with `**/` meaning any number of directories (including none)."""
    if fnmatch.fnmatch(rel, pattern):
        return True
    return pattern.startswith("**/") and glob_match(rel, pattern[3:])


def glob(pattern: str, path: str) -> str:
    """Files under path whose relative path (or name, for patterns without '/') matches pattern."""
    if not os.path.isdir(path):
        raise ValueError(f"not a directory: {path}")
    hits = []
    for full in walk_files(path):
        rel = os.path.relpath(full, path)
        target = rel if "/" in pattern else os.path.basename(rel)
        if glob_match(target, pattern):
            hits.append(full)
    if not hits:
        return f"no files match {pattern!r} under {path}"
    more = f"\n... {len(hits) - MAX_GLOB} more" if len(hits) > MAX_GLOB else ""
    return "\n".join(hits[:MAX_GLOB]) + more


def search_file_content(pattern: str, path: str, include: str | None = None) -> str:
    """Lines matching a regular expression, as file:line: text."""
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"invalid regular expression {pattern!r}: {e}") from e
    files = [path] if os.path.isfile(path) else list(walk_files(path))
    matches = []
    for full in files:
        if (
            include
            and not glob_match(os.path.basename(full), include)
            and not glob_match(os.path.relpath(full, path), include)
        ):
            continue
        matches += search_one(regex, full)
        if len(matches) >= MAX_MATCHES:
            return "\n".join(matches[:MAX_MATCHES]) + f"\n... stopped after {MAX_MATCHES} matches"
    return "\n".join(matches) if matches else f"no matches for {pattern!r} under {path}"


def search_one(regex: re.Pattern, path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            data = f.read(2_000_000)
    except OSError:
        return []
    if b"\0" in data[:8192]:  # binary
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    return [f"{path}:{i}: {line[:500]}" for i, line in enumerate(lines, 1) if regex.search(line)]


OPS = {"list_directory": list_directory, "glob": glob, "search_file_content": search_file_content}


def run_op(op: str, args: dict) -> dict:
    """{"result": str} or {"error": str}: the wire format between executor and sandbox."""
    try:
        return {"result": OPS[op](**args)}
    except (ValueError, OSError, KeyError, TypeError) as e:
        return {"error": str(e)}


if __name__ == "__main__":
    print(json.dumps(run_op(sys.argv[1], json.loads(sys.argv[2]))))
