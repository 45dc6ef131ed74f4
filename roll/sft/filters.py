"""SFT phase 1's rules: `.venv/bin/pytest tests/roll/test_sft_data.py -k filter`.

A trajectory is dropped when its tests failed, or when a chunk that is still trained (carries loss after the
masks) holds a call that does not parse, a tool the request did not offer, a `.py` file written with a Python
syntax error, or a shell command with a `bash -n` syntax error. A bad call whose loss error masking cleared
teaches nothing wrong, so it does not drop its trajectory: the recovery after it is kept. Each rule is a switch
(`SftDataConfig.filters`), so a run without error masking can keep its failed calls on purpose.
"""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from rock.contracts import Chunk, Trajectory
from roll.sft.masks import Call, chunk_calls, unparsed_reply

Rule = Literal["tests_failed", "unparsed_call", "unknown_tool", "python_syntax", "shell_syntax"]
RULES: tuple[Rule, ...] = ("tests_failed", "unparsed_call", "unknown_tool", "python_syntax", "shell_syntax")


def offered(chunk: Chunk) -> set[str] | None:
    """The tool names the request offered; None when it sent no tools (nothing to check against)."""
    if not chunk.tools:
        return None
    return {str((t.get("function") or t).get("name")) for t in chunk.tools}


def parses(call: Call) -> bool:
    try:
        return isinstance(json.loads(call.arguments), dict)
    except ValueError:
        return False


def python_ok(call: Call) -> bool:
    if call.name != "write_file" or not parses(call):
        return True
    args = json.loads(call.arguments)
    path, content = str(args.get("path", "")), args.get("content")
    if not path.endswith(".py") or not isinstance(content, str):
        return True
    try:
        compile(content, path, "exec")
    except (SyntaxError, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=65536)
def bash_syntax_ok(command: str) -> bool:
    """`bash -n` on the command (a few ms; cached: the same commands recur across attempts)."""
    try:
        proc = subprocess.run(["bash", "-n"], input=command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return True  # no bash here, or it hung: the rule cannot judge, so it does not drop
    return proc.returncode == 0


def check_shell_syntax(trajectories: Iterable[Trajectory], workers: int = 4) -> int:
    """`bash_syntax_ok` on every shell command the trajectories' replies hold, a few at a time (each call waits on
    its own `bash -n`, so threads overlap them: SFT's 40 relexicalised variants of 72 trajectories hold ~3,300
    distinct commands, 6.5 s one after another). Fills the cache `shell_ok` reads; returns how many were checked."""
    commands = {cmd for traj in trajectories for chunk in traj.chunks for call in chunk_calls(chunk)
                if (cmd := shell_command(call)) is not None}  # fmt: skip
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(bash_syntax_ok, sorted(commands)))
    return len(commands)


def shell_command(call: Call) -> str | None:
    """The command of a `run_shell_command` call whose arguments parse, else None."""
    if call.name != "run_shell_command" or not parses(call):
        return None
    command = json.loads(call.arguments).get("command")
    return command if isinstance(command, str) else None


def shell_ok(call: Call) -> bool:
    command = shell_command(call)
    return command is None or bash_syntax_ok(command)


def chunk_violation(traj: Trajectory, chunk: Chunk, rules: set[str]) -> str | None:
    """The first rule this trained chunk breaks, or None."""
    calls = chunk_calls(chunk)
    unparsed = unparsed_reply(chunk) or any(not parses(c) for c in calls)
    unparsed |= any(not r.parsed for r in traj.tool_results if r.chunk_index == chunk.index)
    known = offered(chunk)
    if "unknown_tool" in rules and known is not None and any(c.name not in known for c in calls):
        return "unknown_tool"
    if "unparsed_call" in rules and unparsed:
        return "unparsed_call"
    if "python_syntax" in rules and not all(python_ok(c) for c in calls):
        return "python_syntax"
    if "shell_syntax" in rules and not all(shell_ok(c) for c in calls):
        return "shell_syntax"
    return None


def violation(traj: Trajectory, trained: set[int], rules: set[str]) -> str | None:
    """Why phase 1 drops this trajectory (given the chunks that still carry loss), or None to keep it."""
    if "tests_failed" in rules and not traj.resolved:
        return "tests_failed"
    for chunk in sorted(traj.chunks, key=lambda c: c.index):
        if chunk.index in trained and (reason := chunk_violation(traj, chunk, rules)):
            return reason
    return None
