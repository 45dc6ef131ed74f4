"""What a sandbox sends to its model socket, parsed by llhttp (Node's HTTP parser, via `httptools`).

    .venv/bin/pytest tests/gateway/test_http.py tests/gateway/test_malformed.py -q

The socket is reachable from inside the sandbox, so this is an attack surface: llhttp refuses
conflicting or duplicate `Content-Length`s, `Content-Length` beside `Transfer-Encoding`, malformed
chunk sizes and header tokens; on top of it we refuse every transfer coding but `chunked`, HTTP
versions other than 1.0/1.1, heads and bodies over their limits, and senders slower than the head
and body deadlines. Each is a `BadRequest`, answered with its 4xx and a closed connection
(`rock/gateway/wire.py`, the gateway's server side, writes it).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

import httptools

READ_SIZE = 64 * 1024


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


@dataclass(frozen=True)
class Limits:
    """Bounds on one request (from `GatewayConfig`); the defaults are those of a local `rock serve`."""

    max_head: int = 64 * 1024  # request line and headers
    max_body: int = 64 * 1024 * 1024
    idle_timeout_s: float = 120.0  # a kept-alive connection with no request begun closes quietly after this
    head_timeout_s: float = 10.0  # from a request's first byte to the end of its headers
    body_timeout_s: float = 60.0  # from the end of the headers to the end of the body


class RequestReader:
    """The requests of one agent connection, in order; pipelined ones wait in a queue.

    `next()` returns a Request, None once the peer closed (or idled out) between requests, or raises
    BadRequest. After an `Upgrade` request (e.g. curl's h2c offer) the rest of the connection is not
    HTTP/1.1, so that request is the last one read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: Limits):
        self.reader, self.writer, self.limits = reader, writer, limits
        self._parser = httptools.HttpRequestParser(self)
        self._done: deque[Request] = deque()
        self._last = False
        self._start_message()

    def _start_message(self) -> None:
        self._begun = self._head_done = False
        self._url, self._headers, self._body, self._size = b"", {}, [], 0
        self._head_bytes, self._parsed_head, self._deadline = 0, 0, None

    async def next(self) -> Request | None:
        while not self._done:
            if self._last:
                return None
            data = await self._read()
            if data is None:
                return None
            if not data:
                if self._begun:
                    raise BadRequest(400, "bad_request", "connection closed in the middle of a request")
                return None
            self._feed(data)
        return self._done.popleft()

    async def _read(self) -> bytes | None:
        if not self._begun:  # between requests: an idle keep-alive connection just closes
            try:
                return await asyncio.wait_for(self.reader.read(READ_SIZE), self.limits.idle_timeout_s)
            except TimeoutError:
                return None
        remaining = self._deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            return await asyncio.wait_for(self.reader.read(READ_SIZE), remaining)
        except TimeoutError:
            part = "body" if self._head_done else "head"
            limit = self.limits.body_timeout_s if self._head_done else self.limits.head_timeout_s
            raise BadRequest(408, "request_timeout", f"request {part} not received within {limit:g} s") from None

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            raise cause if isinstance(cause, BadRequest) else BadRequest(400, "bad_request", str(e)) from None
        except httptools.HttpParserUpgrade:
            self._last = True  # the request itself was complete (queued); what follows is another protocol
        except httptools.HttpParserError as e:
            raise BadRequest(400, "bad_request", f"malformed request: {e}") from None
        if self._begun and not self._head_done:
            # llhttp buffers a header that spans reads, so the head is bounded here, by bytes received.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_head:
                raise BadRequest(431, "head_too_large", f"request head over {self.limits.max_head} bytes")

    # ---- llhttp callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._begun = True
        self._deadline = time.monotonic() + self.limits.head_timeout_s

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._parsed_head += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
        self._parsed_head += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self._head_done = True
        if self._parsed_head > self.limits.max_head:  # a head that arrived whole, in one read
            raise BadRequest(431, "head_too_large", f"request head over {self.limits.max_head} bytes")
        self._deadline = time.monotonic() + self.limits.body_timeout_s
        version = self._parser.get_http_version()
        if version not in ("1.0", "1.1"):
            raise BadRequest(400, "bad_request", f"HTTP/{version} is not served here (HTTP/1.0 or 1.1)")
        coding = self._headers.get("transfer-encoding")
        if coding is not None and coding.lower() != "chunked":
            raise BadRequest(400, "bad_request", f"transfer coding {coding[:40]!r} is not supported (only chunked)")
        length = self._headers.get("content-length")
        if length is not None and int(length) > self.limits.max_body:  # llhttp checked it is one number
            raise BadRequest(413, "too_large", f"request body over {self.limits.max_body} bytes")
        if self._headers.get("expect", "").lower() == "100-continue":
            self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for this before a large body

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.limits.max_body:
            raise BadRequest(413, "too_large", f"request body over {self.limits.max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self._parser.get_method().decode("latin-1")
        path = self._url.decode("latin-1").split("?", 1)[0]
        version = f"HTTP/{self._parser.get_http_version()}"
        self._done.append(Request(method, path, self._headers, b"".join(self._body), version))
        self._start_message()
