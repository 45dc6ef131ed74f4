"""The ROME chat template (Qwen/hermes style) and the parser that turns output back into tool calls.

Turns are `<|im_start|>role\\n...<|im_end|>`; tools are listed in the system turn inside
`<tools></tools>`; an assistant calls a tool with `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`;
tool results come back as `<tool_response>` blocks in a user turn. The same layout as Qwen2.5/Qwen3,
so vLLM's `hermes` tool parser also reads our output.
"""

from __future__ import annotations

import functools
import json
import re
import uuid

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"

CHAT_TEMPLATE = (
    "{%- set system = messages[0].content if messages and messages[0].role == 'system' else none %}"
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if system %}{{- system + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}"
    "{{- '\\n' + ((tool.function if tool.function is defined else tool) | tojson) }}"
    "{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- elif system is not none %}"
    "{{- '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if message.content %}{{- message.content }}{%- endif %}"
    "{%- for call in (message.tool_calls or []) %}"
    "{%- set fn = call.function if call.function is defined else call %}"
    "{%- if message.content or not loop.first %}{{- '\\n' }}{%- endif %}"
    '{{- \'<tool_call>\\n{\\"name\\": \\"\' + fn.name + \'\\", \\"arguments\\": \' }}'
    "{%- if fn.arguments is string %}{{- fn.arguments }}{%- else %}{{- fn.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + (message.content if message.content is string else '') + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Same signature and output as the `tojson` filter transformers installs for chat templates.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.cache
def _compiled_template():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # The environment options transformers uses for chat templates, so both render alike.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    return env.from_string(CHAT_TEMPLATE)


def render_messages(messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = False) -> str:
    """The template rendered without a tokenizer (the corpus is made before the tokenizer exists)."""
    return _compiled_template().render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt)


_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


def parse_tool_calls(text: str) -> tuple[str | None, list[dict]]:
    """Split model output into (content, tool_calls in OpenAI form).

    A call must be a JSON object with a string `name` and object `arguments`. If any block is not,
    nothing is parsed and the whole text is returned as content, so the agent sees what the model
    wrote (and can report a format error) instead of a silently dropped call.
    """
    if TOOL_CALL_START not in text:
        return text, []
    calls = []
    for block in _CALL_RE.findall(text):
        call = _parse_call(block)
        if call is None:
            return text, []
        calls.append(call)
    content = text[: text.index(TOOL_CALL_START)].strip()
    return content or None, calls


def _parse_call(block: str) -> dict | None:
    try:
        obj = json.loads(block.strip())
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", {})
    if not isinstance(args, dict):
        return None
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": obj["name"], "arguments": json.dumps(args, ensure_ascii=False)},
    }
