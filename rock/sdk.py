"""Python SDK of ROCK REST v1 (httpx), sync and async with the same methods.

    from rock.sdk import Client
    with Client("http://127.0.0.1:8080", token) as rock:
        with rock.create_sandbox(image="rock/base:bookworm", memory="512m") as sb:
            print(sb.exec("echo hi").stdout)

`client.chunk_stream()` yields the model gateway's chunks as they are recorded (`rock.models.ChunkEvent`).
Server errors come back as the typed exceptions of `rock.errors` (NotFound, ValidationFailed, ...).
Each call is described once as a `_Call` (method, path, payload, parser); `Client`/`Sandbox` and
`AsyncClient`/`AsyncSandbox` only differ in how they send it.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from rock import errors
from rock import models as m
from rock.contracts import Chunk

DEFAULT_URL = "http://127.0.0.1:8080"


@dataclass
class _Call:
    method: str
    path: str
    json: Any = None
    params: dict = field(default_factory=dict)
    content: bytes | None = None
    parse: Callable[[httpx.Response], Any] = lambda r: None


def _raise_for_error(r: httpx.Response) -> None:
    if r.status_code < 400:
        return
    try:
        err = json.loads(r.content)["error"]
        code, message = err["code"], err["message"]
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", r.text[:500] or f"HTTP {r.status_code}"
    raise errors.from_wire(r.status_code, code, message)


def _exec_body(cmd, timeout, env, cwd, stdin) -> dict:
    body: dict[str, Any] = {"cmd": cmd}
    for k, v in (("timeout", timeout), ("env", env), ("cwd", cwd), ("stdin", stdin)):
        if v is not None:
            body[k] = v
    return body


def _tar_dir(local_dir: str | os.PathLike) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(local_dir), arcname=".")
    return buf.getvalue()


def _context_tar(dockerfile: str, files: dict[str, str]) -> bytes:
    """A build context: `Dockerfile` plus `files` (relative path -> text), with fixed metadata so that equal
    content gives equal bytes (the server tags the image by a hash of the content)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in {**files, "Dockerfile": dockerfile}.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _untar(data: bytes, local_dir: str | os.PathLike) -> None:
    Path(local_dir).mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(local_dir, filter="data")


class _Calls:
    """The REST calls, as data; shared by the sync and async classes."""

    @staticmethod
    def create(body: dict) -> _Call:
        return _Call("POST", "/v1/sandboxes", json=body, parse=lambda r: m.Sandbox.model_validate_json(r.content))

    @staticmethod
    def get(sid: str) -> _Call:
        return _Call("GET", f"/v1/sandboxes/{sid}", parse=lambda r: m.Sandbox.model_validate_json(r.content))

    @staticmethod
    def list() -> _Call:
        return _Call("GET", "/v1/sandboxes", parse=lambda r: m.SandboxList.model_validate_json(r.content).sandboxes)

    @staticmethod
    def delete(sid: str) -> _Call:
        return _Call("DELETE", f"/v1/sandboxes/{sid}")

    @staticmethod
    def exec(sid: str, body: dict) -> _Call:
        return _Call(
            "POST", f"/v1/sandboxes/{sid}/exec", json=body, parse=lambda r: m.ExecResult.model_validate_json(r.content)
        )

    @staticmethod
    def open_session(sid: str, cwd, env) -> _Call:
        body = {k: v for k, v in (("cwd", cwd), ("env", env)) if v is not None}
        return _Call(
            "POST",
            f"/v1/sandboxes/{sid}/sessions",
            json=body,
            parse=lambda r: m.SessionInfo.model_validate_json(r.content),
        )

    @staticmethod
    def run(sid: str, ssid: str, cmd: str, timeout) -> _Call:
        body = {"cmd": cmd} | ({"timeout": timeout} if timeout is not None else {})
        return _Call(
            "POST",
            f"/v1/sandboxes/{sid}/sessions/{ssid}/run",
            json=body,
            parse=lambda r: m.ExecResult.model_validate_json(r.content),
        )

    @staticmethod
    def close_session(sid: str, ssid: str) -> _Call:
        return _Call("DELETE", f"/v1/sandboxes/{sid}/sessions/{ssid}")

    @staticmethod
    def write_file(sid: str, path: str, data: bytes | str, mode: int | None) -> _Call:
        params = {"path": path} | ({"mode": f"{mode:o}"} if mode is not None else {})
        content = data.encode() if isinstance(data, str) else data
        return _Call("PUT", f"/v1/sandboxes/{sid}/files", params=params, content=content)

    @staticmethod
    def read_file(sid: str, path: str) -> _Call:
        return _Call("GET", f"/v1/sandboxes/{sid}/files", params={"path": path}, parse=lambda r: r.content)

    @staticmethod
    def put_archive(sid: str, path: str, tar_bytes: bytes) -> _Call:
        return _Call("PUT", f"/v1/sandboxes/{sid}/archive", params={"path": path}, content=tar_bytes)

    @staticmethod
    def get_archive(sid: str, path: str) -> _Call:
        return _Call("GET", f"/v1/sandboxes/{sid}/archive", params={"path": path}, parse=lambda r: r.content)

    @staticmethod
    def snapshot(sid: str) -> _Call:
        return _Call(
            "POST", f"/v1/sandboxes/{sid}/snapshots", parse=lambda r: m.Snapshot.model_validate_json(r.content)
        )

    @staticmethod
    def list_snapshots() -> _Call:
        return _Call("GET", "/v1/snapshots", parse=lambda r: m.SnapshotList.model_validate_json(r.content).snapshots)

    @staticmethod
    def delete_snapshot(snap_id: str) -> _Call:
        return _Call("DELETE", f"/v1/snapshots/{snap_id}")

    @staticmethod
    def trajectory(sid: str) -> _Call:
        return _Call(
            "GET",
            f"/v1/sandboxes/{sid}/trajectory",
            parse=lambda r: [Chunk.model_validate_json(line) for line in r.content.splitlines() if line.strip()],
        )

    @staticmethod
    def chunk_count(sid: str, trajectory_id: str) -> _Call:
        return _Call("GET", "/v1/chunks/count", params={"sandbox_id": sid, "trajectory_id": trajectory_id},
                     parse=lambda r: m.ChunkCount.model_validate_json(r.content).count)  # fmt: skip

    @staticmethod
    def build_image(dockerfile: str, files: dict[str, str]) -> _Call:
        return _Call(
            "POST",
            "/v1/images",
            content=_context_tar(dockerfile, files),
            parse=lambda r: m.ImageBuilt.model_validate_json(r.content),
        )

    @staticmethod
    def health() -> _Call:
        return _Call("GET", "/healthz", parse=lambda r: r.json())


