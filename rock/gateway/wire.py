"""HTTP/1.1 over the sandbox's unix socket, as much of it as an agent's OpenAI client uses.

The in-sandbox ModelProxy is a byte relay, so this is the agent's HTTP server: requests with a
Content-Length or chunked body, `Expect: 100-continue`, keep-alive (a whole answer carries its
Content-Length; a streamed one is chunked for HTTP/1.1 clients and ends with the connection for
HTTP/1.0 ones). The socket is reachable from inside the sandbox, so everything is bounded and
anything malformed gets a 400 and a closed connection. Tested through the gateway in
tests/gateway/test_gateway.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import orjson

MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class BadRequest(Exception):
    """A request the gateway cannot parse; answered with `status` and a JSON error, then the connection closes."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names
    body: bytes = b""
    version: str = "HTTP/1.1"

    def bearer(self) -> str:
        auth = self.headers.get("authorization", "")
        return auth[7:].strip() if auth[:7].lower() == "bearer " else ""

    @property
    def keep_alive(self) -> bool:
        tokens = self.headers.get("connection", "").lower()
        return "keep-alive" in tokens if self.version == "HTTP/1.0" else "close" not in tokens


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request | None:
    """One request, or None if the peer closed before sending anything."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise BadRequest(400, "bad_request", "incomplete request head") from e
    except asyncio.LimitOverrunError as e:
        raise BadRequest(400, "bad_request", f"request head over {MAX_HEAD} bytes") from e
    request_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(400, "bad_request", f"malformed request line {request_line[:80]!r}")
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(400, "bad_request", f"malformed header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for this before a large body
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await read_chunked(reader)
    else:
        body = await read_sized(reader, headers.get("content-length", "0"))
    return Request(parts[0], parts[1].split("?", 1)[0], headers, body, parts[2])


async def read_sized(reader: asyncio.StreamReader, content_length: str) -> bytes:
    try:
        length = int(content_length)
    except ValueError as e:
        raise BadRequest(400, "bad_request", "invalid Content-Length") from e
    if length < 0 or length > MAX_BODY:
        raise BadRequest(413, "too_large", f"request body over {MAX_BODY} bytes")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as e:
        raise BadRequest(400, "bad_request", "request body shorter than its Content-Length") from e


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts, total = [], 0
    try:
        while True:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as e:
                raise BadRequest(400, "bad_request", f"malformed chunk size {line[:40]!r}") from e
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > MAX_BODY:
                raise BadRequest(413, "too_large", f"request body over {MAX_BODY} bytes")
            parts.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise BadRequest(400, "bad_request", "chunk not followed by CRLF")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
        raise BadRequest(400, "bad_request", "incomplete chunked request body") from e


def error_body(code: str, message: str) -> bytes:
    """The error shape of rock's REST API, which OpenAI clients also read (`error.message`)."""
    return orjson.dumps({"error": {"code": code, "message": message, "type": code}})


class Responder:
    """Writes the answer to one request: whole JSON, or a stream of server-sent events.

    `reusable` tells, once the answer is complete, whether the connection may carry the next
    request (the client allows it and the answer's end was framed, not signalled by closing).
    """

    def __init__(self, writer: asyncio.StreamWriter, request: Request | None) -> None:
        self.writer = writer
        self.keep_alive = request is not None and request.keep_alive
        self.chunked = request is not None and request.version == "HTTP/1.1"
        self.reusable = False

    def head(self, status: int, content_type: str, length: int | None) -> bytes:
        conn = "keep-alive" if self.keep_alive and (length is not None or self.chunked) else "close"
        head = f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\nContent-Type: {content_type}\r\nConnection: {conn}\r\n"
        if length is not None:
            head += f"Content-Length: {length}\r\n"
        else:
            head += "Cache-Control: no-cache\r\n" + ("Transfer-Encoding: chunked\r\n" if self.chunked else "")
        return (head + "\r\n").encode("latin-1")

    async def json(self, status: int, body: bytes) -> None:
        self.writer.write(self.head(status, "application/json", len(body)) + body)
        await self.writer.drain()
        self.reusable = self.keep_alive

    async def error(self, status: int, code: str, message: str) -> None:
        await self.json(status, error_body(code, message))

    def start_stream(self) -> None:
        self.writer.write(self.head(200, "text/event-stream", None))

    async def event(self, data: bytes) -> None:
        """One `data: ...` event, flushed to the agent at once."""
        self.write_event(data)
        await self.writer.drain()

    def write_event(self, data: bytes) -> None:
        self.write_framed(b"data: " + data + b"\n\n")

    def write_framed(self, data: bytes) -> None:
        self.writer.write(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)

    def end_stream(self) -> None:
        """The stream's `[DONE]` and, when chunked, its last chunk; written even on the way out of a cancelled call."""
        self.write_framed(b"data: [DONE]\n\n")
        if self.chunked:
            self.writer.write(b"0\r\n\r\n")
            self.reusable = self.keep_alive
