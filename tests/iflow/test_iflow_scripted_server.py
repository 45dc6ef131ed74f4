"""pytest tests/iflow/test_iflow_scripted_server.py — the scripted OpenAI-compatible backend."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from iflow_cli.testing.scripted_server import ScriptedServer, token_logprob


def post(url: str, body: dict, key: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def sse_chunks(raw: bytes) -> list[dict]:
    lines = [ln[6:] for ln in raw.decode().split("\n") if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "return_token_ids": True}


def test_text_with_token_ids_and_logprobs():
    with ScriptedServer(["héllo"]) as s:
        status, raw = post(s.url + "/chat/completions", CHAT)
        out = json.loads(raw)
        assert status == 200 and s.requests == [CHAT]
    choice = out["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "héllo"}
    assert bytes(choice["token_ids"]) == "héllo".encode()
    assert "user\nhi" in bytes(out["prompt_token_ids"]).decode()
    lps = [e["logprob"] for e in choice["logprobs"]["content"]]
    assert lps == [token_logprob(t, i) for i, t in enumerate(choice["token_ids"])]
    assert out["usage"] == {
        "prompt_tokens": len(out["prompt_token_ids"]),
        "completion_tokens": 6,
        "total_tokens": len(out["prompt_token_ids"]) + 6,
    }


def test_tool_calls_and_errors_then_exhausted():
    script = [
        {"content": None, "tool_calls": [{"name": "read_file", "arguments": {"path": "a"}}]},
        {"status": 500, "body": "boom"},
    ]
    with ScriptedServer(script) as s:
        _, raw = post(s.url + "/chat/completions", {"messages": []})
        call = json.loads(raw)["choices"][0]
        assert call["finish_reason"] == "tool_calls"
        assert call["message"]["tool_calls"][0]["function"] == {"name": "read_file", "arguments": '{"path": "a"}'}
        status, raw = post(s.url + "/chat/completions", {"messages": []})
        assert status == 500 and json.loads(raw)["error"]["message"] == "boom"
        status, raw = post(s.url + "/chat/completions", {"messages": []})
        assert status == 410 and "script exhausted" in json.loads(raw)["error"]["message"]


def test_stream_reassembles_text_and_ids():
    text = "streamed in several pieces"
    with ScriptedServer([{"content": text, "tool_calls": [{"name": "glob", "arguments": {"pattern": "*"}}]}]) as s:
        status, raw = post(s.url + "/chat/completions", {**CHAT, "stream": True})
    chunks = sse_chunks(raw)
    assert status == 200 and "prompt_token_ids" in chunks[0] and all("prompt_token_ids" not in c for c in chunks[1:])
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content == text and sum(1 for c in chunks if c["choices"][0]["delta"].get("content")) >= 3
    ids = [t for c in chunks for t in c["choices"][0]["token_ids"]]
    lps = [e["logprob"] for c in chunks for e in c["choices"][0]["logprobs"]["content"]]
    assert bytes(ids).decode().startswith(text) and '"name": "glob"' in bytes(ids).decode()
    assert lps == [token_logprob(t, i) for i, t in enumerate(ids)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls" and chunks[-1]["usage"][
        "completion_tokens"
    ] == len(ids)


def test_completions_models_and_api_key():
    with ScriptedServer(["done"], api_key="sekrit") as s:
        assert post(s.url + "/completions", {"prompt": "x"})[0] == 401
        _, raw = post(s.url + "/completions", {"prompt": "ab", "return_token_ids": True, "logprobs": 1}, key="sekrit")
        out = json.loads(raw)
        req = urllib.request.Request(s.url + "/models", headers={"Authorization": "Bearer sekrit"})
        models = json.loads(urllib.request.urlopen(req, timeout=5).read())
    assert out["choices"][0]["text"] == "done" and out["prompt_token_ids"] == [97, 98]
    assert len(out["choices"][0]["logprobs"]["token_logprobs"]) == 4
    assert models["data"][0]["id"] == "scripted"


def test_openai_client_stream_with_tool_call():
    openai = pytest.importorskip("openai")
    with ScriptedServer([{"tool_calls": [{"name": "replace", "arguments": "{not json"}]}]) as s:
        client = openai.OpenAI(base_url=s.url, api_key="x", max_retries=0)
        stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        calls = [tc for ch in stream if ch.choices for tc in ch.choices[0].delta.tool_calls or []]
    assert calls[0].function.name == "replace" and calls[0].function.arguments == "{not json"


def test_command_line(tmp_path):
    script = tmp_path / "s.json"
    script.write_text(json.dumps({"responses": ["from the cli"]}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "iflow_cli.testing.scripted_server", "--script", str(script), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().split()[-1]
        _, raw = post(url + "/chat/completions", {"messages": [{"role": "user", "content": "q"}]})
        assert json.loads(raw)["choices"][0]["message"]["content"] == "from the cli"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
