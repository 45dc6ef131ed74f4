"""python3 -m iflow_cli -p "list the files here" --yolo: the agent's tools, named as iFlow names them.

Each tool has a JSON schema (sent as OpenAI `tools`) and runs on an Executor, so the same code
serves local and sandboxed sessions. Tool failures come back as text for the model, never as
crashes; permissions follow the approval mode (batch without --yolo refuses shell and writes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from iflow_cli.executors import Executor

READ_LINES = 2000  # read_file's default line window


@dataclass
class ToolResult:
    output: str
    ok: bool = True
    exit_code: int | None = None
    error: str = ""  # why it failed, in a line, where the output alone does not say it first (the shell)


class ToolError(Exception):
    """A tool could not do what was asked; the message is the observation."""


def schema(name: str, description: str, props: dict, required: list[str]) -> dict:
    params = {"type": "object", "properties": props, "required": required}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": params}}


S = {"type": "string"}
I = {"type": "integer"}  # noqa: E741

SCHEMAS = {
    "run_shell_command": schema(
        "run_shell_command",
        "Run a bash command in the working directory, or in `directory` (a fresh shell each time: cd does "
        "not persist). "
        "Returns exit code, stdout and stderr; long output is cut in the middle.",
        {
            "command": S,
            "timeout": {"type": "number", "description": "seconds (default from settings)"},
            "description": S,
            "directory": {"type": "string", "description": "where to run it, relative to the working directory"},
        },
        ["command"],
    ),
    "read_file": schema(
        "read_file",
        "Read a text file. offset is the first line (0-based), limit the number of lines.",
        {"path": S, "offset": I, "limit": I},
        ["path"],
    ),
    "write_file": schema(
        "write_file", "Create or overwrite a file with content.", {"path": S, "content": S}, ["path", "content"]
    ),
    "replace": schema(
        "replace",
        "Replace old_string by new_string in a file. old_string must occur exactly once "
        "(include surrounding lines to make it unique); an empty old_string creates a new file.",
        {"path": S, "old_string": S, "new_string": S},
        ["path", "old_string", "new_string"],
    ),
    "list_directory": schema(
        "list_directory",
        "List a directory (directories end with /).",
        {"path": S, "ignore": {"type": "array", "items": S}},
        ["path"],
    ),
    "glob": schema(
        "glob", "Find files by glob pattern (e.g. **/*.py) under path.", {"pattern": S, "path": S}, ["pattern"]
    ),
    "search_file_content": schema(
        "search_file_content",
        "Search file contents with a regular expression; include filters file names by glob.",
        {"pattern": S, "path": S, "include": S},
        ["pattern"],
    ),
}

SHELL_TOOLS = {"run_shell_command"}
EDIT_TOOLS = {"write_file", "replace"}
JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "array": list, "boolean": bool, "object": dict}


def truncate(text: str, limit: int) -> str:
    """Keep the head and tail of long text and say how much was elided: errors usually sit at the end."""
    if len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - head
    return f"{text[:head]}\n[... {len(text) - limit} characters elided ...]\n{text[-tail:]}"


def check_args(name: str, args: dict) -> None:
    """Required keys present and of the schema's type; raises ToolError naming the argument."""
    params = SCHEMAS[name]["function"]["parameters"]
    for key in params["required"]:
        if key not in args:
            raise ToolError(f"{name}: missing required argument '{key}'")
    for key, value in args.items():
        want = params["properties"].get(key, {}).get("type")
        if (
            want
            and value is not None
            and (not isinstance(value, JSON_TYPES[want]) or isinstance(value, bool) != (want == "boolean"))
        ):
            raise ToolError(f"{name}: argument '{key}' must be a {want}, got {type(value).__name__}")


def shell_error(stderr: str, exit_code: int) -> str:
    """A failed command's reason in a line: its first line of stderr, else its exit status."""
    return next((line.strip() for line in stderr.splitlines() if line.strip()), f"exit code {exit_code}")


