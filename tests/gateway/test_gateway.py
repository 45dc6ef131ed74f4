"""The gateway with a real upstream on loopback and the real ModelProxy in front (no Docker):
`.venv/bin/pytest tests/gateway/test_gateway.py`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gwtools import (
    MESSAGES,
    MisbehavingUpstream,
    check_chunk,
    expected_logprobs,
    post,
    raw_socket_call,
    recorded,
    sse_reply,
    stream_events,
)

from iflow_cli.testing.scripted_server import ScriptedServer, render_prompt
from rock.contracts import Chunk
from rock.gateway import GatewayError

# ---- the happy paths -------------------------------------------------------------------------


def test_chat_answer_is_forwarded_stripped_and_recorded(harness):
    with ScriptedServer(["hello there"]) as up:
        h = harness(up.url)
        att = h.attach("sbx1", trajectory_id="traj-1")
        status, reply = post(h.proxy(att), "/chat/completions", {"model": "m", "messages": MESSAGES}, att.token)
        assert status == 200, reply
        assert reply["choices"][0]["message"]["content"] == "hello there"
        # The gateway asked for the extras; the agent did not, so it does not see them.
        assert up.requests[0]["return_token_ids"] is True and up.requests[0]["logprobs"] is True
        assert "prompt_token_ids" not in reply and "token_ids" not in reply["choices"][0]
        assert reply["choices"][0]["logprobs"] is None
    [chunk] = recorded(h.gw, "sbx1")
    check_chunk(chunk, MESSAGES, "hello there")
    assert (chunk.trajectory_id, chunk.sandbox_id, chunk.index) == ("traj-1", "sbx1", 0)
    assert chunk.finish_reason == "stop" and chunk.policy_version is None and chunk.latency_s > 0


def test_extras_reach_a_client_that_asks_for_them(harness):
    with ScriptedServer(["abc"]) as up:
        h = harness(up.url)
        att = h.attach("sbx1")
        body = {"model": "m", "messages": MESSAGES, "logprobs": True, "return_token_ids": True}
        status, reply = post(h.proxy(att), "/chat/completions", body, att.token)
    assert status == 200
    assert reply["choices"][0]["token_ids"] == list(b"abc")
    assert [e["logprob"] for e in reply["choices"][0]["logprobs"]["content"]] == expected_logprobs(list(b"abc"))
    assert reply["prompt_token_ids"] == list(render_prompt(MESSAGES).encode())


def test_streaming_arrives_in_pieces_and_is_recorded_whole(harness):
    text = "a streamed answer, in several pieces"
    with ScriptedServer([text]) as up:
        h = harness(up.url)
        att = h.attach("sbx1")
        events, _, _ = stream_events(h.proxy(att), "/chat/completions", {"model": "m", "messages": MESSAGES}, att.token)
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == text
    assert len(events) >= 4 and all("token_ids" not in e["choices"][0] for e in events)
    [chunk] = recorded(h.gw, "sbx1")
    check_chunk(chunk, MESSAGES, text)
    assert chunk.finish_reason == "stop"


def test_streamed_pieces_are_relayed_as_they_arrive(harness):
    """A pause between upstream events is visible to the agent: the first piece came before it."""
    first = {"choices": [{"index": 0, "delta": {"content": "early "}, "token_ids": [1], "finish_reason": None}]}
    last = {"choices": [{"index": 0, "delta": {"content": "late"}, "token_ids": [2], "finish_reason": "stop"}]}
    raw = sse_reply([first, last])
    up = MisbehavingUpstream(raw, pause_after=raw.index(b"data: ", raw.index(b"early")), pause_s=1.0)
    h = harness(up.url)
    att = h.attach("sbx1")
    import urllib.request

    req = urllib.request.Request(
        h.proxy(att) + "/chat/completions",
        headers={"Authorization": f"Bearer {att.token}"},
        data=json.dumps({"messages": MESSAGES, "stream": True}).encode(),
    )
    started = time.monotonic()
    with urllib.request.urlopen(req, timeout=10) as resp:
        piece = resp.read1(65536)
        first_at = time.monotonic() - started
        rest = resp.read()
    up.close()
    assert b"early" in piece and b"late" not in piece and first_at < 0.8
    assert b"late" in rest and rest.endswith(b"data: [DONE]\n\n")
    assert recorded(h.gw, "sbx1")[0].response.text == "early late"


def test_tool_calls_are_recorded_streamed_and_whole(harness):
    call = {"content": None, "tool_calls": [{"name": "bash", "arguments": {"cmd": "ls -la"}}]}
    with ScriptedServer([call, call]) as up:
        h = harness(up.url)
        att = h.attach("sbx1")
        url = h.proxy(att)
        status, reply = post(url, "/chat/completions", {"messages": MESSAGES}, att.token)
        events, _, _ = stream_events(url, "/chat/completions", {"messages": MESSAGES}, att.token)
    assert status == 200 and reply["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "bash"
    assert any(e["choices"][0]["delta"].get("tool_calls") for e in events)
    whole, streamed = recorded(h.gw, "sbx1")
    for chunk in (whole, streamed):
        [tc] = chunk.response.tool_calls
        assert tc.function == {"name": "bash", "arguments": json.dumps({"cmd": "ls -la"})}
        assert chunk.finish_reason == "tool_calls"
        assert b"<tool_call>" in bytes(chunk.response_token_ids)
    assert [c.index for c in (whole, streamed)] == [0, 1]


def test_completions_and_models(harness):
    with ScriptedServer(["42"], model="tiny") as up:
        h = harness(up.url)
        att = h.attach("sbx1")
        url = h.proxy(att)
        status, reply = post(url, "/completions", {"model": "tiny", "prompt": "6*7="}, att.token)
        import urllib.request

        req = urllib.request.Request(url + "/models", headers={"Authorization": f"Bearer {att.token}"})
        models = json.loads(urllib.request.urlopen(req, timeout=10).read())
    assert status == 200 and reply["choices"][0]["text"] == "42" and reply["choices"][0]["logprobs"] is None
    assert models["data"][0]["id"] == "tiny"
    [chunk] = recorded(h.gw, "sbx1")
    assert chunk.endpoint == "completions" and chunk.prompt == "6*7=" and chunk.messages is None
    assert chunk.prompt_token_ids == list(b"6*7=") and chunk.response_token_ids == list(b"42")
    assert chunk.response_logprobs == expected_logprobs(list(b"42"))


def test_policy_version_and_trajectory_header(harness):
    reply = {
        "id": "x",
        "object": "chat.completion",
        "model": "rome",
        "policy_version": 7,
        "prompt_token_ids": [5, 6],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "v7"},
                "finish_reason": "stop",
                "token_ids": [9],
                "logprobs": {"content": [{"token": "v7", "logprob": -0.5}]},
            }
        ],
    }
    with ScriptedServer([{"status": 200, "body": reply}, "plain"]) as up:
        h = harness(up.url)
        att = h.attach("sbx1")
        url = h.proxy(att)
        post(url, "/chat/completions", {"messages": MESSAGES}, att.token, {"X-Trajectory-Id": "attempt-2"})
        post(url, "/chat/completions", {"messages": MESSAGES}, att.token)
    first, second = recorded(h.gw, "sbx1")
    assert (first.policy_version, first.trajectory_id, first.index) == (7, "attempt-2", 0)
    assert first.response_token_ids == [9] and first.response_logprobs == [-0.5]
    assert (second.policy_version, second.trajectory_id, second.index) == (None, "sbx1", 0)
    assert recorded(h.gw, "sbx1", trajectory_id="attempt-2") == [first]


# ---- authentication -------------------------------------------------------------------------


def test_token_works_only_from_its_own_sandbox_and_dies_with_it(harness):
    with ScriptedServer(["one", "two"]) as up:
        h = harness(up.url)
        a, b = h.attach("sbx-a"), h.attach("sbx-b")
        url_a = h.proxy(a)
        assert post(url_a, "/chat/completions", {"messages": MESSAGES}, a.token)[0] == 200
        status, err = post(url_a, "/chat/completions", {"messages": MESSAGES}, b.token)
        assert status == 401 and err["error"]["code"] == "unauthorized"
        assert post(url_a, "/chat/completions", {"messages": MESSAGES}, "")[0] == 401
        h.run(h.gw.detach("sbx-a"))
        status, err = post(url_a, "/chat/completions", {"messages": MESSAGES}, a.token)
        assert status == 502 and err["error"]["code"] == "gateway_unavailable"
        assert len(up.requests) == 1  # nothing unauthenticated reached the model
    assert len(recorded(h.gw, "sbx-a")) == 1  # detaching keeps the record


# ---- bad input ------------------------------------------------------------------------------


def test_malformed_json_and_unknown_routes_get_4xx_json(harness):
    with ScriptedServer([]) as up:
        h = harness(up.url)
        att = h.attach("sbx1")
        url = h.proxy(att)
        status, err = post(url, "/chat/completions", b"{not json", att.token)
        assert status == 400 and err["error"]["code"] == "invalid_json"
        status, err = post(url, "/chat/completions", b"[1, 2]", att.token)
        assert status == 400 and "object" in err["error"]["message"]
        status, err = post(url, "/embeddings", {"input": "x"}, att.token)
        assert status == 404 and "/v1/chat/completions" in err["error"]["message"]
        status, err = post(url.removesuffix("/v1"), "/admin/load_weights", {}, att.token)
        assert status == 404 and err["error"]["code"] == "not_found"
        assert up.requests == []
    # Raw garbage straight into the socket (as anything in the sandbox could send) gets a 400 too.
    out = raw_socket_call(att.socket_path, b"NONSENSE\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400") and b'"bad_request"' in out


def test_retries_on_5xx_then_passes_4xx_through(harness):
    script = [
        {"status": 503, "body": "busy"},
        {"status": 429, "body": "slow down"},
        "finally",
        {"status": 400, "body": "context too long"},
    ]
    with ScriptedServer(script) as up:
        h = harness(up.url, backoff_s=0.01)
        att = h.attach("sbx1")
        url = h.proxy(att)
        status, reply = post(url, "/chat/completions", {"messages": MESSAGES}, att.token)
        assert status == 200 and reply["choices"][0]["message"]["content"] == "finally"
        assert len(up.requests) == 3
        status, err = post(url, "/chat/completions", {"messages": MESSAGES}, att.token)
        assert status == 400 and err["error"]["message"] == "context too long"


def test_persistent_5xx_is_a_502_naming_the_attempts(harness):
    with ScriptedServer([{"status": 500, "body": "boom"}] * 3) as up:
        h = harness(up.url, backoff_s=0.01, retries=2)
        att = h.attach("sbx1")
        status, err = post(h.proxy(att), "/chat/completions", {"messages": MESSAGES, "stream": True}, att.token)
    assert status == 502 and "3 attempt(s)" in err["error"]["message"] and "boom" in err["error"]["message"]
    assert recorded(h.gw, "sbx1") == []


@pytest.mark.parametrize("stream", [False, True])
def test_garbage_upstream_is_a_502_quoting_it(harness, stream):
    up = MisbehavingUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 31\r\n\r\n<html>I am not a model</html>\n\n")
    h = harness(up.url)
    att = h.attach("sbx1")
    status, err = post(h.proxy(att), "/chat/completions", {"messages": MESSAGES, "stream": stream}, att.token)
    up.close()
    assert status == 502 and err["error"]["code"] == "bad_upstream_reply"
    assert "<html>I am not a model" in err["error"]["message"]


def test_slow_upstream_is_a_504_and_a_dead_one_a_502(harness):
    with ScriptedServer([{"content": "late", "delay": 2}]) as up:
        h = harness(up.url, read_timeout_s=0.3)
        att = h.attach("sbx1")
        status, err = post(h.proxy(att), "/chat/completions", {"messages": MESSAGES}, att.token)
        assert status == 504 and err["error"]["code"] == "upstream_timeout"
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    att = h.attach("sbx2", upstream=dead)
    started = time.monotonic()
    status, err = post(h.proxy(att), "/chat/completions", {"messages": MESSAGES}, att.token)
    assert status == 502 and err["error"]["code"] == "upstream_unreachable"
    assert time.monotonic() - started < 5  # bounded: 3 retries with backoff, not a hang


def test_detach_mid_stream_ends_the_stream_and_keeps_the_record(harness):
    first = {
        "choices": [
            {
                "index": 0,
                "delta": {"content": "part"},
                "token_ids": [1, 2],
                "finish_reason": None,
                "logprobs": {"content": [{"token": "p", "logprob": -1.0}, {"token": "t", "logprob": -2.0}]},
            }
        ]
    }
    raw = sse_reply([first, first])
    up = MisbehavingUpstream(raw, pause_after=raw.index(b"data: ", raw.index(b"part")), pause_s=30)
    h = harness(up.url)
    att = h.attach("sbx1")
    url = h.proxy(att)
    threading.Timer(0.5, lambda: h.run(h.gw.detach("sbx1"))).start()
    started = time.monotonic()
    events, _, buf = stream_events(url, "/chat/completions", {"messages": MESSAGES}, att.token)
    up.close()
    assert time.monotonic() - started < 10 and buf.endswith(b"data: [DONE]\n\n")
    assert [e["choices"][0]["delta"]["content"] for e in events] == ["part"]
    [chunk] = recorded(h.gw, "sbx1")
    assert chunk.response_token_ids == [1, 2] and chunk.response_logprobs == [-1.0, -2.0]
    assert chunk.finish_reason == "abort" and chunk.error == "sandbox detached mid-stream"


# ---- persistence, subscription, replay ------------------------------------------------------


def test_restart_keeps_chunks_tokens_and_sockets(harness):
    with ScriptedServer(["before", "after"]) as up:
        h = harness(up.url)
        att = h.attach("sbx1")
        url = h.proxy(att)
        assert post(url, "/chat/completions", {"messages": MESSAGES}, att.token)[0] == 200
        h.restart()
        assert h.gw.attachments() == ["sbx1"]
        status, reply = post(url, "/chat/completions", {"messages": MESSAGES}, att.token)
        assert status == 200 and reply["choices"][0]["message"]["content"] == "after"
    assert [(c.index, c.response.text) for c in recorded(h.gw, "sbx1")] == [(0, "before"), (1, "after")]


def test_subscription_delivers_new_chunks(harness):
    with ScriptedServer(["one", "two"]) as up:
        h = harness(up.url)
        a, b = h.attach("sbx-a"), h.attach("sbx-b")
        sub_all = h.gw.subscribe()
        sub_b = h.gw.subscribe(sandbox_id="sbx-b")
        post(h.proxy(a), "/chat/completions", {"messages": MESSAGES}, a.token)
        post(h.proxy(b), "/chat/completions", {"messages": MESSAGES}, b.token)
        got_all = [h.run(sub_all.get(5))["sandbox_id"] for _ in range(2)]
        got_b = h.run(sub_b.get(5))
    assert got_all == ["sbx-a", "sbx-b"] and got_b["sandbox_id"] == "sbx-b"
    assert Chunk.model_validate(got_b) == recorded(h.gw, "sbx-b")[0]
    h.loop.call_soon_threadsafe(sub_b.close)
    with pytest.raises(StopAsyncIteration):
        h.run(sub_b.get(5))


def test_replay_answers_from_the_record_without_an_upstream(harness):
    call = {"content": "let me look", "tool_calls": [{"name": "bash", "arguments": {"cmd": "ls"}}]}
    with ScriptedServer(["first answer", call]) as up:
        h = harness(up.url)
        att = h.attach("rec")
        url = h.proxy(att)
        post(url, "/chat/completions", {"messages": MESSAGES}, att.token)
        post(url, "/chat/completions", {"messages": MESSAGES}, att.token)
    record = h.gw.trajectory("rec")  # the gateway's own plain records, as it replays them
    h.gw.default_upstream = None  # the upstream is gone: replay must not need it
    rep = h.attach("rep", replay=record)
    url = h.proxy(rep)
    status, reply = post(url, "/chat/completions", {"messages": MESSAGES}, rep.token)
    assert status == 200 and reply["choices"][0]["message"]["content"] == "first answer"
    events, _, _ = stream_events(url, "/chat/completions", {"messages": MESSAGES}, rep.token)
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == "let me look"
    assert any(e["choices"][0]["delta"].get("tool_calls") for e in events)
    status, err = post(url, "/chat/completions", {"messages": MESSAGES}, rep.token)
    assert status == 410 and err["error"]["code"] == "replay_exhausted"
    keys = {"prompt_token_ids", "response_token_ids", "response_logprobs", "response", "finish_reason"}
    replayed = [c.model_dump(include=keys) for c in recorded(h.gw, "rep")]
    assert replayed == [c.model_dump(include=keys) for c in recorded(h.gw, "rec")]
    # By sandbox id, as rock's create body can name it: the same record, from the start.
    again = h.attach("rep2", replay="rec")
    status, reply = post(h.proxy(again), "/chat/completions", {"messages": MESSAGES}, again.token)
    assert status == 200 and reply["choices"][0]["message"]["content"] == "first answer"
    with pytest.raises(GatewayError):
        h.attach("rep3", replay="never-recorded")


def test_attach_refuses_without_upstream_and_is_idempotent(harness):
    h = harness(None)
    with pytest.raises(GatewayError):
        h.attach("sbx1")
    with pytest.raises(GatewayError):
        h.attach("sbx1", upstream="file:///etc/passwd")
    att = h.attach("sbx1", upstream="http://127.0.0.1:9/v1")
    assert h.attach("sbx1").token == att.token
    assert att.env["OPENAI_API_KEY"] == att.token and att.env["OPENAI_BASE_URL"] == "http://127.0.0.1:8765/v1"
    assert (att.socket_path.rsplit("/", 1)[0], "/run/rock", True) in att.mounts
    assert h.gw.attachment("sbx1") == att and h.gw.attachment("nope") is None


def test_reconcile_detaches_sandboxes_that_are_gone(harness):
    h = harness("http://127.0.0.1:9/v1")
    gone, kept = h.attach("gone"), h.attach("kept")
    h.restart()
    h.run(h.gw.reconcile({"kept"}))
    assert h.gw.attachments() == ["kept"] and h.gw.attachment("kept").token == kept.token
    assert not Path(gone.socket_path).exists() and Path(kept.socket_path).is_socket()


def test_32_sandboxes_at_once_each_get_and_record_their_own_answer(harness):
    n = 32
    with ScriptedServer([f"answer {i}" for i in range(n)]) as up:
        h = harness(up.url)
        atts = [h.attach(f"sbx{i}", trajectory_id=f"traj{i}") for i in range(n)]
        urls = [h.proxy(a) for a in atts]

        def call(i: int):
            msgs = [{"role": "user", "content": f"I am sandbox {i}"}]
            return post(urls[i], "/chat/completions", {"messages": msgs, "stream": i % 2 == 0}, atts[i].token)

        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(call, range(n)))
    assert all(status == 200 for status, _ in results)
    answers = set()
    for i in range(n):
        [chunk] = recorded(h.gw, f"sbx{i}")
        assert chunk.trajectory_id == f"traj{i}"
        assert bytes(chunk.prompt_token_ids).decode() == render_prompt(
            [{"role": "user", "content": f"I am sandbox {i}"}]
        )
        answers.add(chunk.response.text)
    assert answers == {f"answer {i}" for i in range(n)}
