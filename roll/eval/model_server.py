"""`rome serve` of a checkpoint in a subprocess on a free loopback port, for `roll eval --model DIR`.

    with RomeServer("runs/tiny-cpu/policy/v2") as url:   # url ends in /v1
        ...

Its output goes to `log_path`; a server that exits or does not answer /healthz in time is one error
naming the model dir and quoting the end of that log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from rock.launch import free_port
from roll.errors import RollError


class ModelServerError(RollError):
    """The model server could not be started."""


def _die_with_parent() -> None:
    # Linux PR_SET_PDEATHSIG: the server gets SIGTERM when roll eval dies, also by `kill -9`.
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


class RomeServer:
    def __init__(self, model_dir: str | Path, log_path: Path, engine: str = "vllm", start_timeout: float = 900.0):
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise ModelServerError(f"--model {model_dir}: not a model dir (no config.json)")
        self.log_path, self.engine, self.start_timeout = Path(log_path), engine, start_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen | None = None

    def start(self) -> str:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "rome.cli", "serve", "--model", str(self.model_dir), "--port", str(self.port),
                "--engine", self.engine]  # fmt: skip
        with open(self.log_path, "ab") as log:
            # Its own session: Ctrl-C at the terminal reaches roll eval, which stops the server itself.
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
                                         preexec_fn=_die_with_parent)  # fmt: skip
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise ModelServerError(
                    f"rome serve {self.model_dir} exited with {self.proc.returncode}: {self._tail()}"
                )
            try:
                if httpx.get(self.url[: -len("/v1")] + "/healthz", timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ModelServerError(
            f"rome serve {self.model_dir} did not answer within {self.start_timeout:.0f}s: {self._tail()}"
        )

    def _tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:]) + f" (log: {self.log_path})"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