def _resolve(url: str | None, token: str | None) -> tuple[str, str | None]:
    return (url or os.environ.get("ROCK_URL") or DEFAULT_URL).rstrip("/"), token or os.environ.get("ROCK_API_TOKEN")


def _httpx_kwargs(url: str, token: str | None, timeout: float) -> dict:
    # No read timeout: an exec may legitimately run for hours; its own `timeout` bounds it.
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return {"base_url": url, "headers": headers, "timeout": httpx.Timeout(timeout, read=None)}


def _stream_params(sandbox_id: str | None, trajectory_id: str | None, keepalive_s: float) -> dict:
    given = {"sandbox_id": sandbox_id, "trajectory_id": trajectory_id, "keepalive_s": keepalive_s}
    return {k: v for k, v in given.items() if v is not None}


def _stream_timeout(keepalive_s: float) -> httpx.Timeout:
    # The server writes at least every keepalive_s; three missed lines mean it (or the network) is gone.
    return httpx.Timeout(30.0, read=max(1.0, 3 * keepalive_s))


def _send_kwargs(c: _Call) -> dict:
    kw: dict[str, Any] = {"params": c.params}
    if c.json is not None:
        kw["json"] = c.json
    if c.content is not None:
        kw["content"] = c.content
    return kw


# ---- sync -------------------------------------------------------------------------------------


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0):
        self.url, self.token = _resolve(url, token)
        self._http = httpx.Client(**_httpx_kwargs(self.url, self.token, timeout))

    def _do(self, c: _Call):
        r = self._http.request(c.method, c.path, **_send_kwargs(c))
        _raise_for_error(r)
        return c.parse(r)

    def health(self) -> dict:
        return self._do(_Calls.health())

    def create_sandbox(self, **body) -> Sandbox:
        """Create a sandbox; keyword arguments are the fields of `rock.models.CreateSandbox`."""
        return Sandbox(self, self._do(_Calls.create(body)))

    def sandbox(self, sandbox_id: str) -> Sandbox:
        return Sandbox(self, self._do(_Calls.get(sandbox_id)))

    def list_sandboxes(self) -> list[Sandbox]:
        return [Sandbox(self, info) for info in self._do(_Calls.list())]

    def list_snapshots(self) -> list[m.Snapshot]:
        return self._do(_Calls.list_snapshots())

    def build_image(self, dockerfile: str, files: dict[str, str] | None = None) -> str:
        """Build `dockerfile` with `files` as its context (no network); the image tag, `ale-task:<hash>`.
        A context built before returns at once; a failing build raises rock.errors.ImageBuildFailed."""
        return self._do(_Calls.build_image(dockerfile, files or {})).image

    def delete_snapshot(self, snapshot_id: str) -> None:
        self._do(_Calls.delete_snapshot(snapshot_id))

    def chunk_count(self, sandbox_id: str, trajectory_id: str) -> int:
        """How many chunks the gateway recorded for `trajectory_id` in that sandbox (indexes 0..n-1)."""
        return self._do(_Calls.chunk_count(sandbox_id, trajectory_id))

    def chunk_stream(self, sandbox_id: str | None = None, trajectory_id: str | None = None,
                     keepalive_s: float = 15.0) -> Iterator[m.ChunkEvent]:  # fmt: skip
        """The gateway's chunks as they are recorded (all sandboxes by default): an `open` event once the
        subscription is live, then `chunk` events (`.chunk`), `keepalive` ones while nothing is recorded, `end`
        when the server stops. A server silent for 3 x keepalive_s is a ReadTimeout: it is gone."""
        params = _stream_params(sandbox_id, trajectory_id, keepalive_s)
        with self._http.stream("GET", "/v1/chunks/stream", params=params, timeout=_stream_timeout(keepalive_s)) as r:
            if r.status_code >= 400:
                r.read()
                _raise_for_error(r)
            for line in r.iter_lines():
                if line.strip():
                    yield m.ChunkEvent.model_validate_json(line)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Sandbox:
    """A live sandbox; `info` is the server's record (`rock.models.Sandbox`). Deleted on `with` exit."""

    def __init__(self, client: Client, info: m.Sandbox):
        self.client, self.info, self.id = client, info, info.id

    def exec(
        self,
        cmd: str | list[str],
        timeout: float | None = None,
        env: dict | None = None,
        cwd: str | None = None,
        stdin: str | None = None,
    ) -> m.ExecResult:
        return self.client._do(_Calls.exec(self.id, _exec_body(cmd, timeout, env, cwd, stdin)))

    def exec_stream(
        self,
        cmd: str | list[str],
        timeout: float | None = None,
        env: dict | None = None,
        cwd: str | None = None,
        stdin: str | None = None,
    ) -> Iterator[m.ExecChunk]:
        """Output chunks as they are produced; the last one has type 'exit' and the exit code."""
        body = _exec_body(cmd, timeout, env, cwd, stdin)
        with self.client._http.stream(
            "POST", f"/v1/sandboxes/{self.id}/exec", params={"stream": "true"}, json=body
        ) as r:
            if r.status_code >= 400:
                r.read()
                _raise_for_error(r)
            for line in r.iter_lines():
                if line.strip():
                    yield m.ExecChunk.model_validate_json(line)

    def session(self, cwd: str | None = None, env: dict | None = None) -> Session:
        return Session(self, self.client._do(_Calls.open_session(self.id, cwd, env)).id)

    def write_file(self, path: str, data: bytes | str, mode: int | None = None) -> None:
        self.client._do(_Calls.write_file(self.id, path, data, mode))

    def read_file(self, path: str) -> bytes:
        return self.client._do(_Calls.read_file(self.id, path))

    def upload_dir(self, local_dir: str | os.PathLike, path: str) -> None:
        self.client._do(_Calls.put_archive(self.id, path, _tar_dir(local_dir)))

    def download_dir(self, path: str, local_dir: str | os.PathLike) -> None:
        _untar(self.client._do(_Calls.get_archive(self.id, path)), local_dir)

    def snapshot(self) -> m.Snapshot:
        return self.client._do(_Calls.snapshot(self.id))

    def trajectory(self) -> list[Chunk]:
        """The sandbox's recorded model calls, in the order they were recorded (`rock.contracts.Chunk`)."""
        return self.client._do(_Calls.trajectory(self.id))

    def refresh(self) -> m.Sandbox:
        self.info = self.client._do(_Calls.get(self.id))
        return self.info

    def delete(self) -> None:
        self.client._do(_Calls.delete(self.id))

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.delete()
        except errors.NotFound:
            pass


