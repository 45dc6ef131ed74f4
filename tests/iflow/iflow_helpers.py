"""Helpers shared by tests/iflow (imported as `iflow_helpers`: pytest puts this folder on sys.path)."""

from __future__ import annotations

import socket


def call(name: str, **arguments) -> dict:
    """One scripted reply holding one native tool call."""
    return {"tool_calls": [{"name": name, "arguments": arguments}]}


def tool_messages(request: dict) -> list[str]:
    """The tool results a request carried, in order."""
    return [m["content"] for m in request["messages"] if m["role"] == "tool"]


def free_port() -> int:
    """A loopback port nobody listens on right now (for 'unreachable' tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
