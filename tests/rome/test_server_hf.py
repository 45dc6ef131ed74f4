"""`rome serve --engine hf` through the official openai client: .venv/bin/pytest tests/rome/test_server_hf.py"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import torch

USER = [{"role": "user", "content": "list the files in /tmp"}]


@pytest.fixture(scope="module")
def client(hf_server):
    return openai.OpenAI(base_url=hf_server.url, api_key="unused")


def test_models_and_health(hf_server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    health = httpx.get(hf_server.url.removesuffix("/v1") + "/healthz").json()
    assert health["status"] == "ok" and health["engine"] == "hf"


def test_chat_completion_with_token_ids_and_logprobs(client, tiny_dir):
    r = client.chat.completions.create(
        model="tiny",
        messages=USER,
        max_tokens=12,
        seed=7,
        logprobs=True,
        top_logprobs=3,
        extra_body={"return_token_ids": True},
    )
    body = r.model_dump()
    choice = body["choices"][0]
    assert choice["finish_reason"] in ("stop", "length")
    assert isinstance(body["policy_version"], int)
    assert len(choice["token_ids"]) == r.usage.completion_tokens == len(choice["logprobs"]["content"])
    assert all(len(e["top_logprobs"]) == 3 for e in choice["logprobs"]["content"])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    expected = tok.apply_chat_template(USER, tokenize=False, add_generation_prompt=True)
    assert body["prompt_token_ids"] == tok.encode(expected, add_special_tokens=False)
    # Same seed, same output: sampling is reproducible per request.
    again = client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=12, seed=7, extra_body={"return_token_ids": True}
    )
    assert again.model_dump()["choices"][0]["token_ids"] == choice["token_ids"]


def test_logprobs_equal_a_full_forward(client, tiny_dir):
    r = client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=16, seed=1, logprobs=True, extra_body={"return_token_ids": True}
    ).model_dump()
    prompt, out = r["prompt_token_ids"], r["choices"][0]["token_ids"]
    served = torch.tensor([e["logprob"] for e in r["choices"][0]["logprobs"]["content"]])
    assert (served - forward_logprobs(tiny_dir, prompt, out)).abs().mean() <= 1e-3


def forward_logprobs(model_dir, prompt: list[int], out: list[int]) -> torch.Tensor:
    """log p(out[i] | prompt + out[:i]) from one float32 transformers forward (what the trainer computes)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([prompt + out])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(out)[:, None])[:, 0]


def test_stream_carries_prompt_ids_first_and_token_ids_per_chunk(client):
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=USER,
            max_tokens=10,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"return_token_ids": True},
        )
    )
    dumps = [c.model_dump() for c in chunks]
    assert dumps[0]["prompt_token_ids"] and all("prompt_token_ids" not in d for d in dumps[1:])
    assert all(isinstance(d["policy_version"], int) for d in dumps)
    streamed = [t for d in dumps for c in d["choices"] for t in c.get("token_ids") or []]
    assert dumps[-1]["usage"]["completion_tokens"] == len(streamed)
    text = "".join(c["delta"]["content"] or "" for d in dumps for c in d["choices"])
    full = client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=10, seed=3, extra_body={"return_token_ids": True}
    ).model_dump()["choices"][0]
    assert streamed == full["token_ids"] and text == full["message"]["content"]


def test_completions_with_legacy_logprobs(client):
    r = client.completions.create(model="tiny", prompt="$ ls -la", max_tokens=5, logprobs=2, seed=0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == r.usage.completion_tokens == 5
    assert "".join(lp.tokens) == r.choices[0].text


def test_stop_string_cuts_the_text(client):
    r = client.completions.create(model="tiny", prompt="hello", max_tokens=40, seed=5)
    text = r.choices[0].text
    stop = text[3:5]
    cut = client.completions.create(model="tiny", prompt="hello", max_tokens=40, seed=5, stop=[stop])
    assert cut.choices[0].text == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "body,needle",
    [
        ({"messages": USER, "max_tokens": 9000}, "maximum context length is 8192"),
        ({"messages": [{"role": "user", "content": "word " * 9000}]}, "maximum context length is 8192"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
        ({"messages": []}, "messages"),
        ({"messages": USER, "n": 2}, "n"),
        ({"messages": USER, "temperature": -1}, "temperature"),
    ],
)
def test_bad_requests_are_openai_style_400s(hf_server, body, needle):
    r = httpx.post(hf_server.url + "/chat/completions", json={"model": "tiny", **body}, timeout=60)
    assert r.status_code == 400
    assert needle in r.json()["error"]["message"]


def test_openai_client_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError, match="8192"):
        client.chat.completions.create(model="tiny", messages=USER, max_tokens=100_000)


