"""Malformed, oversized and slow requests on a sandbox's model socket: each gets a 4xx or a close,
memory stays bounded, and another sandbox's calls keep being answered meanwhile.

    .venv/bin/pytest tests/gateway/test_malformed.py -q

The requests are sent raw to the gateway's unix socket, as anything inside a sandbox could. A
table names the classic request-smuggling and exhaustion cases; hypothesis then generates
framings around them (content lengths, transfer codings, chunk sizes, stray bytes, truncations).
"""

from __future__ import annotations

import re
import resource
import socket
import threading
import time

import pytest
from conftest import Harness
from gwtools import MESSAGES, post
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iflow_cli.testing.scripted_server import ScriptedServer
from rock.gateway import GatewayConfig

LIMITS = dict(max_head_bytes=8 << 10, max_body_bytes=256 << 10, head_timeout_s=0.5, body_timeout_s=0.5)
PATH = b"POST /v1/chat/completions HTTP/1.1\r\n"
BODY = b'{"messages": [{"role": "user", "content": "hi"}]}'


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    with ScriptedServer(lambda body: {"content": "ok"}) as up:
        h = Harness(tmp_path_factory.mktemp("gw"), up.url, GatewayConfig(**LIMITS))
        h.bad, h.good = h.attach("sbx-bad"), h.attach("sbx-good")
        h.good_url = h.proxy(h.good)
        yield h
        h.close()


def send(socket_path: str, data: bytes, pause_s: float = 0.0, more: bytes = b"", eof: bool = True) -> bytes:
    """Send raw bytes (optionally more after a pause), end our side, read the answer until close."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(socket_path)
        try:
            s.sendall(data)
            if pause_s:
                time.sleep(pause_s)
                s.sendall(more)
            if eof:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway may answer and close before it read everything
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
    return out


def statuses(answer: bytes) -> list[int]:
    """The status of every final response in `answer`, read one after another by their framing
    (interim 100 Continue left out); a response whose end is its connection's close ends the list."""
    out = []
    while answer.startswith(b"HTTP/1.1 "):
        head, sep, rest = answer.partition(b"\r\n\r\n")
        assert sep, f"unterminated response head: {answer[:200]!r}"
        code = int(head[9:12])
        length = re.search(rb"\r\ncontent-length: (\d+)", head, re.IGNORECASE)
        if code >= 200:
            out.append(code)
        if code < 200:
            answer = rest
        elif length is None:
            break
        else:
            answer = rest[int(length.group(1)) :]
    return out


def assert_4xx_or_close(answer: bytes) -> list[int]:
    codes = statuses(answer)
    assert answer == b"" or codes, f"neither an answer nor a close: {answer[:200]!r}"
    assert all(c < 500 for c in codes), f"server error on bad input: {answer[:300]!r}"
    return codes


def head(token: str, *lines: bytes) -> bytes:
    return PATH + f"Authorization: Bearer {token}\r\n".encode() + b"".join(x + b"\r\n" for x in lines) + b"\r\n"


N = b"%d" % len(BODY)
CHUNKED = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
# Each framing is one a lax parser reads as a valid call (and answers 200): the header it picks is valid.
CASES = {
    "two different content lengths": ((b"Content-Length: 3", b"Content-Length: " + N), BODY),
    "two equal content lengths": ((b"Content-Length: " + N, b"Content-Length: " + N), BODY),
    "content length and chunked": ((b"Content-Length: " + N, b"Transfer-Encoding: chunked"), CHUNKED),
    "xchunked": ((b"Transfer-Encoding: xchunked",), CHUNKED),
    "gzip then chunked": ((b"Transfer-Encoding: gzip, chunked",), CHUNKED),
    "chunked twice": ((b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), CHUNKED),
    "negative content length": ((b"Content-Length: -1",), BODY),
    "plus-signed content length": ((b"Content-Length: +" + N,), BODY),
    "obs-fold header": ((b"Content-Length: " + N, b"X-A: a", b" folded"), BODY),
    "space before colon": ((b"Content-Length : " + N,), BODY),
    "bare LF line ends": ((b"Content-Length: " + N + b"\nX-A: b",), BODY),
}


@pytest.mark.parametrize("name", list(CASES))
def test_smuggling_framings_get_a_400_from_the_parser(gw, name):
    lines, body = CASES[name]
    answer = send(gw.good.socket_path, head(gw.good.token, *lines) + body)
    assert statuses(answer) == [400] and b'"code":"bad_request"' in answer, answer[:300]


def test_the_same_call_framed_well_is_answered(gw):
    for lines, body in (((b"Content-Length: " + N,), BODY), ((b"Transfer-Encoding: chunked",), CHUNKED)):
        assert statuses(send(gw.good.socket_path, head(gw.good.token, *lines) + body)) == [200]


@pytest.mark.parametrize("size", [b"zz", b"-1", b"ffffffffffffffffffff", b"4 4"])
def test_bad_chunk_sizes_get_a_400(gw, size):
    body = size + b"\r\nabcd\r\n0\r\n\r\n"
    answer = send(gw.bad.socket_path, head(gw.bad.token, b"Transfer-Encoding: chunked") + body)
    assert statuses(answer) == [400]


