"""python3 -m iflow_cli -p TASK --yolo (tools run here by default): the local executor.

Each shell command gets its own session (process group) so that a timeout kills the whole tree;
output goes to temporary files, not pipes, so a grandchild that keeps a pipe open cannot hang us.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from iflow_cli.executors import ExecResult, Executor
from iflow_cli.tools import fsops


def shell() -> list[str]:
    return [shutil.which("bash") or "/bin/sh", "-c"]


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class LocalExecutor(Executor):
    def __init__(self, cwd: str | None = None):
        self.cwd = str(Path(cwd or os.getcwd()).resolve())
        if not os.path.isdir(self.cwd):
            raise NotADirectoryError(f"working directory {self.cwd} does not exist")

    def run(self, command: str, timeout: float, cwd: str | None = None) -> ExecResult:
        start = time.monotonic()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                [*shell(), command],
                cwd=self.resolve(cwd or "."),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            timed_out = False
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # Also on success (background children must not outlive the command) and on Ctrl-C/SIGTERM.
                kill_group(proc)
                proc.wait()
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")
        code = 128 + signal.SIGKILL if timed_out else proc.returncode  # what a shell reports, and ROCK too
        return ExecResult(code, stdout, stderr, time.monotonic() - start, timed_out)

    def read_bytes(self, path: str) -> bytes:
        return Path(self.resolve(path)).read_bytes()

    def write_bytes(self, path: str, data: bytes) -> None:
        target = Path(self.resolve(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def fs_call(self, op: str, args: dict) -> dict:
        return fsops.run_op(op, args)
