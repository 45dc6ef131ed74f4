"""The OpenAI service over an engine: chat template in, tool calls out, logprobs and token ids.

The FastAPI routes in server.py are one-line calls into `ModelService`. Responses follow OpenAI's
shapes plus vLLM's extras (`prompt_token_ids`, per-choice `token_ids`) and our `policy_version`,
which every response and stream chunk carries so the gateway can record which weights sampled it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rome.errors import ModelDirError, WeightSyncError
from rome.serving.engine import EngineKind, SamplingSpec, check_model_dir, check_same_architecture, make_engine
from rome.serving.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from rome.tokenizer.chat import TOOL_CALL_START, parse_tool_calls

ROLES = {"system", "user", "assistant", "tool"}


class ApiError(Exception):
    """A request the server refuses: sent as OpenAI-style JSON with this 4xx status."""

    def __init__(self, status: int, message: str, code: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.code, "code": self.code, "param": self.param}}


class WeightGate:
    """Requests share the weights; a weight load waits for them to finish and holds new ones back.

    So every response was sampled by exactly one policy version, the one it reports. After a
    weight update that failed half-way the weights are a mix of two versions: `broken` then says
    why, and requests get a 503 until a load succeeds.
    """

    def __init__(self):
        self.broken: str | None = None
        self._readers = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()
        self._writer = asyncio.Lock()

    @asynccontextmanager
    async def read(self):
        await self._open.wait()
        if self.broken:
            raise ApiError(503, self.broken, "weights_unavailable")
        self._readers += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._readers -= 1
            if self._readers == 0:
                self._idle.set()

    @asynccontextmanager
    async def write(self):
        async with self._writer:
            self._open.clear()
            try:
                await self._idle.wait()
                yield
            finally:
                self._open.set()


@dataclass
class Progress:
    """Generation so far: full text (stop strings cut off) and the tokens new since the last one."""

    text: str = ""
    safe_len: int = 0  # text[:safe_len] cannot change any more (no partial stop string / UTF-8)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    finish_reason: str | None = None


def _held_back(text: str, markers: list[str]) -> int:
    """How many trailing chars might still become one of the markers (so must not be sent yet)."""
    hold = 0
    for m in markers:
        for k in range(min(len(m) - 1, len(text)), 0, -1):
            if text.endswith(m[:k]):
                hold = max(hold, k)
                break
    return hold


def _flatten(content) -> str:
    # OpenAI allows content as a list of parts; the model only reads text.
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


class ModelService:
    def __init__(self, model_dir: str | Path, engine: EngineKind = "vllm"):
        from transformers import AutoTokenizer

        self.model_dir = check_model_dir(model_dir).resolve()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        except (OSError, ValueError) as e:
            raise ModelDirError(f"{self.model_dir}: tokenizer cannot be loaded ({str(e).splitlines()[0]})") from e
        if not self.tokenizer.chat_template:
            raise ModelDirError(f"{self.model_dir}: tokenizer has no chat template")
        self.engine = make_engine(engine, self.model_dir)
        self.engine_kind = engine
        self.model_name = self.model_dir.name
        self.policy_version = 0
        self.stop_token_ids = self._stop_token_ids()
        self.gate = WeightGate()

    def _stop_token_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        gen = self.model_dir / "generation_config.json"
        if gen.is_file():
            eos = json.loads(gen.read_text()).get("eos_token_id")
            ids.update(eos if isinstance(eos, list) else [eos])
        return sorted(i for i in ids if i is not None)

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()

    def models(self) -> dict:
        card = {
            "id": self.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "rome",
            "max_model_len": self.engine.max_model_len,
            "policy_version": self.policy_version,
        }
        return {"object": "list", "data": [card], "policy_version": self.policy_version}

    def health(self) -> dict:
        return {
            "status": "ok",
            "engine": self.engine_kind,
            "model": self.model_name,
            "policy_version": self.policy_version,
        }

    async def load_weights(self, path: str | Path, policy_version: int) -> dict:
        new = check_model_dir(path).resolve()
        check_same_architecture(self.model_dir, new)
        async with self.gate.write():
            start = time.perf_counter()
            with self._mixed_on_failure("loading " + str(new)):
                await self.engine.load_weights(new)
            self.policy_version = policy_version
        return {
            "status": "ok",
            "path": str(new),
            "policy_version": policy_version,
            "load_s": round(time.perf_counter() - start, 3),
        }

    async def update_weights_from_bytes(self, buckets: Iterable[bytes], policy_version: int) -> dict:
        """Load safetensors buckets of whole layers (see rome.serving.weights) as policy_version."""
        async with self.gate.write():
            start = time.perf_counter()
            handed = 0

            def counted() -> Iterator[bytes]:
                nonlocal handed
                for blob in buckets:
                    handed += 1
                    yield blob

            try:
                with self._mixed_on_failure(f"updating to policy version {policy_version}"):
                    tensors = await self.engine.update_weights_from_bytes(counted())
            except WeightSyncError:
                # A first bucket refused by its check was never applied: the weights are intact.
                if handed == 1:
                    self.gate.broken = None
                raise
            if handed == 0:
                raise WeightSyncError("no weight buckets were given")
            self.policy_version = policy_version
        return {
            "status": "ok",
            "tensors": tensors,
            "buckets": handed,
            "policy_version": policy_version,
            "load_s": round(time.perf_counter() - start, 3),
        }

    @contextmanager
    def _mixed_on_failure(self, what: str):
        try:
            yield
        except Exception as e:
            self.gate.broken = f"weights are unusable after a failed update ({what}: {e}); load weights again"
            raise
        self.gate.broken = None

    # -- shared generation ---------------------------------------------------------------

    def _spec(
        self, req: SamplingFields, prompt_ids: list[int], max_tokens: int | None, top_logprobs: int
    ) -> SamplingSpec:
        limit = self.engine.max_model_len
        if len(prompt_ids) >= limit:
            raise ApiError(
                400,
                f"This model's maximum context length is {limit} tokens; the prompt has {len(prompt_ids)} tokens.",
                param="messages",
            )
        if max_tokens is not None and len(prompt_ids) + max_tokens > limit:
            raise ApiError(
                400,
                f"This model's maximum context length is {limit} tokens; the request asks for "
                f"{len(prompt_ids)} prompt + {max_tokens} completion tokens.",
                param="max_tokens",
            )
        return SamplingSpec(
            max_tokens=max_tokens or limit - len(prompt_ids),
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            top_logprobs=top_logprobs,
            stop_token_ids=self.stop_token_ids,
        )

    async def _progress(self, prompt_ids: list[int], spec: SamplingSpec, stops: list[str]) -> AsyncIterator[Progress]:
        all_ids: list[int] = []
        stream = self.engine.generate(prompt_ids, spec)
        try:
            async for delta in stream:
                all_ids += delta.token_ids
                text = self.tokenizer.decode(all_ids, skip_special_tokens=True)
                finish = delta.finish_reason
                for s in stops:
                    if (i := text.find(s)) >= 0:
                        text, finish = text[:i], "stop"
                safe = len(text) if finish else len(text) - _held_back(text, stops)
                if not finish and text.endswith("\ufffd"):  # a multi-byte character still incomplete
                    safe = min(safe, len(text.rstrip("\ufffd")))
                yield Progress(text, safe, delta.token_ids, delta.logprobs, delta.top_logprobs, finish)
                if finish:
                    return
        finally:
            await stream.aclose()

    def _token_entry(self, token_id: int, logprob: float, top: dict[int, float]) -> dict:
        tok = self.tokenizer.decode([token_id])
        return {
            "token": tok,
            "logprob": logprob,
            "bytes": list(tok.encode()),
            "top_logprobs": [
                {"token": (t := self.tokenizer.decode([i])), "logprob": lp, "bytes": list(t.encode())}
                for i, lp in top.items()
            ],
        }

    def _envelope(self, kind: str, rid: str, **extra) -> dict:
        return {
            "id": rid,
            "object": kind,
            "created": int(time.time()),
            "model": self.model_name,
            "policy_version": self.policy_version,
            **extra,
        }

    # -- chat ------------------------------------------------------------------------------

    def _chat_prompt(self, req: ChatCompletionRequest) -> list[int]:
        messages = []
        for i, m in enumerate(req.messages):
            if m.get("role") not in ROLES:
                raise ApiError(400, f"messages[{i}].role must be one of {sorted(ROLES)}", param=f"messages[{i}].role")
            messages.append({**m, "content": _flatten(m.get("content"))})
        tools = req.tools if req.tool_choice != "none" else None
        try:
            text = self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # jinja errors: a message the template cannot render
            raise ApiError(400, f"messages cannot be rendered by the chat template: {e}", param="messages") from e
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _chat_setup(self, req: ChatCompletionRequest) -> tuple[list[int], SamplingSpec, bool]:
        prompt_ids = self._chat_prompt(req)
        top = req.top_logprobs or 0
        spec = self._spec(req, prompt_ids, req.max_completion_tokens or req.max_tokens, top)
        parse_tools = bool(req.tools) and req.tool_choice != "none"
        return prompt_ids, spec, parse_tools

    async def chat(self, req: ChatCompletionRequest) -> dict:
        prompt_ids, spec, parse_tools = self._chat_setup(req)
        async with self.gate.read():
            rid = f"chatcmpl-{uuid.uuid4().hex}"
            body = self._envelope("chat.completion", rid)
            ids, entries, last = [], [], Progress()
            async for p in self._progress(prompt_ids, spec, req.stop_strings()):
                ids += p.token_ids
                entries += [self._token_entry(*x) for x in zip(p.token_ids, p.logprobs, p.top_logprobs, strict=True)]
                last = p
        content, calls = parse_tool_calls(last.text) if parse_tools else (last.text, [])
        message = {"role": "assistant", "content": content, "tool_calls": calls or None}
        choice = {
            "index": 0,
            "message": message,
            "finish_reason": "tool_calls" if calls else last.finish_reason,
            "logprobs": {"content": entries} if req.logprobs else None,
        }
        if req.return_token_ids:
            choice["token_ids"] = ids
            body["prompt_token_ids"] = prompt_ids
        body["choices"] = [choice]
        body["usage"] = {
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": len(ids),
            "total_tokens": len(prompt_ids) + len(ids),
        }
        return body

    async def chat_stream(self, req: ChatCompletionRequest) -> AsyncIterator[dict]:
        """Validates before the first yield, so a bad request still gets a plain 4xx."""
        prompt_ids, spec, parse_tools = self._chat_setup(req)
        return self._chat_chunks(req, prompt_ids, spec, parse_tools)

    async def _chat_chunks(self, req, prompt_ids, spec, parse_tools) -> AsyncIterator[dict]:
        async with self.gate.read():
            rid = f"chatcmpl-{uuid.uuid4().hex}"
            first = self._envelope(
                "chat.completion.chunk",
                rid,
                choices=[
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                ],
            )
            if req.return_token_ids:
                first["prompt_token_ids"] = prompt_ids
                first["choices"][0]["token_ids"] = []
            yield first
            sent, n_tokens = 0, 0
            async for p in self._progress(prompt_ids, spec, req.stop_strings()):
                n_tokens += len(p.token_ids)
                # Content stops at a tool call: the call is sent whole, parsed, at the end.
                limit = p.safe_len
                if parse_tools:
                    cut = p.text.find(TOOL_CALL_START)
                    limit = cut if cut >= 0 else min(limit, len(p.text) - _held_back(p.text, [TOOL_CALL_START]))
                delta: dict = {"content": p.text[sent:limit] if limit > sent else ""}
                sent = max(sent, limit)
                finish = p.finish_reason
                if finish and parse_tools:
                    content, calls = parse_tool_calls(p.text)
                    if calls:
                        delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(calls)]
                        finish = "tool_calls"
                    else:
                        delta["content"] += p.text[sent:]
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                if req.logprobs:
                    choice["logprobs"] = {
                        "content": [
                            self._token_entry(*x) for x in zip(p.token_ids, p.logprobs, p.top_logprobs, strict=True)
                        ]
                    }
                if req.return_token_ids:
                    choice["token_ids"] = p.token_ids
                yield self._envelope("chat.completion.chunk", rid, choices=[choice])
            if req.stream_options and req.stream_options.include_usage:
                usage = {
                    "prompt_tokens": len(prompt_ids),
                    "completion_tokens": n_tokens,
                    "total_tokens": len(prompt_ids) + n_tokens,
                }
                yield self._envelope("chat.completion.chunk", rid, choices=[], usage=usage)

    # -- completions -----------------------------------------------------------------------

    def _completion_setup(self, req: CompletionRequest) -> tuple[list[int], SamplingSpec]:
        if isinstance(req.prompt, str):
            prompt_ids = self.tokenizer.encode(req.prompt, add_special_tokens=False)
        else:
            prompt_ids = list(req.prompt)
            vocab = len(self.tokenizer)
            if not prompt_ids or any(t < 0 or t >= vocab for t in prompt_ids):
                raise ApiError(400, f"prompt token ids must be a non-empty list of ids in [0, {vocab})", param="prompt")
        if not prompt_ids:
            raise ApiError(400, "prompt is empty", param="prompt")
        return prompt_ids, self._spec(req, prompt_ids, req.max_tokens or 16, req.logprobs or 0)

    def _legacy_logprobs(self, ids, logprobs, tops, offset: int) -> dict:
        tokens = [self.tokenizer.decode([i]) for i in ids]
        offsets, pos = [], offset
        for t in tokens:
            offsets.append(pos)
            pos += len(t)
        return {
            "tokens": tokens,
            "token_logprobs": logprobs,
            "text_offset": offsets,
            "top_logprobs": [{self.tokenizer.decode([i]): lp for i, lp in top.items()} for top in tops],
        }

    async def complete(self, req: CompletionRequest) -> dict:
        prompt_ids, spec = self._completion_setup(req)
        async with self.gate.read():
            body = self._envelope("text_completion", f"cmpl-{uuid.uuid4().hex}")
            ids, lps, tops, last = [], [], [], Progress()
            async for p in self._progress(prompt_ids, spec, req.stop_strings()):
                ids, lps, tops, last = ids + p.token_ids, lps + p.logprobs, tops + p.top_logprobs, p
        choice = {
            "index": 0,
            "text": last.text,
            "finish_reason": last.finish_reason,
            "logprobs": self._legacy_logprobs(ids, lps, tops, 0) if req.logprobs is not None else None,
        }
        if req.return_token_ids:
            choice["token_ids"] = ids
            body["prompt_token_ids"] = prompt_ids
        body["choices"] = [choice]
        body["usage"] = {
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": len(ids),
            "total_tokens": len(prompt_ids) + len(ids),
        }
        return body

    async def complete_stream(self, req: CompletionRequest) -> AsyncIterator[dict]:
        prompt_ids, spec = self._completion_setup(req)
        return self._completion_chunks(req, prompt_ids, spec)

    async def _completion_chunks(self, req, prompt_ids, spec) -> AsyncIterator[dict]:
        async with self.gate.read():
            rid, sent, first = f"cmpl-{uuid.uuid4().hex}", 0, True
            async for p in self._progress(prompt_ids, spec, req.stop_strings()):
                text = p.text[sent : p.safe_len] if p.safe_len > sent else ""
                choice = {
                    "index": 0,
                    "text": text,
                    "finish_reason": p.finish_reason,
                    "logprobs": self._legacy_logprobs(p.token_ids, p.logprobs, p.top_logprobs, sent)
                    if req.logprobs is not None
                    else None,
                }
                sent = max(sent, p.safe_len)
                chunk = self._envelope("text_completion", rid, choices=[choice])
                if req.return_token_ids:
                    choice["token_ids"] = p.token_ids
                    if first:
                        chunk["prompt_token_ids"] = prompt_ids
                first = False
                yield chunk
