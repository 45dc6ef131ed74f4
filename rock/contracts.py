"""The trajectory contract: `Chunk`, `ToolResult` and `Trajectory` (ARCHITECTURE "Chunk", "trajectory").

One module, written by the gateway (chunks), returned by the SDK (`Sandbox.trajectory()`), and read by
roll (evaluation, synthesis, training). It lives in rock because rock is the lowest layer the others
import; it needs only pydantic. Tests: `.venv/bin/pytest tests/gateway/test_chunks.py tests/roll/test_contracts.py`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    type: str = "function"
    function: dict[str, Any]  # {"name": str, "arguments": str (JSON text as the model wrote it)}


class ChunkResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = ""
    tool_calls: list[ToolCall] = []


class Chunk(BaseModel):
    """One model call as the policy saw and sampled it: the unit of IPA."""

    model_config = ConfigDict(extra="forbid")
    trajectory_id: str
    sandbox_id: str
    index: int  # order of completion within (sandbox, trajectory)
    prompt_token_ids: list[int] | None = None
    response_token_ids: list[int] | None = None
    response_logprobs: list[float] | None = None  # of each sampled token, under the sampling policy
    policy_version: int | None = None  # the upstream's top-level `policy_version`, when it sends one
    messages: list[dict[str, Any]] | None = None  # the request's messages (chat) ...
    prompt: str | list | None = None  # ... or its prompt (completions)
    tools: list[dict[str, Any]] | None = None
    response: ChunkResponse = ChunkResponse()
    finish_reason: str | None = None  # "abort" when the sandbox went away mid-stream
    latency_s: float
    endpoint: Literal["chat.completions", "completions"] = "chat.completions"
    model: str | None = None
    error: str | None = None  # set when the call ended abnormally after recording started
    created_at: float


class ToolResult(BaseModel):
    """One tool call the agent made, and what became of it."""

    model_config = ConfigDict(extra="forbid")
    chunk_index: int | None = Field(None, description="index of the chunk whose response issued the call")
    call_id: str | None = None  # the tool call's id, when the model gave one
    tool: str  # the name the model asked for (may be unknown to the agent)
    parsed: bool  # whether the call's name and JSON arguments were understood
    ok: bool  # the call parsed and ran without error (for the shell: exit status 0)
    exit_code: int | None = None  # the shell command's exit status; None for other tools or no run
    error: str = ""  # why it failed: the parse problem, the tool's error, a timeout


Status = Literal[
    "resolved",  # every test passed
    "unresolved",  # the agent finished (or gave up) and a test failed
    "agent_timeout",
    "test_timeout",
    "agent_error",  # the agent crashed or exited non-zero for a reason of its own
    "model_error",  # the model endpoint failed (connection, 5xx after retries)
    "parse_error",  # the agent stopped on malformed model output
    "environment_error",  # the task's image could not be built, or its setup failed
]


class Trajectory(BaseModel):
    """One attempt at one task: its chunks in order, the tool calls, and the verdict of the task's tests."""

    model_config = ConfigDict(extra="forbid")
    trajectory_id: str
    task_id: str
    family: str
    split: str
    reward: float
    status: Status
    policy_versions: list[int] = []  # the distinct policy versions that sampled its chunks, in order
    chunks: list[Chunk] = []
    tool_results: list[ToolResult] = []
    sandbox_id: str | None = None
    agent: str = "iflow"  # iflow | oracle | noop
    group: int | None = None  # attempts at the same task in one RL iteration share a group
    seconds: float = 0.0
    error: str = ""  # one line on why, when the status is an error
    # Initialized resampling (roll/rollout/resample.py): chunks[:start_chunk] were given (the reference's prefix,
    # for an imitation term), chunks[start_chunk:] sampled by the policy from the state before chunk start_chunk.
    start_chunk: int = Field(0, ge=0)
    reference_id: str | None = None  # the trajectory whose prefix was given

    @property
    def resolved(self) -> bool:
        return self.status == "resolved"


def versions_of(chunks: list[Chunk]) -> list[int]:
    """The distinct policy versions of `chunks`, in order of first appearance."""
    seen: list[int] = []
    for c in chunks:
        if c.policy_version is not None and c.policy_version not in seen:
            seen.append(c.policy_version)
    return seen


def link_tool_results(chunks: list[Chunk], results: list[dict[str, Any]]) -> list[ToolResult]:
    """iflow's execution-info `tool_results` as ToolResults, each tied to the chunk that issued it.

    By the call's id where exactly one chunk's response holds it (some servers reuse ids such as
    `call_0` in every reply), else by the agent's `round`: the round-th chunk that completed. A chunk
    with an `error` is a call the agent never got a completion from (it retried or stopped), so it
    has no round of its own; `chunks` are one trajectory's, in order.
    """
    holders: dict[str, list[int]] = {}
    for c in chunks:
        for call in c.response.tool_calls:
            if call.id:
                holders.setdefault(call.id, []).append(c.index)
    completed = [c.index for c in chunks if c.error is None]
    out = []
    for r in results:
        index = None
        if r.get("call_id") and len(holders.get(r["call_id"], [])) == 1:
            index = holders[r["call_id"]][0]
        rnd = r.get("round")
        if index is None and isinstance(rnd, int) and not isinstance(rnd, bool) and 0 <= rnd < len(completed):
            index = completed[rnd]
        out.append(
            ToolResult(
                chunk_index=index,
                call_id=r.get("call_id"),
                tool=str(r.get("tool", "")),
                parsed=bool(r.get("parsed", True)),
                ok=bool(r.get("ok", False)),
                exit_code=r.get("exit_code"),
                error=str(r.get("error") or ""),
            )
        )
    return out
