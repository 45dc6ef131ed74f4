"""Agent-native rendering: `.venv/bin/pytest tests/roll/test_render.py` (`-m slow` adds the vLLM check).

What is trained is exactly the token sequence the served model sees and emits for that conversation: the
chat template's rendering of the recorded request (`chunk.messages` + `chunk.tools`, with the generation
prompt), as `rome serve` renders it for vLLM, and the reply in ROME's own tool-call format
(`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` then `<|im_end|>`), whatever model produced
the data. A URL teacher's chunk carries another tokenizer's ids (or none): we re-render from the messages.

Tool-call arguments are written the way rome serve writes them (`json.dumps` of the parsed object), in the
reply and in every earlier assistant turn of the history: that is what our own model's history holds after
rome's parser re-serialised its calls, so a trajectory of a teacher that spaces its JSON differently still
trains the exact text our agent will see. Arguments that are not a JSON object stay as written (a failed call).
"""

from __future__ import annotations

import json
import re
import weakref
from pathlib import Path
from typing import Any

from rock.contracts import Chunk, ChunkResponse, Trajectory
from roll.errors import RollError
from rome.tokenizer.chat import IM_END, TOOL_CALL_START, parse_tool_calls

ASSISTANT_HEAD = "<|im_start|>assistant\n"
TURN_END = re.compile(f"(?<={re.escape(IM_END)})")
CACHE_LIMIT = 200_000  # turns kept per tokenizer (system turns with tool schemas, history turns)
_turns: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class RenderError(RollError):
    """A chunk the chat template cannot render (names the trajectory and the chunk)."""

    def __init__(self, chunk: Chunk, message: str):
        super().__init__(f"trajectory {chunk.trajectory_id} chunk {chunk.index}: {message}")


def load_tokenizer(tokenizer: Any):
    """A tokenizer object as it is, or a ROME model dir's (rome init) loaded with transformers."""
    if not isinstance(tokenizer, str | Path):
        return tokenizer
    from roll.data.teacher import TeacherError
    from roll.data.teacher import load_tokenizer as load

    try:
        return load(tokenizer)
    except TeacherError as e:
        raise RollError(str(e)) from e


def flatten(content: Any) -> str:
    # As rome serve does: content may be a list of typed parts; the template reads text.
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def canonical_arguments(arguments: Any) -> str:
    """Arguments as rome's parser re-serialises them; text that is not a JSON object stays as it is."""
    if isinstance(arguments, dict):
        return json.dumps(arguments, ensure_ascii=False)
    try:
        obj = json.loads(arguments)
    except (TypeError, ValueError):
        return "" if arguments is None else str(arguments)
    return json.dumps(obj, ensure_ascii=False) if isinstance(obj, dict) else str(arguments)


def canonical_calls(calls: list[dict] | None) -> list[dict] | None:
    out = []
    for c in calls or []:
        fn = c.get("function") if isinstance(c.get("function"), dict) else c
        fn = {"name": str(fn.get("name", "")), "arguments": canonical_arguments(fn.get("arguments", {}))}
        out.append({"id": c.get("id"), "type": "function", "function": fn})
    return out or None


def canonical_messages(messages: list[dict]) -> list[dict]:
    """The request's messages with text content and rome-style arguments in assistant tool calls."""
    out = []
    for m in messages:
        m = {**m, "content": flatten(m.get("content"))}
        if m.get("role") == "assistant" and m.get("tool_calls"):
            m["tool_calls"] = canonical_calls(m["tool_calls"])
        out.append(m)
    return out


def response_message(response: ChunkResponse) -> dict:
    """The reply as rome serve's parser would have returned it: content before the first call (stripped,
    as `parse_tool_calls` cuts it), the calls with rome's arguments."""
    calls = canonical_calls([c.model_dump() for c in response.tool_calls])
    text = response.text or ""
    if calls and TOOL_CALL_START in text:  # a server that also left the raw blocks in the content
        text = parse_tool_calls(text)[0] or ""
    return {"role": "assistant", "content": text.strip() if calls else text, "tool_calls": calls}


