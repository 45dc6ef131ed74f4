"""A small asyncio client for the Docker Engine API calls ROCK makes on the event loop.

    .venv/bin/pytest tests/rock/test_api.py -q -k exec

Request/response calls (exec create and inspect, container state, remove, list, build) go through
`httpx` over the daemon's unix socket, on kept-alive pooled connections. Exec start hijacks a
fresh connection of its own, as the docker CLI does: its request and response head are written
and parsed by `h11`, and the raw stream after the `101` stays an asyncio StreamReader/Writer
because the exec's stdin ends at the client's half-close (`write_eof`), which httpx's upgraded
stream does not offer. The multiplexed stdout/stderr frames are read as they arrive (`frames`).
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import h11
import httpx

API = "/v1.41"  # Docker 20.10's API; newer daemons still serve it
MAX_HEAD = 64 << 10  # the exec start response head; the daemon's is about 150 bytes


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


def _error(status: int, data: bytes) -> EngineError:
    try:
        message = json.loads(data).get("message", data.decode(errors="replace"))
    except (ValueError, AttributeError):
        message = data.decode(errors="replace")
    return EngineError(status, str(message).strip())


class Engine:
    """Async Docker Engine API calls; safe to share between tasks of one event loop."""

    def __init__(self, pool_size: int = 16):
        self._kind, self._addr = _address()
        if self._kind == "unix":
            transport, base = httpx.AsyncHTTPTransport(uds=self._addr, limits=self._limits(pool_size)), "http://docker"
        else:
            host, port = self._addr
            transport, base = httpx.AsyncHTTPTransport(limits=self._limits(pool_size)), f"http://{host}:{port}"
        # No timeouts: a busy daemon can take minutes (a commit, a build); callers bound what they wait for.
        self._http = httpx.AsyncClient(transport=transport, base_url=base + API, timeout=None, trust_env=False)

    @staticmethod
    def _limits(pool_size: int) -> httpx.Limits:
        # As many connections at once as callers make (1,000 sandboxes' execs must not queue on a pool
        # limit), `pool_size` of them kept alive between calls.
        return httpx.Limits(max_connections=None, max_keepalive_connections=pool_size)

    async def _connect(self):
        if self._kind == "unix":
            return await asyncio.open_unix_connection(self._addr, limit=1 << 20)
        host, port = self._addr
        return await asyncio.open_connection(host, port, limit=1 << 20)

    async def call(self, method: str, path: str, payload: dict | None = None) -> dict | None:
        """One JSON request on a pooled keep-alive connection; EngineError on a non-2xx status."""
        try:
            r = await self._http.request(method, path, json=payload)
        except httpx.RemoteProtocolError:  # the daemon closed a kept-alive connection as we reused it
            r = await self._http.request(method, path, json=payload)
        if r.status_code >= 300:
            raise _error(r.status_code, r.content)
        return r.json() if r.content else None

    async def build(self, context: bytes, params: dict[str, str]) -> list[dict]:
        """`POST /build` of a tar context; the daemon's JSON progress messages.
        A Dockerfile that fails still answers 200: its failure is a message with an `error` key."""
        r = await self._http.post(
            "/build", params=params, content=context, headers={"Content-Type": "application/x-tar"}
        )
        if r.status_code >= 300:
            raise EngineError(r.status_code, r.text.strip())
        return _json_stream(r.content.decode(errors="replace"))

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
        try:
            status, data = await _upgrade(
                reader, writer, f"{API}/exec/{exec_id}/start", b'{"Detach":false,"Tty":false}'
            )
        except BaseException:
            writer.close()
            raise
        if status != 101:
            writer.close()
            raise _error(status, data)
        return reader, writer

    async def exec_inspect(self, exec_id: str) -> dict:
        return await self.call("GET", f"/exec/{exec_id}/json")

    async def close(self) -> None:
        await self._http.aclose()


async def _upgrade(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str, body: bytes
) -> tuple[int, bytes]:
    """POST `body` asking to upgrade the connection; (101, b"") once switched, else (status, error body).
    The head is read up to its blank line only, so the raw stream after a 101 stays in `reader`."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    headers = [
        ("Host", "docker"),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Connection", "Upgrade"),
        ("Upgrade", "tcp"),
    ]
    writer.write(conn.send(h11.Request(method="POST", target=target, headers=headers)) + conn.send(h11.Data(body)))
    conn.send(h11.EndOfMessage())
    await writer.drain()
    conn.receive_data(await reader.readuntil(b"\r\n\r\n"))
    event = conn.next_event()
    while isinstance(event, h11.InformationalResponse) and event.status_code != 101:
        conn.receive_data(await reader.readuntil(b"\r\n\r\n"))  # a 100 Continue before the real answer
        event = conn.next_event()
    if isinstance(event, h11.InformationalResponse):
        return 101, b""
    if not isinstance(event, h11.Response):
        raise EngineError(502, f"docker answered exec start with {event!r}")
    status, out = event.status_code, bytearray()
    while True:  # an error answer (404 no such exec, 409 not running): read its body to the end
        event = conn.next_event()
        if event is h11.NEED_DATA:
            chunk = await reader.read(65536)
            conn.receive_data(chunk)
            if not chunk:
                break
        elif isinstance(event, h11.Data):
            out += event.data
        else:
            break
    return status, bytes(out)


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
