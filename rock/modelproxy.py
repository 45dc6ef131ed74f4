"""python3 modelproxy.py --socket /run/rock/model.sock --listen 127.0.0.1:8765 [--daemon]

The in-sandbox ModelProxy: an OpenAI-compatible endpoint on the sandbox's own loopback whose
every connection is forwarded over the unix socket bind-mounted from the host, where rock's model
gateway authenticates, forwards and records the calls. Standard library only, because it is
mounted read-only into images that have nothing but a bare `python3`.

It forwards the connection itself, not its bytes: each accepted TCP connection of the agent is
passed to the gateway as a file descriptor (SCM_RIGHTS over the unix socket) and closed here, so
the gateway reads the agent's request and writes its answer on that very socket, and speaks
HTTP/1.1 with the agent (POST /v1/chat/completions streamed or not, POST /v1/completions,
GET /v1/models, keep-alive, JSON errors). A relay that copied the bytes cost the sandbox half a
millisecond of CPU per call, and a proxy that parsed HTTP more than that; this costs an accept
and a sendmsg. The unix connection is kept and re-opened when the gateway restarts; when the
gateway cannot be reached the agent gets a 502 JSON error from here.

With --daemon the program forks, the child serves and the parent exits 0 only once the port is
listening (1 with the reason otherwise), so `docker exec` of this command returns when the
proxy is ready.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import socket
import sys
import threading

MAX_HEAD = 64 * 1024  # what is read of a request that cannot be forwarded, to answer it
EXIT_CANNOT_LISTEN = 98  # EADDRINUSE's number: a proxy (maybe our own, surviving a manager restart) holds the port
PASS = b"F"  # the byte that carries each passed connection (a message must carry at least one)


def json_error(status: int, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message, "type": code}}).encode()
    head = f"HTTP/1.1 {status} Bad Gateway\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "Connection: close\r\n\r\n").encode() + body


class Server:
    """Accepts the agent's connections and hands each to the gateway. The interface of the stdlib's
    socketserver that callers use: `server_address`, `serve_forever()`, `shutdown()`, `server_close()`."""

    request_queue_size = 512  # an agent may open many calls at once

    def __init__(self, address: tuple[str, int], socket_path: str) -> None:
        self.socket_path = socket_path
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(address)
        self.socket.listen(self.request_queue_size)
        self.server_address = self.socket.getsockname()
        self.gateway: socket.socket | None = None
        self.stopping = False

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Serve until shutdown(); `poll_interval` is accepted for socketserver's signature and unused
        (shutdown wakes the blocking accept, so an idle proxy never wakes up)."""
        while not self.stopping:
            try:
                conn, _ = self.socket.accept()
            except OSError:
                if self.stopping:
                    return
                continue  # EMFILE, ECONNABORTED, ...: the next connect is another chance
            why = self.hand_over(conn)
            if why:  # rare: answered on a thread of its own, so a slow agent cannot hold up the others
                threading.Thread(target=answer_failed, args=(conn, why), daemon=True).start()
            else:
                conn.close()  # the gateway holds it now

    def hand_over(self, conn: socket.socket) -> str | None:
        """Pass `conn` to the gateway (re-connecting once if the gateway restarted); the reason if it could not."""
        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [conn.fileno()]))]
        try:
            self.send(fds)
        except OSError:
            try:
                self.send(fds)  # the gateway restarted: once more on a new connection
            except OSError as e:
                return f"model gateway socket {self.socket_path}: {e.strerror or e}"
        return None

    def send(self, fds: list) -> None:
        try:
            if self.gateway is None:
                self.gateway = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.gateway.connect(self.socket_path)
            self.gateway.sendmsg([PASS], fds)
        except OSError:
            if self.gateway is not None:
                self.gateway.close()
                self.gateway = None
            raise

    def shutdown(self) -> None:
        self.stopping = True
        try:
            self.socket.shutdown(socket.SHUT_RDWR)  # wakes the blocking accept()
        except OSError:
            pass

    def server_close(self) -> None:
        self.socket.close()
        if self.gateway is not None:
            self.gateway.close()


def answer_failed(conn: socket.socket, why: str) -> None:
    """Read the agent's request head (so that closing does not reset the answer away), then a 502."""
    with conn:
        try:
            conn.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            conn.sendall(json_error(502, "gateway_unavailable", why))
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def serve(socket_path: str, host: str, port: int) -> Server:
    return Server((host, port), socket_path)


def daemonize_and_serve(socket_path: str, host: str, port: int) -> int:
    """Fork; the parent returns once the child listens, so the caller knows the proxy is ready."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as r:
            msg = r.read().decode()
        if msg == "ok":
            return 0
        print(f"modelproxy: {msg or 'exited before listening'}", file=sys.stderr)
        # The child's own exit status says why, so the manager need not read the message.
        status = os.waitpid(pid, 0)[1]
        return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1
    os.close(read_fd)
    os.setsid()
    try:
        server = serve(socket_path, host, port)
    except OSError as e:
        os.write(write_fd, f"cannot listen on {host}:{port}: {e}".encode())
        os._exit(EXIT_CANNOT_LISTEN)
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