def test_admin_requires_the_token(hf_server, toolcall_dir):
    admin = hf_server.url.removesuffix("/v1") + "/admin/load_weights"
    body = {"path": str(toolcall_dir), "policy_version": 1}
    assert httpx.post(admin, json=body).status_code == 401
    assert httpx.post(admin, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = httpx.post(
        admin, json={"path": "/no/such/dir", "policy_version": 1}, headers={"Authorization": "Bearer admin-secret"}
    )
    assert r.status_code == 400 and "/no/such/dir" in r.json()["error"]["message"]


def test_reload_changes_outputs_and_tool_calls_are_parsed(hf_server, client, tiny_dir, toolcall_dir, tool_case):
    TOOL_PROMPT, TOOL_SPECS, TOOL_CALL = tool_case["messages"], tool_case["tools"], tool_case["call"]
    before = client.chat.completions.create(
        model="tiny", messages=TOOL_PROMPT, tools=TOOL_SPECS, max_tokens=40, temperature=0
    )
    assert not before.choices[0].message.tool_calls
    admin = hf_server.url.removesuffix("/v1") + "/admin/load_weights"
    r = httpx.post(
        admin,
        json={"path": str(toolcall_dir), "policy_version": 5},
        headers={"Authorization": "Bearer admin-secret"},
        timeout=120,
    )
    assert r.status_code == 200 and hf_server.policy_version == 5
    try:
        after = client.chat.completions.create(
            model="tiny", messages=TOOL_PROMPT, tools=TOOL_SPECS, max_tokens=60, temperature=0
        )
        assert after.model_dump()["policy_version"] == 5
        assert after.choices[0].finish_reason == "tool_calls"
        (call,) = after.choices[0].message.tool_calls
        assert call.function.name == TOOL_CALL["name"]
        assert json.loads(call.function.arguments) == TOOL_CALL["arguments"]
        chunks = list(
            client.chat.completions.create(
                model="tiny", messages=TOOL_PROMPT, tools=TOOL_SPECS, max_tokens=60, temperature=0, stream=True
            )
        )
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        streamed = [tc for d in deltas for tc in d.tool_calls or []]
        assert [(tc.function.name, json.loads(tc.function.arguments)) for tc in streamed] == [
            (TOOL_CALL["name"], TOOL_CALL["arguments"])
        ]
        assert "<tool_call>" not in "".join(d.content or "" for d in deltas)
    finally:
        hf_server.load_weights(tiny_dir, policy_version=6)
    assert hf_server.policy_version == 6


def test_missing_model_dir_is_one_line(tmp_path, capsys):
    from rome.cli import main

    assert main(["serve", "--model", str(tmp_path / "none"), "--engine", "hf"]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["serve", "--model", str(tmp_path / "empty"), "--engine", "hf"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "model dir not found" in err[0] and "missing config.json" in err[1]


def test_the_port_is_held_while_the_engine_loads(tiny_dir, monkeypatch):
    """Nothing else may take the server's port during start-up (vLLM opens ports of its own while it loads)."""
    import socket

    from rome.serving.server import start_server
    from rome.serving.service import ModelService

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start, outcome = ModelService.start, []

    async def start_and_try_the_port(self):
        with socket.socket() as other:
            try:
                other.bind(("127.0.0.1", port))
                outcome.append("another socket bound the server's port during start-up")
            except OSError:
                outcome.append("held")
        await start(self)

    monkeypatch.setattr(ModelService, "start", start_and_try_the_port)
    with start_server(tiny_dir, engine="hf", port=port) as handle:
        assert httpx.get(handle.url[: -len("/v1")] + "/healthz").status_code == 200
    assert outcome == ["held"]


def test_a_port_in_use_is_one_line(tiny_dir, capsys):
    import socket

    from rome.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--model", str(tiny_dir), "--engine", "hf", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot bind 127.0.0.1:{port}" in err[0] and "--port" in err[0], err


def test_an_engine_that_fails_to_start_is_a_rome_error(tiny_dir, monkeypatch):
    """uvicorn answers a failed lifespan with sys.exit: the caller gets a RomeError, not a SystemExit."""
    from rome.errors import RomeError
    from rome.serving.server import start_server
    from rome.serving.service import ModelService

    async def broken_start(self):
        raise RuntimeError("the engine would not load")

    monkeypatch.setattr(ModelService, "start", broken_start)
    with pytest.raises(RomeError, match="exited during start-up"):
        start_server(tiny_dir, engine="hf")
