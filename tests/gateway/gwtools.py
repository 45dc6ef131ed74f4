"""Helpers of the gateway tests: blocking clients as an agent inside a sandbox would use (urllib
only), an upstream that misbehaves, and the check that a chunk holds what the scripted model did.

Imported by tests/gateway/test_*.py; run them with `.venv/bin/pytest tests/gateway`.
"""

from __future__ import annotations

import json
import socket
import textwrap
import threading
import time
import urllib.error
import urllib.request

from iflow_cli.testing.scripted_server import render_prompt, token_logprob
from rock.contracts import Chunk


def post(base_url: str, path: str, body: dict | bytes, token: str, headers: dict | None = None, timeout=30):
    """(status, parsed JSON or raw bytes) of a POST, errors included."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", "Authorization": f"Bearer {token}", **(headers or {})}
    req = urllib.request.Request(base_url + path, data=data, headers=hdrs, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def stream_events(base_url: str, path: str, body: dict, token: str, headers: dict | None = None):
    """The parsed `data:` events of a streamed call and the number of reads they arrived in."""
    hdrs = {"Content-Type": "application/json", "Authorization": f"Bearer {token}", **(headers or {})}
    req = urllib.request.Request(base_url + path, data=json.dumps(dict(body, stream=True)).encode(), headers=hdrs)
    events, reads, buf = [], 0, b""
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        while part := resp.read1(65536):
            reads += 1
            buf += part
    for block in buf.decode().split("\n\n"):
        if block.startswith("data: ") and block != "data: [DONE]":
            events.append(json.loads(block[6:]))
    return events, reads, buf


def raw_socket_call(socket_path: str, request: bytes) -> bytes:
    """Send raw bytes to the gateway socket (as anything inside the sandbox could) and read the answer."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(socket_path)
        s.sendall(request)
        out = b""
        while data := s.recv(65536):
            out += data
    return out


MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say hi"}]


def expected_logprobs(ids: list[int]) -> list[float]:
    return [token_logprob(t, i) for i, t in enumerate(ids)]


def recorded(gw, sandbox_id: str, trajectory_id: str | None = None) -> list[Chunk]:
    """The gateway's record of a sandbox read as the contract's Chunks: every test that reads it back
    also checks that what the gateway wrote (plain dicts, for speed) is a valid `rock.contracts.Chunk`."""
    return [Chunk.model_validate(c) for c in gw.trajectory(sandbox_id, trajectory_id)]


def check_chunk(chunk: Chunk, messages: list[dict], text: str) -> None:
    """The chunk holds exactly what the scripted model saw and sampled."""
    assert chunk.prompt_token_ids == list(render_prompt(messages).encode())
    assert bytes(chunk.response_token_ids).decode() == text
    assert chunk.response_logprobs == expected_logprobs(chunk.response_token_ids)
    assert chunk.messages == messages
    assert chunk.response.text == text


class MisbehavingUpstream:
    """An upstream that answers every request with fixed raw bytes, optionally pausing midway
    (`pause_after` bytes, then `pause_s`): garbage replies and slow streams that ScriptedServer,
    which always speaks proper HTTP, cannot produce."""

    def __init__(self, raw: bytes, pause_after: int | None = None, pause_s: float = 0.0):
        self.raw, self.pause_after, self.pause_s = raw, pause_after, pause_s
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += conn.recv(65536)
            head, body = buf.split(b"\r\n\r\n", 1)
            length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
            while len(body) < length:
                body += conn.recv(65536)
            cut = self.pause_after if self.pause_after is not None else len(self.raw)
            try:
                conn.sendall(self.raw[:cut])
                time.sleep(self.pause_s)
                conn.sendall(self.raw[cut:])
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


def sse_reply(events: list[dict]) -> bytes:
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n" + body


# What an agent inside does: plain urllib against $OPENAI_BASE_URL with $OPENAI_API_KEY.
CLIENT = textwrap.dedent("""
    import json, os, sys, time, urllib.request, urllib.error
    body = json.loads(sys.argv[1])
    key = sys.argv[2] if len(sys.argv) > 2 else os.environ["OPENAI_API_KEY"]
    req = urllib.request.Request(os.environ["OPENAI_BASE_URL"] + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer " + key})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            pieces = []
            while part := resp.read1(65536):
                pieces.append([round(time.monotonic() - t0, 3), part.decode()])
            print(json.dumps({"status": resp.status, "pieces": pieces}))
    except urllib.error.HTTPError as e:
        print(json.dumps({"status": e.code, "pieces": [[0, e.read().decode()]]}))
""")
