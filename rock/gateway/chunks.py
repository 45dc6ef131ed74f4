"""Chunks: one recorded model call each (`rock.contracts.Chunk`), built from upstream replies,
stored as JSON lines per sandbox under the gateway's state dir, and pushed to subscribers.

Tests: `.venv/bin/pytest tests/gateway/test_chunks.py`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson

from rock.contracts import Chunk, ChunkResponse, ToolCall

__all__ = ["Chunk", "ChunkResponse", "ChunkStore", "ResponseAggregate", "Subscription", "ToolCall"]


class ResponseAggregate:
    """Collects choice 0 of a reply, whole or streamed, into the fields of a Chunk.

    Only the first choice is recorded: an agent asks for one completion per call; with n>1 the
    other choices reach the client but not the record.
    """

    def __init__(self) -> None:
        self.prompt_token_ids: list[int] | None = None
        self.token_ids: list[int] | None = None
        self.logprobs: list[float] | None = None
        self.text: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.policy_version: int | None = None
        self.model: str | None = None

    def add(self, reply: dict[str, Any]) -> None:
        """Fold in a whole reply or one stream event (their choices carry `message` or `delta`)."""
        if isinstance(reply.get("policy_version"), int):
            self.policy_version = reply["policy_version"]
        self.model = reply.get("model", self.model)
        if isinstance(reply.get("prompt_token_ids"), list):
            self.prompt_token_ids = reply["prompt_token_ids"]
        for choice in reply.get("choices") or []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self.add_choice(choice)

    def add_choice(self, choice: dict[str, Any]) -> None:
        if isinstance(choice.get("prompt_token_ids"), list):  # vLLM's completions put it per choice
            self.prompt_token_ids = choice["prompt_token_ids"]
        if isinstance(choice.get("token_ids"), list):
            self.token_ids = (self.token_ids or []) + choice["token_ids"]
        lps = sampled_logprobs(choice.get("logprobs"))
        if lps is not None:
            self.logprobs = (self.logprobs or []) + lps
        part = choice.get("message") or choice.get("delta") or {}
        if isinstance(choice.get("text"), str):
            self.text.append(choice["text"])
        elif isinstance(part.get("content"), str):
            self.text.append(part["content"])
        for call in part.get("tool_calls") or []:
            self.add_tool_call(call)
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]

    def add_tool_call(self, call: dict[str, Any]) -> None:
        # Streamed tool calls arrive as fragments keyed by index; whole ones have no index.
        slot = self.tool_calls.setdefault(call.get("index", len(self.tool_calls)), {"function": {"arguments": ""}})
        if call.get("id"):
            slot["id"] = call["id"]
        if call.get("type"):
            slot["type"] = call["type"]
        fn = call.get("function") or {}
        if fn.get("name"):
            slot["function"]["name"] = fn["name"]
        slot["function"]["arguments"] += fn.get("arguments") or ""

    def response(self) -> dict[str, Any]:
        """The chunk's `response` (the shape of ChunkResponse) as plain data, ready to serialise."""
        calls = [{"id": None, "type": "function", **self.tool_calls[i]} for i in sorted(self.tool_calls)]
        return {"text": "".join(self.text), "tool_calls": calls}


def sampled_logprobs(logprobs: Any) -> list[float] | None:
    """Per-token logprobs of the sampled tokens: chat's `content[*].logprob` or completions' `token_logprobs`."""
    if not isinstance(logprobs, dict):
        return None
    if isinstance(logprobs.get("content"), list):
        return [float(t["logprob"]) for t in logprobs["content"] if isinstance(t, dict) and "logprob" in t]
    if isinstance(logprobs.get("token_logprobs"), list):
        return [float(x) for x in logprobs["token_logprobs"] if x is not None]
    return None


class Subscription:
    """New chunks as they are recorded: `async for chunk in sub`; ends after `close()` or gateway stop."""

    def __init__(self, hub: ChunkStore, sandbox_id: str | None, trajectory_id: str | None) -> None:
        self.hub, self.sandbox_id, self.trajectory_id = hub, sandbox_id, trajectory_id
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def wants(self, sandbox_id: str, trajectory_id: str) -> bool:
        return self.sandbox_id in (None, sandbox_id) and self.trajectory_id in (None, trajectory_id)

    def close(self) -> None:
        if self in self.hub.subscribers:
            self.hub.subscribers.remove(self)
            self.queue.put_nowait(None)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        chunk = await self.queue.get()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def get(self, timeout: float | None = None) -> dict[str, Any]:
        """The next chunk; raises StopAsyncIteration once closed, TimeoutError after `timeout`."""
        return await asyncio.wait_for(self.__anext__(), timeout)


class ChunkStore:
    """JSON lines per sandbox in `root`; appends are whole lines, so a crash loses at most the last call."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.counters: dict[tuple[str, str], int] = {}
        self.subscribers: list[Subscription] = []

    def path(self, sandbox_id: str) -> Path:
        return self.root / f"{sandbox_id}.jsonl"

    def load(self, sandbox_id: str) -> list[dict[str, Any]]:
        p = self.path(sandbox_id)
        if not p.exists():
            return []
        with p.open("rb") as f:
            return [orjson.loads(line) for line in f if line.strip()]

    def next_index(self, sandbox_id: str, trajectory_id: str) -> int:
        n = self.count(sandbox_id, trajectory_id)
        self.counters[(sandbox_id, trajectory_id)] = n + 1
        return n

    def count(self, sandbox_id: str, trajectory_id: str) -> int:
        """Chunks recorded for the trajectory in that sandbox (indexes 0..count-1), without reading them twice."""
        key = (sandbox_id, trajectory_id)
        if key not in self.counters:  # first ask since start: continue after what is on disk
            self.counters[key] = sum(1 for c in self.load(sandbox_id) if c["trajectory_id"] == trajectory_id)
        return self.counters[key]

    def append(self, chunk: Chunk | dict[str, Any]) -> None:
        """Write one chunk as one line (a single O_APPEND write) and hand it to its subscribers."""
        record = chunk.model_dump(mode="json") if isinstance(chunk, Chunk) else chunk
        fd = os.open(self.path(record["sandbox_id"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, orjson.dumps(record) + b"\n")
        finally:
            os.close(fd)
        for sub in self.subscribers:
            if sub.wants(record["sandbox_id"], record["trajectory_id"]):
                sub.queue.put_nowait(record)

    def subscribe(self, sandbox_id: str | None = None, trajectory_id: str | None = None) -> Subscription:
        sub = Subscription(self, sandbox_id, trajectory_id)
        self.subscribers.append(sub)
        return sub

    def close(self) -> None:
        for sub in list(self.subscribers):
            sub.close()
