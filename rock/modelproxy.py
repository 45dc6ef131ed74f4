"""python3 modelproxy.py --socket /run/rock/model.sock --listen 127.0.0.1:8765 [--daemon]

The in-sandbox ModelProxy: an OpenAI-compatible endpoint on the sandbox's own loopback that
forwards every call over the unix socket bind-mounted from the host, where rock's model gateway
authenticates, forwards and records it. Standard library only, because it is mounted read-only
into images that have nothing but a bare `python3`.

It is a byte relay, not an HTTP server: each TCP connection of the agent is joined to a fresh
connection to the gateway's socket and bytes flow both ways as they arrive, so the gateway
speaks HTTP/1.1 with the agent itself (POST /v1/chat/completions streamed or not, POST
/v1/completions, GET /v1/models, keep-alive, JSON errors). Parsing HTTP twice, once here and
once in the gateway, cost more CPU per call than the model path's whole budget on a busy
machine; a relay costs a few system calls. One thread multiplexes every connection (epoll).
The socket is opened per connection, so a gateway restart that re-creates it is picked up
without restarting the proxy; when it cannot be reached the agent gets a 502 JSON error.

With --daemon the program forks, the child serves and the parent exits 0 only once the port is
listening (1 with the reason otherwise), so `docker exec` of this command returns when the
proxy is ready.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import selectors
import socket
import sys

BUF = 256 * 1024  # per direction: above this the reading side waits (back-pressure)
MAX_HEAD = 64 * 1024  # what is read of a request that cannot be forwarded, to answer it


def json_error(status: int, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message, "type": code}}).encode()
    reason = {502: "Bad Gateway", 503: "Service Unavailable"}.get(status, "Error")
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "Connection: close\r\n\r\n").encode() + body


class Pipe:
    """One direction of a joined connection: bytes read from `src` wait in `buf` until `dst` takes them."""

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src, self.dst = src, dst
        self.buf = b""
        self.eof = False  # src has closed its side; shut dst's write side once buf is out


class Link:
    """An agent connection joined to a gateway connection; `failed` holds the 502 to send instead
    when the gateway could not be reached (sent once the agent's request head is in)."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None, failed: bytes | None) -> None:
        self.client, self.upstream, self.failed = client, upstream, failed
        self.up = Pipe(client, upstream) if upstream else None  # agent -> gateway
        self.down = Pipe(upstream, client) if upstream else None  # gateway -> agent
        self.head = b""  # what arrived of the request, while failed
        self.masks: dict[socket.socket, int] = {}  # what each side is registered for


class Server:
    """The relay's event loop. The interface of the stdlib's socketserver that callers use:
    `server_address`, `serve_forever()`, `shutdown()`, `server_close()`."""

    request_queue_size = 512  # an agent may open many calls at once

    def __init__(self, address: tuple[str, int], socket_path: str) -> None:
        self.socket_path = socket_path
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(address)
        self.socket.listen(self.request_queue_size)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.links: dict[socket.socket, Link] = {}
        self.stopping = False

    # ---- loop -------------------------------------------------------------------------------

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Serve until shutdown(); `poll_interval` is accepted for socketserver's signature and unused
        (shutdown wakes the loop through a socket pair, so an idle proxy never wakes up)."""
        self.sel.register(self.socket, selectors.EVENT_READ, None)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        try:
            while not self.stopping:
                for key, mask in self.sel.select():
                    if key.fileobj is self.socket:
                        self.accept()
                    elif key.fileobj is self.wake_r:
                        self.stopping = True
                    else:
                        self.ready(key.fileobj, mask)
        finally:
            for link in list(self.links.values()):
                self.close(link)
            self.sel.close()

    def shutdown(self) -> None:
        self.stopping = True
        try:
            self.wake_w.send(b"x")
        except OSError:
            pass

    def server_close(self) -> None:
        for s in (self.socket, self.wake_r, self.wake_w):
            s.close()

    # ---- connections ------------------------------------------------------------------------

    def accept(self) -> None:
        for _ in range(64):  # drain a burst of connects per wake-up
            try:
                client, _ = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and the like: leave the connect queued, try on the next wake-up
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return
                raise
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream, failed = self.connect()
            link = Link(client, upstream, failed)
            self.links[client] = link
            self.sel.register(client, selectors.EVENT_READ, link)
            link.masks[client] = selectors.EVENT_READ
            if upstream:
                self.links[upstream] = link
                self.sel.register(upstream, selectors.EVENT_READ, link)
                link.masks[upstream] = selectors.EVENT_READ

    def connect(self) -> tuple[socket.socket | None, bytes | None]:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.setblocking(False)
            upstream.connect(self.socket_path)  # a unix connect completes at once or fails
            return upstream, None
        except OSError as e:
            upstream.close()
            why = "the gateway is busy" if e.errno == errno.EAGAIN else e.strerror or str(e)
            return None, json_error(502, "gateway_unavailable", f"model gateway socket {self.socket_path}: {why}")

    def ready(self, sock: socket.socket, mask: int) -> None:
        link = self.links.get(sock)
        if link is None:
            return
        try:
            if link.failed is not None:
                self.answer_failed(link)
                return
            for pipe in (link.up, link.down):
                if mask & selectors.EVENT_READ and sock is pipe.src:
                    self.read(pipe)
                if mask & selectors.EVENT_WRITE and sock is pipe.dst:
                    self.flush(pipe)
            if link.down.eof and not link.down.buf:
                self.close(link)  # the gateway has answered and hung up: nothing more can come
            elif link.up.eof and link.down.eof:
                self.close(link)
            else:
                self.update(link)
        except OSError:
            self.close(link)  # reset by either side: drop both

    def read(self, pipe: Pipe) -> None:
        if pipe.eof or len(pipe.buf) >= BUF:
            return
        data = pipe.src.recv(65536)
        if not data:
            pipe.eof = True
        else:
            pipe.buf += data
        self.flush(pipe)

    def flush(self, pipe: Pipe) -> None:
        if pipe.buf:
            try:
                sent = pipe.dst.send(pipe.buf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            pipe.buf = pipe.buf[sent:]
        if pipe.eof and not pipe.buf:
            try:
                pipe.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def update(self, link: Link) -> None:
        """Read from a side while its pipe has room and it is open; wait to write while bytes are queued."""
        for sock in (link.client, link.upstream):
            mask = 0
            for pipe in (link.up, link.down):
                if sock is pipe.src and not pipe.eof and len(pipe.buf) < BUF:
                    mask |= selectors.EVENT_READ
                if sock is pipe.dst and pipe.buf:
                    mask |= selectors.EVENT_WRITE
            if mask == link.masks.get(sock, 0):
                continue  # the common case: nothing to tell epoll
            if not mask:
                self.sel.unregister(sock)
            elif sock in link.masks and link.masks[sock]:
                self.sel.modify(sock, mask, link)
            else:
                self.sel.register(sock, mask, link)
            link.masks[sock] = mask

    def answer_failed(self, link: Link) -> None:
        """Read the agent's request head (so that closing does not reset the answer away), then answer."""
        data = link.client.recv(65536)
        link.head += data
        if data and b"\r\n\r\n" not in link.head and len(link.head) < MAX_HEAD:
            return
        if data:
            link.client.setblocking(True)
            link.client.settimeout(5)
            link.client.sendall(link.failed)
            link.client.shutdown(socket.SHUT_WR)
        self.close(link)

    def close(self, link: Link) -> None:
        for sock in (link.client, link.upstream):
            if sock is None:
                continue
            self.links.pop(sock, None)
            if link.masks.pop(sock, 0):
                self.sel.unregister(sock)
            sock.close()


def serve(socket_path: str, host: str, port: int) -> Server:
    return Server((host, port), socket_path)


def daemonize_and_serve(socket_path: str, host: str, port: int) -> int:
    """Fork; the parent returns once the child listens, so the caller knows the proxy is ready."""
    read_fd, write_fd = os.pipe()
    if os.fork() > 0:
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as r:
            msg = r.read().decode()
        if msg == "ok":
            return 0
        print(f"modelproxy: {msg or 'exited before listening'}", file=sys.stderr)
        return 1
    os.close(read_fd)
    os.setsid()
    try:
        server = serve(socket_path, host, port)
    except OSError as e:
        os.write(write_fd, f"cannot listen on {host}:{port}: {e}".encode())
        os._exit(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.write(write_fd, b"ok")
    os.close(write_fd)
    server.serve_forever()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="in-sandbox OpenAI-compatible proxy to rock's model gateway")
    p.add_argument("--socket", default="/run/rock/model.sock", help="the gateway's unix socket (bind-mounted)")
    p.add_argument("--listen", default="127.0.0.1:8765", help="HOST:PORT on the sandbox's loopback")
    p.add_argument("--daemon", action="store_true", help="fork into the background once listening")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if args.daemon:
        return daemonize_and_serve(args.socket, host, int(port))
    serve(args.socket, host, int(port)).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
