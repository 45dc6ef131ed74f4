"""Chunk assembly from vLLM-shaped replies, and the chunk store: `.venv/bin/pytest tests/gateway/test_chunks.py`."""

from __future__ import annotations

import asyncio

from rock.gateway.chunks import Chunk, ChunkResponse, ChunkStore, ResponseAggregate
from rock.gateway.upstream import strip_reply, upstream_body


def test_streamed_tool_call_fragments_are_joined():
    agg = ResponseAggregate()
    frags = [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "bash", "arguments": '{"cmd": '}},
        {"index": 0, "function": {"arguments": '"ls"}'}},
        {"index": 1, "id": "call_2", "function": {"name": "read", "arguments": "{}"}},
    ]
    for f in frags:
        agg.add({"choices": [{"index": 0, "delta": {"tool_calls": [f]}, "token_ids": [7]}]})
    agg.add({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}], "policy_version": 3})
    calls = agg.response()["tool_calls"]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("call_1", "bash", '{"cmd": "ls"}'),
        ("call_2", "read", "{}"),
    ]
    assert agg.token_ids == [7, 7, 7] and agg.finish_reason == "tool_calls" and agg.policy_version == 3
    assert ChunkResponse(**agg.response()).tool_calls[1].type == "function"  # the recorded shape is the schema's


def test_completions_reply_with_per_choice_prompt_ids_and_other_choices_ignored():
    agg = ResponseAggregate()
    agg.add(
        {
            "model": "tiny",
            "choices": [
                {
                    "index": 0,
                    "text": "ab",
                    "prompt_token_ids": [1, 2],
                    "token_ids": [3, 4],
                    "logprobs": {"tokens": ["a", "b"], "token_logprobs": [-0.5, -0.25]},
                    "finish_reason": "length",
                },
                {"index": 1, "text": "zz", "token_ids": [9, 9], "finish_reason": "stop"},
            ],
        }
    )
    assert (agg.prompt_token_ids, agg.token_ids, agg.logprobs) == ([1, 2], [3, 4], [-0.5, -0.25])
    assert agg.response()["text"] == "ab" and agg.finish_reason == "length" and agg.model == "tiny"


def test_request_rewrite_and_strip_are_inverse_for_the_client():
    chat = {"messages": [], "logprobs": False}
    assert upstream_body(chat, chat=True) | {"messages": []} == {
        "messages": [],
        "logprobs": True,
        "return_token_ids": True,
    }
    assert upstream_body({"prompt": "x"}, chat=False)["logprobs"] == 1
    assert upstream_body({"prompt": "x", "logprobs": 5}, chat=False)["logprobs"] == 5
    reply = {"prompt_token_ids": [1], "choices": [{"token_ids": [2], "logprobs": {"content": []}}]}
    assert strip_reply(reply, chat) == {"choices": [{"logprobs": None}]}
    kept = {"prompt_token_ids": [1], "choices": [{"token_ids": [2], "logprobs": {"content": []}}]}
    assert strip_reply(dict(kept), {"logprobs": True, "return_token_ids": True}) == kept


def make_chunk(store: ChunkStore, sandbox: str, traj: str) -> Chunk:
    return Chunk(
        trajectory_id=traj, sandbox_id=sandbox, index=store.next_index(sandbox, traj), latency_s=0.1, created_at=0.0
    )


def test_store_indexes_per_trajectory_and_continues_after_reopen(tmp_path):
    store = ChunkStore(tmp_path)
    for traj in ("a", "b", "a"):
        store.append(make_chunk(store, "sbx", traj))
    reopened = ChunkStore(tmp_path)
    reopened.append(make_chunk(reopened, "sbx", "a"))
    assert [(c["trajectory_id"], c["index"]) for c in reopened.load("sbx")] == [("a", 0), ("b", 0), ("a", 1), ("a", 2)]


def test_subscription_filters_and_ends_on_close(tmp_path):
    async def run():
        store = ChunkStore(tmp_path)
        only_b = store.subscribe(trajectory_id="b")
        store.append(make_chunk(store, "sbx", "a"))
        store.append(make_chunk(store, "sbx", "b"))
        got = await only_b.get(1)
        store.close()
        rest = [c async for c in only_b]
        return got, rest

    got, rest = asyncio.run(run())
    assert got["trajectory_id"] == "b" and rest == []