class Session:
    """A persistent bash session: cwd, env and shell variables carry over between runs."""

    def __init__(self, sandbox: Sandbox, session_id: str):
        self.sandbox, self.id = sandbox, session_id

    def run(self, cmd: str, timeout: float | None = None) -> m.ExecResult:
        return self.sandbox.client._do(_Calls.run(self.sandbox.id, self.id, cmd, timeout))

    def close(self) -> None:
        self.sandbox.client._do(_Calls.close_session(self.sandbox.id, self.id))

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.close()
        except errors.NotFound:
            pass


# ---- async ------------------------------------------------------------------------------------


class AsyncClient:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0):
        self.url, self.token = _resolve(url, token)
        self._http = httpx.AsyncClient(**_httpx_kwargs(self.url, self.token, timeout))

    async def _do(self, c: _Call):
        r = await self._http.request(c.method, c.path, **_send_kwargs(c))
        _raise_for_error(r)
        return c.parse(r)

    async def health(self) -> dict:
        return await self._do(_Calls.health())

    async def create_sandbox(self, **body) -> AsyncSandbox:
        return AsyncSandbox(self, await self._do(_Calls.create(body)))

    async def sandbox(self, sandbox_id: str) -> AsyncSandbox:
        return AsyncSandbox(self, await self._do(_Calls.get(sandbox_id)))

    async def list_sandboxes(self) -> list[AsyncSandbox]:
        return [AsyncSandbox(self, info) for info in await self._do(_Calls.list())]

    async def list_snapshots(self) -> list[m.Snapshot]:
        return await self._do(_Calls.list_snapshots())

    async def build_image(self, dockerfile: str, files: dict[str, str] | None = None) -> str:
        return (await self._do(_Calls.build_image(dockerfile, files or {}))).image

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self._do(_Calls.delete_snapshot(snapshot_id))

    async def chunk_count(self, sandbox_id: str, trajectory_id: str) -> int:
        return await self._do(_Calls.chunk_count(sandbox_id, trajectory_id))

    async def chunk_stream(self, sandbox_id: str | None = None, trajectory_id: str | None = None,
                           keepalive_s: float = 15.0) -> AsyncIterator[m.ChunkEvent]:  # fmt: skip
        params = _stream_params(sandbox_id, trajectory_id, keepalive_s)
        async with self._http.stream("GET", "/v1/chunks/stream", params=params,
                                     timeout=_stream_timeout(keepalive_s)) as r:  # fmt: skip
            if r.status_code >= 400:
                await r.aread()
                _raise_for_error(r)
            async for line in r.aiter_lines():
                if line.strip():
                    yield m.ChunkEvent.model_validate_json(line)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class AsyncSandbox:
    def __init__(self, client: AsyncClient, info: m.Sandbox):
        self.client, self.info, self.id = client, info, info.id

    async def exec(
        self,
        cmd: str | list[str],
        timeout: float | None = None,
        env: dict | None = None,
        cwd: str | None = None,
        stdin: str | None = None,
    ) -> m.ExecResult:
        return await self.client._do(_Calls.exec(self.id, _exec_body(cmd, timeout, env, cwd, stdin)))

    async def exec_stream(
        self,
        cmd: str | list[str],
        timeout: float | None = None,
        env: dict | None = None,
        cwd: str | None = None,
        stdin: str | None = None,
    ) -> AsyncIterator[m.ExecChunk]:
        body = _exec_body(cmd, timeout, env, cwd, stdin)
        async with self.client._http.stream(
            "POST", f"/v1/sandboxes/{self.id}/exec", params={"stream": "true"}, json=body
        ) as r:
            if r.status_code >= 400:
                await r.aread()
                _raise_for_error(r)
            async for line in r.aiter_lines():
                if line.strip():
                    yield m.ExecChunk.model_validate_json(line)

    async def session(self, cwd: str | None = None, env: dict | None = None) -> AsyncSession:
        return AsyncSession(self, (await self.client._do(_Calls.open_session(self.id, cwd, env))).id)

    async def write_file(self, path: str, data: bytes | str, mode: int | None = None) -> None:
        await self.client._do(_Calls.write_file(self.id, path, data, mode))

    async def read_file(self, path: str) -> bytes:
        return await self.client._do(_Calls.read_file(self.id, path))

    async def upload_dir(self, local_dir: str | os.PathLike, path: str) -> None:
        await self.client._do(_Calls.put_archive(self.id, path, _tar_dir(local_dir)))

    async def download_dir(self, path: str, local_dir: str | os.PathLike) -> None:
        _untar(await self.client._do(_Calls.get_archive(self.id, path)), local_dir)

    async def snapshot(self) -> m.Snapshot:
        return await self.client._do(_Calls.snapshot(self.id))

    async def trajectory(self) -> list[Chunk]:
        return await self.client._do(_Calls.trajectory(self.id))

    async def refresh(self) -> m.Sandbox:
        self.info = await self.client._do(_Calls.get(self.id))
        return self.info

    async def delete(self) -> None:
        await self.client._do(_Calls.delete(self.id))

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            await self.delete()
        except errors.NotFound:
            pass


class AsyncSession:
    def __init__(self, sandbox: AsyncSandbox, session_id: str):
        self.sandbox, self.id = sandbox, session_id

    async def run(self, cmd: str, timeout: float | None = None) -> m.ExecResult:
        return await self.sandbox.client._do(_Calls.run(self.sandbox.id, self.id, cmd, timeout))

    async def close(self) -> None:
        await self.sandbox.client._do(_Calls.close_session(self.sandbox.id, self.id))
