"""python3 -m iflow_cli -p TASK (the system prompt is built here): what the model is told about its job."""

from __future__ import annotations

import json
from pathlib import Path

BASE = """You are iFlow, a coding agent working in a terminal.
Working directory: {cwd} ({where}).
Use the tools to inspect files, change them and run commands; check your work by running it.
Paths may be relative to the working directory. Each shell command starts in the working directory.
When the task is done, reply with a short final answer and no tool call: a reply without a tool
call ends the session."""

TEXT_TOOLS = """
Call a tool by writing, anywhere in your reply, one block per call:
<tool_call>{{"name": "TOOL", "arguments": {{...}}}}</tool_call>
Results come back in <tool_response> blocks. Available tools (JSON schemas):
{schemas}"""


def text_tools(tool_schemas: list[dict]) -> str:
    """The prompt section for models without OpenAI tool calling."""
    return TEXT_TOOLS.format(schemas="\n".join(json.dumps(s["function"]) for s in tool_schemas))


def system_prompt(cwd: str, where: str, memory: list[tuple[Path, str]], tool_schemas: list[dict] | None = None) -> str:
    """`tool_schemas` is given in text mode only: native mode sends them as OpenAI `tools`."""
    text = BASE.format(cwd=cwd, where=where)
    if tool_schemas is not None:
        text += text_tools(tool_schemas)
    for path, content in memory:
        text += f"\n\n# Memory from {path}\n{content.strip()}"
    return text
