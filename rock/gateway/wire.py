"""HTTP/1.1 over the sandbox's unix socket, reduced to what the ModelProxy sends.

The proxy always sends one request per connection with a Content-Length body and reads the
answer until the socket closes, so a full HTTP server is not needed here; but the socket is
reachable from inside the sandbox, so everything is bounded and anything malformed gets a 400.
Tested through the gateway in tests/gateway/test_gateway.py.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

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
    """A request the gateway cannot parse; answered with `status` and a JSON error."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names
    body: bytes = b""

    def bearer(self) -> str:
        auth = self.headers.get("authorization", "")
        return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One request, or None if the peer closed before sending anything."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise BadRequest(400, "bad_request", "incomplete request head") from e
    except asyncio.LimitOverrunError as e:
        raise BadRequest(400, "bad_request", f"request head over {MAX_HEAD} bytes") from e
    request_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise BadRequest(400, "bad_request", f"malformed request line {request_line[:80]!r}")
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(400, "bad_request", f"malformed header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError as e:
        raise BadRequest(400, "bad_request", "invalid Content-Length") from e
    if length < 0 or length > MAX_BODY:
        raise BadRequest(413, "too_large", f"request body over {MAX_BODY} bytes")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as e:
        raise BadRequest(400, "bad_request", "request body shorter than its Content-Length") from e
    return Request(parts[0], parts[1].split("?", 1)[0], headers, body)


def error_body(code: str, message: str) -> bytes:
    """The error shape of rock's REST API, which OpenAI clients also read (`error.message`)."""
    return json.dumps({"error": {"code": code, "message": message, "type": code}}).encode()


def response_head(status: int, content_type: str, length: int | None) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", f"Content-Type: {content_type}", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    else:
        lines.append("Cache-Control: no-cache")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def send_json(writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
    writer.write(response_head(status, "application/json", len(body)) + body)
    await writer.drain()


async def send_error(writer: asyncio.StreamWriter, status: int, code: str, message: str) -> None:
    await send_json(writer, status, error_body(code, message))
