"""The sandbox's unix socket, from the gateway's side: the agent's connections arrive through it.

The in-sandbox ModelProxy (rock/modelproxy.py) keeps one connection to this socket and passes
every TCP connection the agent opens as a file descriptor (SCM_RIGHTS, one per message, each
with one byte). The gateway then serves HTTP on the agent's own socket, so the sandbox copies no
bytes. A connection that sends no descriptor is served as plain HTTP over the unix socket
(`curl --unix-socket`, and whatever else inside the sandbox tries its luck), with its first
bytes fed back in front of the stream.

Only stream sockets of the internet families are adopted: a descriptor of anything else (a file,
a pipe, a unix socket) that the sandbox sends is closed unread. Tested through the gateway in
tests/gateway/test_gateway.py and tests/gateway/test_http.py.
"""

from __future__ import annotations

import array
import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)
MAX_FDS = 64  # per message; the proxy sends one
ANCILLARY = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Listener:
    """Accepts on `sock` (listening, non-blocking) and runs `serve(reader, writer)` per agent connection,
    at most `max_connections` at once: a sandbox cannot use up the manager's descriptors."""

    def __init__(self, sock: socket.socket, serve: Serve, limit: int, max_connections: int = 256) -> None:
        self.sock, self.serve, self.limit, self.max_connections = sock, serve, limit, max_connections
        self.loop = asyncio.get_running_loop()
        self.waiting: set[socket.socket] = set()  # unix connections with a reader callback on them
        self.tasks: set[asyncio.Task] = set()
        self.loop.add_reader(sock.fileno(), self.accept)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for conn in list(self.waiting):
            self.drop(conn)

    def accept(self) -> None:
        for _ in range(64):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and the like: the connect stays queued for the next wake-up
                log.warning("gateway: accept on %s failed: %s", self.sock.getsockname(), e)
                return
            conn.setblocking(False)
            self.waiting.add(conn)
            self.loop.add_reader(conn.fileno(), self.first, conn)

    def first(self, conn: socket.socket) -> None:
        """What the connection's first message is decides what it is: descriptors, or an HTTP request."""
        got = self.receive(conn)
        if got is None:
            return
        data, fds = got
        if fds:
            self.loop.remove_reader(conn.fileno())
            self.loop.add_reader(conn.fileno(), self.passed, conn)
            self.adopt(fds)
            self.passed(conn)  # more may be queued already
        elif not data:
            self.drop(conn)
        else:
            self.loop.remove_reader(conn.fileno())
            self.waiting.discard(conn)
            if len(self.tasks) >= self.max_connections:
                conn.close()
                return
            self.spawn(self.serve_unix(conn, data))

    def passed(self, conn: socket.socket) -> None:
        while (got := self.receive(conn)) is not None:
            data, fds = got
            if not data and not fds:
                return self.drop(conn)  # the proxy went away (it re-connects when it needs to)
            self.adopt(fds)

    def receive(self, conn: socket.socket) -> tuple[bytes, list[int]] | None:
        """(data, descriptors) of one message; None if nothing is there yet or the connection failed."""
        try:
            data, ancdata, flags, _ = conn.recvmsg(4096, ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            self.drop(conn)
            return None
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
                fds.extend(arr)
        if flags & socket.MSG_CTRUNC:
            log.warning("gateway: a sandbox passed more than %d descriptors at once; the rest were dropped", MAX_FDS)
        return data, fds

    def adopt(self, fds: list[int]) -> None:
        for fd in fds:
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                os.close(fd)  # not a socket
                continue
            if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
                sock.close()
                continue
            if len(self.tasks) >= self.max_connections:
                log.warning("gateway: over %d connections from one sandbox; closing a new one", self.max_connections)
                sock.close()
                continue
            sock.setblocking(False)
            self.spawn(self.serve_tcp(sock))

    async def serve_tcp(self, sock: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=sock, limit=self.limit)
        await self.serve(reader, writer)

    async def serve_unix(self, conn: socket.socket, first: bytes) -> None:
        reader = asyncio.StreamReader(limit=self.limit)
        reader.feed_data(first)  # before the transport reads, so the bytes stay in order
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await self.loop.connect_accepted_socket(lambda: protocol, conn)
        await self.serve(reader, asyncio.StreamWriter(transport, protocol, reader, self.loop))

    def spawn(self, coro) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def drop(self, conn: socket.socket) -> None:
        if conn in self.waiting:
            self.waiting.discard(conn)
            self.loop.remove_reader(conn.fileno())
        conn.close()