def test_oversized_head_is_431(gw):
    answer = send(gw.bad.socket_path, head(gw.bad.token, b"X-Big: " + b"a" * (16 << 10)))
    assert statuses(answer) == [431]


def test_oversized_bodies_are_413_sized_or_chunked(gw):
    sized = head(gw.bad.token, b"Content-Length: %d" % (1 << 30))
    assert statuses(send(gw.bad.socket_path, sized)) == [413]  # refused before a byte of it is read
    chunk = b"%x\r\n%s\r\n" % (64 << 10, b"a" * (64 << 10))
    chunked = head(gw.bad.token, b"Transfer-Encoding: chunked") + chunk * 8
    assert statuses(send(gw.bad.socket_path, chunked)) == [413]


def test_slow_senders_are_cut_off_with_408(gw):
    t0 = time.monotonic()
    slow_head = send(gw.bad.socket_path, PATH + b"Authorization: Bear", pause_s=1.5, more=b"er x\r\n\r\n")
    slow_body = send(gw.bad.socket_path, head(gw.bad.token, b"Content-Length: 40") + b"{", pause_s=1.5, more=b"}")
    assert statuses(slow_head) == [408] and statuses(slow_body) == [408]
    assert time.monotonic() - t0 < 5


def test_valid_pipelined_requests_still_work(gw):
    one = head(gw.good.token, b"Content-Length: %d" % len(BODY)) + BODY
    assert statuses(send(gw.good.socket_path, one * 2)) == [200, 200]


# ---- generated ---------------------------------------------------------------------------------

_coding = st.sampled_from(
    [b"chunked", b"xchunked", b"gzip, chunked", b"chunked, gzip", b"identity", b"CHUNKED", b"chunked\x0b"]
)
_length = st.one_of(
    st.integers(-3, 1 << 40).map(lambda n: b"%d" % n), st.sampled_from([b"", b"abc", b"1e3", b"0x10", b"+5", b"5,5"])
)
_header = st.one_of(
    _coding.map(lambda c: b"Transfer-Encoding: " + c),
    _length.map(lambda n: b"Content-Length: " + n),
    st.sampled_from([b"Expect: 100-continue", b"Connection: close", b"Connection: Upgrade", b"Upgrade: h2c"]),
    st.binary(max_size=40).map(lambda b: b"X-Junk: " + b),
    st.binary(max_size=40),
)
_chunk = st.tuples(
    st.one_of(st.integers(0, 1 << 20).map(lambda n: b"%x" % n), st.binary(max_size=8)), st.binary(max_size=64)
).map(lambda t: t[0] + b"\r\n" + t[1] + b"\r\n")


@st.composite
def malformed(draw) -> bytes:
    method = draw(st.sampled_from([b"POST", b"GET", b"PUT", b"P\x00ST", b"", b"POST POST"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b"", b"HTTX/1.1"]))
    lines = draw(st.lists(_header, max_size=5))
    body = draw(st.one_of(st.just(BODY), st.binary(max_size=256), st.lists(_chunk, max_size=4).map(b"".join)))
    raw = method + b" /v1/chat/completions " + version + b"\r\nAuthorization: Bearer TOKEN\r\n"
    raw += b"".join(x + b"\r\n" for x in lines) + b"\r\n" + body
    cut = draw(st.integers(0, len(raw)))
    mode = draw(st.sampled_from(["whole", "truncate", "insert"]))
    if mode == "truncate":
        raw = raw[:cut]
    elif mode == "insert":
        raw = raw[:cut] + draw(st.binary(min_size=1, max_size=16)) + raw[cut:]
    return raw


@pytest.fixture(scope="module")
def good_calls(gw):
    """Another sandbox calling the gateway the whole time the generated requests arrive."""
    results, stop = [], threading.Event()

    def loop():
        while not stop.is_set():
            status, _ = post(gw.good_url, "/chat/completions", {"messages": MESSAGES}, gw.good.token)
            results.append(status)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield results
    stop.set()
    t.join(30)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=malformed())
def test_generated_requests_get_a_4xx_or_a_close(gw, good_calls, raw):
    assert_4xx_or_close(send(gw.bad.socket_path, raw.replace(b"TOKEN", gw.bad.token.encode())))


def test_memory_stays_bounded_and_the_other_sandbox_is_served(gw, good_calls):
    """32 agents at once each send a chunked body of 4 MiB (1/8 of it would be over the limit):
    128 MiB offered; the gateway holds at most 32 × 256 KiB of it."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, peak so far
    chunk = b"%x\r\n%s\r\n" % (256 << 10, b"a" * (256 << 10))
    raw = head(gw.bad.token, b"Transfer-Encoding: chunked") + chunk * 16
    answers: list[bytes] = []
    threads = [threading.Thread(target=lambda: answers.append(send(gw.bad.socket_path, raw))) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert len(answers) == 32 and all(statuses(a) in ([413], []) for a in answers)
    assert grown_mib < 64, f"peak memory grew by {grown_mib:.0f} MiB"
    time.sleep(0.5)
    assert good_calls and set(good_calls) == {200}, good_calls[-5:]