class Toolbox:
    """The enabled tools over one executor. `approve(name, args)` asks a person; None means batch."""

    def __init__(
        self,
        executor: Executor,
        approval_mode: str = "default",
        allowed: list[str] | None = None,
        excluded: list[str] | None = None,
        shell_timeout: float = 120.0,
        output_limit: int = 16000,
        approve: Callable[[str, dict], bool] | None = None,
    ):
        self.executor = executor
        self.approval_mode = approval_mode
        self.names = [n for n in SCHEMAS if (allowed is None or n in allowed) and n not in (excluded or [])]
        self.shell_timeout = shell_timeout
        self.output_limit = output_limit
        self.approve = approve
        self.deadline: float | None = None

    def schemas(self) -> list[dict]:
        return [SCHEMAS[n] for n in self.names]

    def needs_approval(self, name: str) -> bool:
        if self.approval_mode == "yolo":
            return False
        return name in SHELL_TOOLS or (name in EDIT_TOOLS and self.approval_mode != "autoEdit")

    def permission_problem(self, name: str, args: dict) -> str | None:
        if not self.needs_approval(name):
            return None
        if self.approve is None:
            return (
                f"{name} refused: in batch mode without --yolo (approval mode '{self.approval_mode}') "
                "shell and write tools are not run. Re-run with --yolo to allow them."
            )
        return None if self.approve(name, args) else f"{name} refused by the user."

    def call(self, name: str, args: dict, deadline: float | None = None) -> ToolResult:
        """Run one tool call; argument errors raise ToolError (the loop counts them as format errors).

        `deadline` (time.monotonic) caps shell commands so that no command outlives the session timeout.
        """
        self.deadline = deadline
        if name not in SCHEMAS:
            raise ToolError(f"unknown tool '{name}'; available: {', '.join(self.names)}")
        if name not in self.names:
            return ToolResult(
                f"tool '{name}' is disabled by configuration; available: {', '.join(self.names)}", ok=False
            )
        check_args(name, args)
        problem = self.permission_problem(name, args)
        if problem:
            return ToolResult(problem, ok=False)
        try:
            return getattr(self, "do_" + name)(
                **{k: v for k, v in args.items() if k in SCHEMAS[name]["function"]["parameters"]["properties"]}
            )
        except (OSError, ValueError, UnicodeDecodeError) as e:
            return ToolResult(f"{name} failed: {e}", ok=False)
        except ToolError as e:
            return ToolResult(str(e), ok=False)

    def do_run_shell_command(
        self, command: str, timeout: float | None = None, description: str | None = None, directory: str | None = None
    ) -> ToolResult:
        limit = float(timeout) if timeout and timeout > 0 else self.shell_timeout
        if self.deadline is not None:
            limit = max(0.1, min(limit, self.deadline - time.monotonic()))
        res = self.executor.run(command, limit, directory)
        status = (
            f"Timed out after {limit:g}s (process group killed)" if res.timed_out else f"Exit code: {res.exit_code}"
        )
        body = f"Stdout:\n{res.stdout}" + (f"\nStderr:\n{res.stderr}" if res.stderr else "")
        text = f"Command: {command}\n{status}\n" + truncate(body, self.output_limit)
        ok = res.exit_code == 0 and not res.timed_out
        error = "" if ok else "timeout" if res.timed_out else shell_error(res.stderr, res.exit_code)
        return ToolResult(text, ok=ok, exit_code=res.exit_code, error=error)

    def do_read_file(self, path: str, offset: int | None = None, limit: int | None = None) -> ToolResult:
        data = self.executor.read_bytes(path)
        if b"\0" in data[:8192]:
            return ToolResult(f"{path} is a binary file ({len(data)} bytes); not shown")
        lines = data.decode("utf-8", "replace").splitlines(keepends=True)
        start = max(0, offset or 0)
        end = min(len(lines), start + (limit if limit and limit > 0 else READ_LINES))
        text = "".join(lines[start:end])
        if start > 0 or end < len(lines):
            text = f"[lines {start + 1}-{end} of {len(lines)}; use offset/limit for more]\n" + text
        return ToolResult(truncate(text, self.output_limit))

    def do_write_file(self, path: str, content: str) -> ToolResult:
        existed = self.exists(path)
        self.executor.write_bytes(path, content.encode())
        verb = "Overwrote" if existed else "Created"
        return ToolResult(f"{verb} {self.executor.resolve(path)} ({len(content.encode())} bytes)")

    def exists(self, path: str) -> bool:
        try:
            self.executor.read_bytes(path)
            return True
        except (FileNotFoundError, IsADirectoryError):
            return False

    def do_replace(self, path: str, old_string: str, new_string: str) -> ToolResult:
        if old_string == "":
            if self.exists(path):
                raise ToolError(f"replace: old_string is empty but {path} exists; give the text to replace")
            return self.do_write_file(path, new_string)
        text = self.executor.read_bytes(path).decode("utf-8")
        count = text.count(old_string)
        if count == 0:
            raise ToolError(f"replace refused: old_string not found in {path}; read the file and copy the text exactly")
        if count > 1:
            raise ToolError(
                f"replace refused: old_string occurs {count} times in {path}; add surrounding lines to make it unique"
            )
        self.executor.write_bytes(path, text.replace(old_string, new_string, 1).encode())
        return ToolResult(f"Replaced 1 occurrence in {self.executor.resolve(path)}")

    def fs(self, op: str, **args) -> ToolResult:
        out = self.executor.fs_call(op, args)
        if "error" in out:
            return ToolResult(f"{op} failed: {out['error']}", ok=False)
        return ToolResult(truncate(out["result"], self.output_limit))

    def do_list_directory(self, path: str, ignore: list[str] | None = None) -> ToolResult:
        return self.fs("list_directory", path=self.executor.resolve(path), ignore=ignore)

    def do_glob(self, pattern: str, path: str | None = None) -> ToolResult:
        return self.fs("glob", pattern=pattern, path=self.executor.resolve(path or "."))

    def do_search_file_content(self, pattern: str, path: str | None = None, include: str | None = None) -> ToolResult:
        return self.fs("search_file_content", pattern=pattern, path=self.executor.resolve(path or "."), include=include)
