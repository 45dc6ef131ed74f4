"""python3 -m iflow_cli -p TASK --yolo --sandbox http://127.0.0.1:8080#SANDBOX_ID: tools run in a ROCK sandbox.

Uses ROCK's REST API with urllib only (Bearer token from ROCK_API_TOKEN): commands through
`POST /v1/sandboxes/{id}/exec`, file bytes through `PUT/GET /v1/sandboxes/{id}/files?path=`, and
the file-system tools by sending tools/fsops.py to the sandbox's python3, so that results match
the local executor's.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from iflow_cli.executors import ExecResult, Executor
from iflow_cli.tools import fsops

FSOPS_SOURCE = Path(fsops.__file__).read_text(encoding="utf-8")


class RockError(OSError):
    """The ROCK manager refused or failed a call; carries its message. An OSError, so that a failing
    sandbox call inside a tool becomes an observation for the model, like a local I/O error."""


class RockExecutor(Executor):
    def __init__(self, url: str, sandbox_id: str, token: str = "", cwd: str | None = None):
        self.url = url.rstrip("/")
        self.sandbox_id = sandbox_id
        self.token = token
        self.cwd = cwd or self.run("pwd", 30).stdout.strip() or "/"

    @classmethod
    def from_spec(cls, spec: str, cwd: str | None = None) -> RockExecutor:
        url, sep, sandbox_id = spec.partition("#")
        if not sep or not sandbox_id or not url.startswith(("http://", "https://")):
            raise RockError(f"--sandbox must look like http://HOST:PORT#SANDBOX_ID, got {spec!r}")
        return cls(url, sandbox_id, os.environ.get("ROCK_API_TOKEN", ""), cwd)

    def call(
        self, method: str, route: str, body: bytes | None = None, timeout: float = 60, ctype: str = "application/json"
    ):
        req = urllib.request.Request(f"{self.url}/v1/sandboxes/{self.sandbox_id}{route}", body, method=method)
        req.add_header("Content-Type", ctype)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            raise rock_error(e) from e
        except (urllib.error.URLError, OSError) as e:
            raise RockError(f"cannot reach ROCK at {self.url}: {getattr(e, 'reason', e)}") from e

    def exec(self, cmd: str | list[str], timeout: float, cwd: str | None = None) -> ExecResult:
        body = {"cmd": cmd, "cwd": cwd or getattr(self, "cwd", None), "env": {}, "timeout": timeout}
        start = time.monotonic()
        # The HTTP timeout leaves the manager time to kill the command and answer.
        out = json.loads(self.call("POST", "/exec", json.dumps(body).encode(), timeout=timeout + 30))
        return ExecResult(
            int(out.get("exit_code", -1)),
            out.get("stdout", ""),
            out.get("stderr", ""),
            float(out.get("duration_s", time.monotonic() - start)),
            bool(out.get("timed_out", False)),
        )

    def run(self, command: str, timeout: float, cwd: str | None = None) -> ExecResult:
        return self.exec(command, timeout, self.resolve(cwd) if cwd else None)

    def file_route(self, path: str) -> str:
        return "/files?" + urllib.parse.urlencode({"path": self.resolve(path)})

    def read_bytes(self, path: str) -> bytes:
        try:
            return self.call("GET", self.file_route(path))
        except RockError as e:
            if "404" in str(e) or "not found" in str(e).lower():
                raise FileNotFoundError(f"no such file: {self.resolve(path)}") from e
            raise

    def write_bytes(self, path: str, data: bytes) -> None:
        parent = posixpath.dirname(self.resolve(path))
        self.exec(["mkdir", "-p", parent], 30)
        self.call("PUT", self.file_route(path), data, ctype="application/octet-stream")

    def fs_call(self, op: str, args: dict) -> dict:
        code = FSOPS_SOURCE.replace('if __name__ == "__main__":', "if True:")
        res = self.exec(["python3", "-c", code, op, json.dumps(args)], 120)
        try:
            return json.loads(res.stdout)
        except json.JSONDecodeError:
            return {"error": f"{op} failed in the sandbox (exit {res.exit_code}): {res.stderr.strip()[-500:]}"}


def rock_error(e: urllib.error.HTTPError) -> RockError:
    """ROCK errors are {"error": {"code", "message"}}; keep the status so callers can tell 404s."""
    raw = e.read().decode("utf-8", "replace")
    try:
        err = json.loads(raw).get("error", {})
        msg = f"{err.get('code', '')}: {err.get('message', raw)}" if isinstance(err, dict) else str(err)
    except (json.JSONDecodeError, AttributeError):
        msg = raw[:300]
    return RockError(f"ROCK HTTP {e.code}: {msg}")
