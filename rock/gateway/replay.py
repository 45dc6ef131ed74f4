"""Replay: answer the k-th call of a sandbox with the k-th recorded chunk instead of asking the
upstream, so a re-run of a recorded trajectory is deterministic. The replies carry the recorded
token ids and logprobs, so the re-run records the same chunks (with the new run's messages).
Tests: `.venv/bin/pytest tests/gateway/test_gateway.py -k replay`.
"""

from __future__ import annotations

import time
from typing import Any


def message(chunk: dict[str, Any]) -> dict[str, Any]:
    response = chunk.get("response") or {}
    msg: dict[str, Any] = {"role": "assistant", "content": response.get("text") or None}
    calls = response.get("tool_calls") or []
    if calls:
        msg["tool_calls"] = [
            {"id": c.get("id") or f"call_{i}", "type": c.get("type", "function"), "function": c["function"]}
            for i, c in enumerate(calls)
        ]
    return msg


def logprobs(chunk: dict[str, Any], chat: bool) -> dict[str, Any] | None:
    lps = chunk.get("response_logprobs")
    if lps is None:
        return None
    if chat:
        return {"content": [{"token": "", "logprob": lp, "bytes": None, "top_logprobs": []} for lp in lps]}
    return {"tokens": [], "token_logprobs": list(lps), "top_logprobs": None, "text_offset": []}


def reply(chunk: dict[str, Any], chat: bool) -> dict[str, Any]:
    """A whole completion reply carrying everything the chunk recorded."""
    choice: dict[str, Any] = {
        "index": 0,
        "finish_reason": chunk.get("finish_reason") or "stop",
        "logprobs": logprobs(chunk, chat),
        "token_ids": chunk.get("response_token_ids"),
    }
    if chat:
        choice["message"] = message(chunk)
    else:
        choice["text"] = (chunk.get("response") or {}).get("text", "")
    return {
        "id": f"replay-{chunk.get('trajectory_id')}-{chunk.get('index')}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": chunk.get("model") or "replay",
        "choices": [choice],
        "prompt_token_ids": chunk.get("prompt_token_ids"),
        "policy_version": chunk.get("policy_version"),
    }


def events(chunk: dict[str, Any], chat: bool) -> list[dict[str, Any]]:
    """The same reply as stream events: content (with all token ids and logprobs), tool calls, finish."""
    whole = reply(chunk, chat)
    base = {k: whole[k] for k in ("id", "created", "model", "policy_version")}
    base["object"] = "chat.completion.chunk" if chat else "text_completion"
    first = dict(whole["choices"][0], finish_reason=None)
    if chat:
        msg = first.pop("message")
        first["delta"] = {"role": "assistant", "content": msg["content"] or ""}
        calls = [dict(c, index=i) for i, c in enumerate(msg.get("tool_calls", []))]
    else:
        calls = []
    out = [dict(base, choices=[first], prompt_token_ids=whole["prompt_token_ids"])]
    if calls:
        out.append(dict(base, choices=[{"index": 0, "delta": {"tool_calls": calls}, "finish_reason": None}]))
    finish_delta = {"delta": {}} if chat else {"text": ""}
    out.append(dict(base, choices=[dict(index=0, finish_reason=whole["choices"][0]["finish_reason"], **finish_delta)]))
    return out
