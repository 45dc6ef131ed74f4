"""Start a `rock serve` subprocess on a free loopback port (used by roll and the tests).

from rock.launch import RockProcess
with RockProcess(model_upstream="http://127.0.0.1:8000/v1") as rock:
    with rock.client() as c:
        sb = c.create_sandbox(network="model")
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from rock.sdk import AsyncClient, Client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RockProcess:
    """`python -m rock serve` in a subprocess; its log goes to `<state_dir>/serve.log`."""

    def __init__(
        self,
        token: str | None = None,
        state_dir: str | os.PathLike | None = None,
        model_upstream: str | None = None,
        allow_mounts=(),
        on_exit: str = "remove",
        warm_pool: int = 0,
        port: int | None = None,
        extra_args=(),
        start_timeout: float = 60.0,
    ):
        self.token = token or secrets.token_urlsafe(24)
        self._own_state = state_dir is None
        self.state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="rock-state-"))
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.on_exit = on_exit
        self.argv = [
            sys.executable,
            "-m",
            "rock",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--state-dir",
            str(self.state_dir),
            "--on-exit",
            on_exit,
            "--warm-pool",
            str(warm_pool),
            "--exit-with",
            str(os.getpid()),
        ]
        if model_upstream:
            self.argv += ["--model-upstream", model_upstream]
        for d in allow_mounts:
            self.argv += ["--allow-mount", str(d)]
        self.argv += list(extra_args)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None

    def start(self) -> RockProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.state_dir / "serve.log", "ab")
        env = {**os.environ, "ROCK_API_TOKEN": self.token}  # not on the command line, where `ps` shows it
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        why = f"exited with {self.proc.returncode}" if self.proc.poll() is not None else "did not answer /healthz"
        tail = self._log_tail()
        self.stop()  # also removes a state dir of our own, so the log is quoted here
        raise RuntimeError(f"rock serve {why} within {self.start_timeout}s; its log ends:\n{tail}")

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join((self.state_dir / "serve.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def client(self) -> Client:
        return Client(self.url, self.token)

    def async_client(self) -> AsyncClient:
        return AsyncClient(self.url, self.token)

    def kill(self) -> None:
        """SIGKILL, as a crash would: the sandboxes stay behind for the next manager to re-adopt."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (the server removes or keeps its sandboxes per --on-exit), then SIGKILL if it hangs."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._own_state and self.on_exit == "remove":
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> RockProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
