"""A small asyncio client for the few Docker Engine API calls on the exec hot path.

The docker SDK is synchronous and opens a `requests` session per call; exec is ROCK's most
frequent operation, so it goes straight to the daemon's socket instead: exec create and
inspect reuse kept-alive connections, exec start hijacks a fresh one (as the docker CLI does)
and the multiplexed stdout/stderr frames are read as they arrive.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
from collections.abc import AsyncIterator
from urllib.parse import urlencode, urlparse

API = "/v1.41"  # Docker 20.10's API; newer daemons still serve it


class EngineError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(status, message)  # both in args, so the error pickles (Ray hosts raise it)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"docker engine {self.status}: {self.message}"


def _address() -> tuple[str, str | tuple[str, int]]:
    """('unix', path) or ('tcp', (host, port)) from DOCKER_HOST, like the docker CLI."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    u = urlparse(host)
    if u.scheme == "unix":
        return "unix", u.path
    if u.scheme == "tcp":
        return "tcp", (u.hostname or "127.0.0.1", u.port or 2375)
    raise ValueError(f"unsupported DOCKER_HOST {host!r} (unix:// or tcp:// only)")


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def _read_body(reader: asyncio.StreamReader, status: int, headers: dict[str, str]) -> bytes:
    if status in (204, 304) or status < 200:
        return b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read()


class Engine:
    """Async Docker Engine API calls for exec; safe to share between tasks of one event loop."""

    def __init__(self, pool_size: int = 16):
        self._kind, self._addr = _address()
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._pool_size = pool_size

    async def _connect(self):
        if self._kind == "unix":
            return await asyncio.open_unix_connection(self._addr, limit=1 << 20)
        host, port = self._addr
        return await asyncio.open_connection(host, port, limit=1 << 20)

    @staticmethod
    def _request_bytes(method: str, path: str, body: bytes | None, extra: str = "") -> bytes:
        head = f"{method} {API}{path} HTTP/1.1\r\nHost: docker\r\n{extra}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return head.encode() + b"\r\n" + (body or b"")

    async def call(self, method: str, path: str, payload: dict | None = None) -> dict | None:
        """One JSON request on a pooled keep-alive connection; EngineError on a non-2xx status."""
        body = None if payload is None else json.dumps(payload).encode()
        for attempt in (0, 1):
            reused = bool(self._idle)
            reader, writer = self._idle.pop() if reused else await self._connect()
            try:
                writer.write(self._request_bytes(method, path, body))
                await writer.drain()
                status, headers = await _read_head(reader)
                data = await _read_body(reader, status, headers)
            except (ConnectionError, asyncio.IncompleteReadError):
                writer.close()
                if reused and attempt == 0:  # the daemon closed an idle connection: retry on a new one
                    continue
                raise
            if headers.get("connection", "").lower() == "close" or len(self._idle) >= self._pool_size:
                writer.close()
            else:
                self._idle.append((reader, writer))
            if status >= 300:
                try:
                    message = json.loads(data).get("message", data.decode(errors="replace"))
                except ValueError:
                    message = data.decode(errors="replace")
                raise EngineError(status, message)
            return json.loads(data) if data else None
        raise AssertionError("unreachable")

    async def build(self, context: bytes, params: dict[str, str]) -> list[dict]:
        """`POST /build` of a tar context on a connection of its own; the daemon's JSON progress messages.
        A Dockerfile that fails still answers 200: its failure is a message with an `error` key."""
        reader, writer = await self._connect()
        try:
            head = (
                f"POST {API}/build?{urlencode(params)} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n"
                f"Content-Type: application/x-tar\r\nContent-Length: {len(context)}\r\n\r\n"
            )
            writer.write(head.encode() + context)
            await writer.drain()
            status, headers = await _read_head(reader)
            data = await _read_body(reader, status, headers)
        finally:
            writer.close()
        if status >= 300:
            raise EngineError(status, data.decode(errors="replace").strip())
        return _json_stream(data.decode(errors="replace"))

    async def exec_create(
        self, container: str, argv: list[str], env: dict[str, str], cwd: str | None, stdin: bool
    ) -> str:
        spec = {
            "AttachStdin": stdin,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": False,
            "Cmd": argv,
            "Env": [f"{k}={v}" for k, v in env.items()],
        }
        if cwd:
            spec["WorkingDir"] = cwd
        out = await self.call("POST", f"/containers/{container}/exec", spec)
        return out["Id"]

    async def exec_start(self, exec_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Start an exec on a hijacked connection; read frames with `frames()`, write stdin to the writer."""
        reader, writer = await self._connect()
        body = b'{"Detach":false,"Tty":false}'
        writer.write(
            self._request_bytes("POST", f"/exec/{exec_id}/start", body, "Connection: Upgrade\r\nUpgrade: tcp\r\n")
        )
        await writer.drain()
        status, headers = await _read_head(reader)
        if status not in (101, 200):
            data = await _read_body(reader, status, headers)
            writer.close()
            raise EngineError(status, data.decode(errors="replace"))
        return reader, writer

    async def exec_inspect(self, exec_id: str) -> dict:
        return await self.call("GET", f"/exec/{exec_id}/json")

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


def _json_stream(text: str) -> list[dict]:
    """The JSON objects of a progress stream (one per line, though the daemon does not promise newlines)."""
    dec, out, i = json.JSONDecoder(), [], 0
    while i < len(text):
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            break
        obj, i = dec.raw_decode(text, i)
        out.append(obj)
    return out


async def frames(reader: asyncio.StreamReader) -> AsyncIterator[tuple[int, bytes]]:
    """(stream, payload) frames of a non-tty attach: 1 = stdout, 2 = stderr; ends at EOF."""
    while True:
        try:
            header = await reader.readexactly(8)
        except asyncio.IncompleteReadError:
            return
        stream, size = header[0], struct.unpack(">I", header[4:])[0]
        try:
            payload = await reader.readexactly(size)
        except asyncio.IncompleteReadError as e:
            payload = e.partial
        yield stream, payload
