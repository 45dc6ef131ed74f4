"""HTTP/1.1 over the sandbox's unix socket, as much of it as an agent's OpenAI client uses.

The in-sandbox ModelProxy hands the agent's connection over, so this is the agent's HTTP server:
requests with a Content-Length or chunked body, `Expect: 100-continue`, keep-alive (a whole answer
carries its Content-Length; a streamed one is chunked for HTTP/1.1 clients and ends with the
connection for HTTP/1.0 ones). Requests are parsed by llhttp (`rock/gateway/httpparse.py`) within
the limits of `GatewayConfig`; anything malformed, oversized or too slow gets its 4xx and a closed
connection. Tested through the gateway in tests/gateway/test_http.py and test_malformed.py.
"""

from __future__ import annotations

import asyncio

import orjson

from rock.gateway.httpparse import BadRequest, Limits, Request, RequestReader

__all__ = ["BadRequest", "Limits", "Request", "RequestReader", "Responder", "error_body"]
MAX_HEAD = 64 * 1024  # the listener's stream buffer limit
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    410: "Gone",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


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
