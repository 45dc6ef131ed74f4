"""HTTP/1.1 on both sides of the gateway: the agent's connection (through the ModelProxy's relay)
and the pooled connections to the upstream. `.venv/bin/pytest tests/gateway/test_http.py`.
"""

from __future__ import annotations

import array
import asyncio
import http.client
import json
import os
import socket
import time
from urllib.parse import urlsplit

import pytest
from gwtools import MESSAGES, post, raw_socket_call, recorded

from iflow_cli.testing.scripted_server import ScriptedServer
from rock.gateway.client import BrokenReply, ConnectFailed, ReadTimeout, UpstreamPool


def connect(base_url: str) -> http.client.HTTPConnection:
    u = urlsplit(base_url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=30)


def test_one_agent_connection_carries_several_calls_whole_and_streamed(harness):
    with ScriptedServer(["one", "two", "three"]) as up:
        h = harness(up.url)
        att = h.attach("sbx1")
        conn = connect(h.proxy(att))
        headers = {"Authorization": f"Bearer {att.token}", "Content-Type": "application/json"}
        got, socks = [], set()
        for stream in (False, True, False):
            conn.request("POST", "/v1/chat/completions", json.dumps({"messages": MESSAGES, "stream": stream}), headers)
            resp = conn.getresponse()
            body = resp.read()  # a streamed answer is chunked, so its end is known without closing
            assert resp.status == 200 and not resp.will_close
            socks.add(id(conn.sock))
            if stream:
                events = [json.loads(b[6:]) for b in body.decode().split("\n\n") if b.startswith("data: {")]
                got.append("".join(e["choices"][0]["delta"].get("content") or "" for e in events))
            else:
                got.append(json.loads(body)["choices"][0]["message"]["content"])
        conn.close()
    assert got == ["one", "two", "three"] and len(socks) == 1
    assert [c.response.text for c in recorded(h.gw, "sbx1")] == got


def test_connection_close_and_http10_are_honoured(harness):
    with ScriptedServer(["a", "b"]) as up:
        h = harness(up.url)
        att = h.attach("sbx1")
        conn = connect(h.proxy(att))
        conn.request("POST", "/v1/chat/completions", json.dumps({"messages": MESSAGES}),
                     {"Authorization": f"Bearer {att.token}", "Connection": "close"})  # fmt: skip
        resp = conn.getresponse()
        assert resp.status == 200 and resp.will_close and json.loads(resp.read())["choices"]
        port = urlsplit(h.proxy(att)).port
        body = json.dumps({"messages": MESSAGES, "stream": True}).encode()
        with socket.create_connection(("127.0.0.1", port)) as s:
            head = f"POST /v1/chat/completions HTTP/1.0\r\nAuthorization: Bearer {att.token}\r\n"
            s.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            out = b""
            while data := s.recv(65536):  # HTTP/1.0: the stream ends with the connection, unchunked
                out += data
    assert out.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding" not in out and out.endswith(b"data: [DONE]\n\n")


def test_chunked_request_body_with_expect_100_continue(harness):
    with ScriptedServer(["fine"]) as up:
        h = harness(up.url)
        att = h.attach("sbx1")
        port = urlsplit(h.proxy(att)).port
        body = json.dumps({"messages": MESSAGES}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nExpect: 100-continue\r\n"
                + f"Authorization: Bearer {att.token}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            )
            assert s.recv(65536).startswith(b"HTTP/1.1 100 Continue")
            half = len(body) // 2
            for part in (body[:half], body[half:]):
                s.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            s.sendall(b"0\r\n\r\n")
            out = b""
            while data := s.recv(65536):
                out += data
    head, reply = out.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and json.loads(reply)["choices"][0]["message"]["content"] == "fine"
    assert up.requests[0]["messages"] == MESSAGES


def test_malformed_chunked_body_is_a_400(harness):
    with ScriptedServer([]) as up:
        h = harness(up.url)
        att = h.attach("sbx1")
        port = urlsplit(h.proxy(att)).port
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            out = s.recv(65536)
    assert out.startswith(b"HTTP/1.1 400") and b"chunk size" in out


# ---- the upstream pool, against a small asyncio server that counts its connections -------------


class CountingUpstream:
    """Answers each request with `reply`; `close_after` requests per connection, then hangs up."""

    def __init__(self, reply: bytes, close_after: int | None = None, delay: float = 0.0):
        self.reply, self.close_after, self.delay = reply, close_after, delay
        self.connections = 0
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0
                )
                await reader.readexactly(length)
                self.requests += 1
                await asyncio.sleep(self.delay)
                writer.write(self.reply)
                await writer.drain()
                served += 1
                if self.close_after is not None and served >= self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/x"

    async def __aexit__(self, *exc) -> None:
        self.server.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"


