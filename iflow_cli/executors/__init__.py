"""Where tools run: `local` (this machine, the default) or `rock` (`iflow --sandbox URL#ID`).

An executor runs shell commands and moves file bytes; the tools above it are the same code for
both, so a session gives the same results wherever it runs.
"""

from __future__ import annotations

import posixpath
from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False


class Executor(ABC):
    """A process boundary: a short ABC, two implementations."""

    cwd: str  # absolute working directory; relative tool paths resolve against it

    @abstractmethod
    def run(self, command: str, timeout: float, cwd: str | None = None) -> ExecResult:
        """Run `command` under bash in `cwd` (default: the working directory)."""

    @abstractmethod
    def read_bytes(self, path: str) -> bytes:
        """Raises FileNotFoundError when missing, IsADirectoryError for directories."""

    @abstractmethod
    def write_bytes(self, path: str, data: bytes) -> None: ...

    @abstractmethod
    def fs_call(self, op: str, args: dict) -> dict:
        """Run one of tools.fsops' functions: {"result": str} or {"error": str}."""

    def resolve(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self.cwd, path))


def get_executor(sandbox: str = "", cwd: str | None = None) -> Executor:
    """`sandbox` is "" (local) or "URL#ID"; backends imported lazily."""
    if sandbox:
        from iflow_cli.executors.rock import RockExecutor

        return RockExecutor.from_spec(sandbox, cwd)
    from iflow_cli.executors.local import LocalExecutor

    return LocalExecutor(cwd)
