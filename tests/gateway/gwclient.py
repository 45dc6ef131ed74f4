"""Blocking HTTP clients for the gateway tests, as an agent inside a sandbox would call (urllib only).

Imported by tests/gateway/test_*.py; run them with `.venv/bin/pytest tests/gateway`.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request


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