async def call(pool: UpstreamPool, url: str) -> bytes:
    resp = await pool.request("POST", url, b"{}", {"content-type": "application/json"})
    try:
        return await resp.read()
    finally:
        resp.release()


def test_pool_reuses_connections_and_replaces_one_the_upstream_closed():
    async def run():
        pool = UpstreamPool(8, 2, 2)
        up = CountingUpstream(OK)
        async with up as url:
            assert [await call(pool, url) for _ in range(5)] == [b"ok"] * 5
            assert up.connections == 1
        closing = CountingUpstream(OK, close_after=1)  # says keep-alive, hangs up after every answer
        async with closing as url:
            for _ in range(4):
                assert await call(pool, url) == b"ok"
                await asyncio.sleep(0.05)  # the FIN arrives: the pool must not hand that connection out
            assert closing.connections == 4 and closing.requests == 4
        chunked = CountingUpstream(CHUNKED)
        async with chunked as url:
            assert [await call(pool, url) for _ in range(3)] == [b"abcde"] * 3 and chunked.connections == 1
        await pool.close()

    asyncio.run(run())


def test_pool_types_its_failures():
    async def run():
        pool = UpstreamPool(8, 1, 0.3)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1/x"
        with pytest.raises(ConnectFailed):
            await call(pool, dead)
        async with CountingUpstream(OK, delay=2) as url:
            with pytest.raises(ReadTimeout):
                await call(pool, url)
        async with CountingUpstream(b"SSH-2.0-OpenSSH\r\n\r\n") as url:
            with pytest.raises(BrokenReply, match="SSH-2.0"):
                await call(pool, url)
        async with CountingUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", close_after=1) as url:
            with pytest.raises(BrokenReply):
                await call(pool, url)
        assert pool.slots._value == 8  # every failure gave its slot back

    asyncio.run(run())


# ---- what the sandbox may pass over its socket ------------------------------------------------


def pass_fds(socket_path: str, fds: list[int]) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(socket_path)
        s.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        time.sleep(0.2)


def test_descriptors_other_than_inet_stream_sockets_are_closed_unread(harness, tmp_path):
    with ScriptedServer(["still fine"]) as up:
        h = harness(up.url)
        att = h.attach("sbx1")
        secret = tmp_path / "file"
        secret.write_text("GET /v1/models HTTP/1.1\r\n\r\n")
        r, w = os.pipe()
        a, b = socket.socketpair()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with open(secret, "rb") as f, a, b, udp:
            b.sendall(f"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer {att.token}\r\n\r\n".encode())
            pass_fds(att.socket_path, [f.fileno(), r, a.fileno(), udp.fileno()])
            # A request waits on the unix socket, but no answer came: the gateway did not serve it.
            os.set_blocking(r, False)
            with pytest.raises(BlockingIOError):
                os.read(r, 1)
            b.setblocking(False)
            with pytest.raises(BlockingIOError):
                b.recv(1)
        os.close(r)
        os.close(w)
        status, reply = post(h.proxy(att), "/chat/completions", {"messages": MESSAGES}, att.token)
    assert status == 200 and reply["choices"][0]["message"]["content"] == "still fine"


def test_plain_http_over_the_unix_socket_is_served(harness):
    with ScriptedServer(["over unix"]) as up:
        h = harness(up.url)
        att = h.attach("sbx1")
        body = json.dumps({"messages": MESSAGES}).encode()
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {att.token}\r\n"
        out = raw_socket_call(att.socket_path, f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert out.startswith(b"HTTP/1.1 200") and b"over unix" in out


def test_connections_per_sandbox_are_capped(harness):
    with ScriptedServer(["after"]) as up:
        h = harness(up.url, max_agent_connections=2)
        att = h.attach("sbx1")
        port = urlsplit(h.proxy(att)).port
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        time.sleep(0.3)  # both handed over and waiting for a request
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            assert extra.recv(1) == b""  # closed on arrival
        for s in idle:
            s.close()
        time.sleep(0.3)
        status, reply = post(h.proxy(att), "/chat/completions", {"messages": MESSAGES}, att.token)
    assert status == 200 and reply["choices"][0]["message"]["content"] == "after"
