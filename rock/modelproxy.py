"""python3 modelproxy.py --socket /run/rock/model.sock --listen 127.0.0.1:8765 [--daemon]

The in-sandbox ModelProxy: an OpenAI-compatible endpoint on the sandbox's own loopback that
forwards every call over the unix socket bind-mounted from the host, where rock's model gateway
authenticates, forwards and records it. Standard library only, because it is mounted read-only
into images that have nothing but a bare `python3`.

Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models (anything else under
/v1/ is passed on so the gateway answers with its JSON 404). Streaming responses are relayed
piece by piece as they arrive. The socket is opened per request, so a gateway restart that
re-creates it is picked up without restarting the proxy.

With --daemon the program forks, the child serves and the parent exits 0 only once the port is
listening (1 with the reason otherwise), so `docker exec` of this command returns when the
proxy is ready.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

MAX_BODY = 64 * 1024 * 1024
# Hop-by-hop or re-computed headers are not forwarded; everything else (Authorization,
# X-Trajectory-Id, ...) goes to the gateway, which decides what it means.
DROP_HEADERS = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "expect", "te", "upgrade"}


def json_error(status: int, code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "type": code}}).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rock-modelproxy"
    # Head and body go out in separate writes; with Nagle on, a keep-alive client's delayed ACK
    # would hold the body back ~40 ms on every call after the first few.
    disable_nagle_algorithm = True
    socket_path = "/run/rock/model.sock"

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass  # the gateway records every call; per-request lines here would only fill the agent's terminal

    def send_error(self, code, message=None, explain=None):
        # The stdlib sends an HTML page; agents show JSON errors better.
        self.send_json(code, "bad_request" if code < 500 else "proxy_error", message or explain or "error")

    def send_json(self, status: int, code: str, message: str) -> None:
        body = json_error(status, code, message)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.forward(b"")

    def do_POST(self):
        body = self.read_body()
        if body is not None:
            self.forward(body)

    def read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self.read_chunked()
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self.send_json(400, "bad_request", "invalid Content-Length")
            return None
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self.send_json(413, "too_large", f"request body over {MAX_BODY} bytes")
            return None
        return self.rfile.read(length)

    def read_chunked(self) -> bytes | None:
        parts, total = [], 0
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > MAX_BODY:
                self.close_connection = True
                self.send_json(413, "too_large", f"request body over {MAX_BODY} bytes")
                return None
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def forward(self, body: bytes) -> None:
        if not self.path.startswith("/v1/"):
            self.send_json(404, "not_found", f"no route {self.command} {self.path}; the model API is under /v1/")
            return
        try:
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.socket_path)
        except OSError as e:
            upstream.close()
            self.send_json(502, "gateway_unavailable", f"model gateway socket {self.socket_path}: {e}")
            return
        with upstream:
            upstream.sendall(self.request_head(len(body)) + body)
            self.relay(upstream)

    def request_head(self, length: int) -> bytes:
        lines = [f"{self.command} {self.path} HTTP/1.1", "Host: rock-gateway", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in self.headers.items() if k.lower() not in DROP_HEADERS]
        lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def relay(self, upstream: socket.socket) -> None:
        head, rest = read_head(upstream)
        if head is None:
            self.send_json(502, "gateway_closed", "the model gateway closed the connection without answering")
            return
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = [line.split(":", 1) for line in header_lines if ":" in line]
        length = next((v.strip() for k, v in headers if k.strip().lower() == "content-length"), None)
        self.send_response_only(status, status_line.split(" ", 2)[2] if status_line.count(" ") >= 2 else None)
        for k, v in headers:
            if k.strip().lower() not in DROP_HEADERS:
                self.send_header(k.strip(), v.strip())
        if length is not None:
            self.send_header("Content-Length", length)
            self.end_headers()
            self.relay_fixed(upstream, rest, int(length))
        else:
            # A streamed answer: its end is the gateway closing the socket, so the agent gets
            # it chunk by chunk, each flushed as soon as it arrives.
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.relay_chunked(upstream, rest)

    def relay_fixed(self, upstream: socket.socket, data: bytes, length: int) -> None:
        sent = 0
        while True:
            if data:
                self.wfile.write(data)
                sent += len(data)
            if sent >= length:
                return
            data = upstream.recv(65536)
            if not data:
                self.close_connection = True  # short body: the agent must not reuse this connection
                return

    def relay_chunked(self, upstream: socket.socket, data: bytes) -> None:
        try:
            while True:
                if data:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                data = upstream.recv(65536)
                if not data:
                    break
        except ConnectionResetError:
            pass  # the gateway dropped us mid-stream; still end the agent's stream properly
        self.wfile.write(b"0\r\n\r\n")


def read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
    """The response head and whatever body bytes came with it; (None, b"") if the peer closed first."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            return None, b""
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


class Server(HTTPServer):
    """Worker threads that each block in accept() and serve the connection they get, with one more
    started whenever none is left idle. Unlike ThreadingHTTPServer's thread per connection handed
    over by an accept loop, a call costs no thread start and no extra wake-up, which is what a
    call's latency is made of on a busy machine."""

    request_queue_size = 512  # the stdlib's 5 drops SYNs when an agent opens many calls at once
    min_idle = 4

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.idle, self.lock, self.stopped = 0, threading.Lock(), threading.Event()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        for _ in range(self.min_idle):
            self.spawn()
        self.stopped.wait()

    def shutdown(self) -> None:
        self.stopped.set()
        try:
            self.socket.shutdown(socket.SHUT_RDWR)  # wakes the workers blocked in accept()
        except OSError:
            pass

    def spawn(self) -> None:
        threading.Thread(target=self.worker, daemon=True).start()

    def worker(self) -> None:
        while not self.stopped.is_set():
            with self.lock:
                self.idle += 1
            try:
                conn, addr = self.socket.accept()
            except OSError:
                return
            finally:
                with self.lock:
                    self.idle -= 1
                    grow = self.idle == 0 and not self.stopped.is_set()
            if grow:
                self.spawn()
            try:
                self.finish_request(conn, addr)
            except Exception:
                self.handle_error(conn, addr)
            finally:
                self.shutdown_request(conn)


def serve(socket_path: str, host: str, port: int) -> Server:
    handler = type("BoundHandler", (Handler,), {"socket_path": socket_path})
    server = Server((host, port), handler)
    return server


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