def response_text(message: dict, tokenizer) -> str:
    """The template's own rendering of an assistant turn, without its header and closing newline: the
    tokens the model emits (ending with `<|im_end|>`)."""
    text = tokenizer.apply_chat_template([message], tokenize=False)
    return text[len(ASSISTANT_HEAD) :].removesuffix("\n") if text.startswith(ASSISTANT_HEAD) else text


def prompt_text(messages: list[dict], tools: list[dict] | None, tokenizer) -> str:
    return tokenizer.apply_chat_template(
        canonical_messages(messages), tools=tools or None, tokenize=False, add_generation_prompt=True
    )


def encode(text: str, tokenizer) -> list[int]:
    """`tokenizer.encode(text)`, one turn at a time with the turns cached.

    Encoding dominates rendering (5 ms for an iflow prompt of ~1270 tokens, 90 % of it the same system turn and
    history as the chunk before). `<|im_end|>` is an added token, which the tokenizer splits the text at before
    anything else, so cutting after it gives the same ids as encoding the whole text (tests compare both).
    """
    if IM_END not in getattr(tokenizer, "added_tokens_encoder", {}):
        return tokenizer.encode(text, add_special_tokens=False)
    cache = _turns.setdefault(tokenizer, {})
    if len(cache) > CACHE_LIMIT:
        cache.clear()
    out: list[int] = []
    for turn in TURN_END.split(text):
        if turn:
            if turn not in cache:
                cache[turn] = tokenizer.encode(turn, add_special_tokens=False)
            out += cache[turn]
    return out


def render_chunk(chunk: Chunk, tokenizer) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of one recorded model call, as ROME sees and emits it."""
    tokenizer = load_tokenizer(tokenizer)
    if chunk.endpoint == "completions":
        if isinstance(chunk.prompt, list) and all(isinstance(t, int) for t in chunk.prompt):
            prompt = list(chunk.prompt)
        elif isinstance(chunk.prompt, str):
            prompt = tokenizer.encode(chunk.prompt, add_special_tokens=False)
        else:
            raise RenderError(chunk, "a completions chunk without a text or token-id prompt")
        return prompt, tokenizer.encode(chunk.response.text, add_special_tokens=False)
    if not chunk.messages:
        raise RenderError(chunk, "no request messages recorded")
    message = response_message(chunk.response)
    try:
        prompt = prompt_text(chunk.messages, chunk.tools, tokenizer)
        reply = response_text(message, tokenizer)
    except Exception as e:  # jinja: a message the template cannot render (rome serve answers 400 too)
        raise RenderError(chunk, f"the chat template cannot render it: {str(e).splitlines()[0]}") from e
    if chunk.finish_reason == "length" and not message["tool_calls"]:
        reply = reply.removesuffix(IM_END)  # cut off by max_tokens: the model never ended its turn
    return encode(prompt, tokenizer), encode(reply, tokenizer)


def renderable(chunk: Chunk) -> bool:
    """A call that completed: an aborted or failed call (the agent retried or stopped) has no reply to train."""
    return chunk.error is None and chunk.finish_reason != "abort"


def render_trajectory(traj: Trajectory, tokenizer) -> list[Chunk]:
    """The trajectory's completed chunks, in order, with our prompt/response ids (and logprobs 0.0: the
    sampler's logprobs belong to the teacher's tokens), ready for `roll.algo.packing.pack_trajectory`."""
    tokenizer = load_tokenizer(tokenizer)
    out = []
    for chunk in sorted(traj.chunks, key=lambda c: c.index):
        if not renderable(chunk):
            continue
        prompt, response = render_chunk(chunk, tokenizer)
        update = {
            "prompt_token_ids": prompt,
            "response_token_ids": response,
            "response_logprobs": [0.0] * len(response),
        }
        out.append(chunk.model_copy(update=update))
    return out
