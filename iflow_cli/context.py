"""python3 -m iflow_cli -p TASK --yolo (context is managed on every turn): token budget, compression, memory.

Token counts are estimated from characters with a ratio calibrated on every reply's
`usage.prompt_tokens`, so the budget follows whatever tokenizer the server uses. Past the
compression threshold the older turns are summarised by the model into a state note (task, files
changed, commands that worked, what remains) while the system prompt, the task and the recent
turns stay verbatim.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

NOTE_MARK = "[State note: earlier turns were compressed]"
RECENT_SHARE = 0.3  # recent turns kept verbatim take at most this share of tokensLimit
SUMMARY_SHARE = 0.5  # the summarisation request stays under this share of tokensLimit
SUMMARY_PROMPT = (
    "You compress the history of a coding agent's session. Write a state note with exactly these "
    "sections: Task, Files changed, Commands that worked, Findings, What remains. Be specific (paths, "
    "commands, values); at most 300 words. Do not call tools."
)


class TokenCounter:
    """chars x ratio, with the ratio taken from the server's own prompt token counts."""

    def __init__(self, ratio: float = 0.3):
        self.ratio = ratio

    @staticmethod
    def chars(messages: list[dict], tools: list[dict] | None = None) -> int:
        return len(json.dumps(messages, ensure_ascii=False)) + (len(json.dumps(tools)) if tools else 0)

    def count(self, messages: list[dict], tools: list[dict] | None = None) -> int:
        return int(self.chars(messages, tools) * self.ratio) + 1

    def calibrate(self, messages: list[dict], tools: list[dict] | None, prompt_tokens: int) -> None:
        if prompt_tokens > 0:
            self.ratio = prompt_tokens / max(1, self.chars(messages, tools))


def load_memory(cwd: Path, home: Path | None = None) -> list[tuple[Path, str]]:
    """IFLOW.md files from ~/.iflow (and ~), the project root (nearest .git upwards) and cwd, deduplicated."""
    home = home or Path.home()
    candidates = [home / ".iflow" / "IFLOW.md", home / "IFLOW.md"]
    root = next((p for p in [cwd, *cwd.parents] if (p / ".git").exists()), None)
    if root:
        candidates.append(root / "IFLOW.md")
    candidates.append(cwd / "IFLOW.md")
    seen, out = set(), []
    for path in candidates:
        if path.is_file() and path.resolve() not in seen:
            seen.add(path.resolve())
            out.append((path, path.read_text(encoding="utf-8", errors="replace")))
    return out


def split_turns(messages: list[dict]) -> tuple[list[dict], list[list[dict]]]:
    """(head, turns): head is the system prompt and first task; a turn starts at an assistant message or
    at a user message that is not a tool response (a new task, a format error, a state note)."""
    head, turns = messages[:2], []
    for m in messages[2:]:
        starts = m["role"] == "assistant" or (m["role"] == "user" and "<tool_response" not in (m.get("content") or ""))
        if starts or not turns:
            turns.append([m])
        else:
            turns[-1].append(m)
    return head, turns


def text_of(m: dict) -> str:
    calls = " ".join(f"{c['function']['name']}({c['function']['arguments']})" for c in m.get("tool_calls") or [])
    return ((m.get("content") or "") + (" " + calls if calls else "")).strip()


def transcript(turns: list[list[dict]], max_chars: int) -> str:
    """The turns as plain text for the summariser, each message cut so that the whole fits max_chars."""
    msgs = [m for t in turns for m in t]
    per = max(200, max_chars // max(1, len(msgs)))
    lines = []
    for m in msgs:
        body = text_of(m)
        if len(body) > per:
            body = body[: per // 2] + f" [...{len(body) - per} chars...] " + body[-per // 2 :]
        lines.append(f"{m['role'].upper()}: {body}")
    return "\n".join(lines)


class Facts:
    """What the note must never lose, collected mechanically from tool calls and results."""

    def __init__(self):
        self.files: list[str] = []
        self.commands: list[str] = []

    def add_turns(self, turns: list[list[dict]]) -> None:
        for m in (m for t in turns for m in t):
            for c in m.get("tool_calls") or []:
                self.add_call(c["function"]["name"], c["function"]["arguments"])
            for cmd in re.findall(r"^Command: (.*)\nExit code: 0$", m.get("content") or "", re.M):
                if m["role"] != "assistant" and cmd not in self.commands:
                    self.commands.append(cmd)

    def add_call(self, name: str, arguments: str) -> None:
        if name not in ("write_file", "replace"):
            return
        try:
            path = json.loads(arguments).get("path")
        except (json.JSONDecodeError, AttributeError):
            return
        if path and path not in self.files:
            self.files.append(path)

    def render(self, task: str) -> str:
        cmds = "; ".join(f"`{c}`" for c in self.commands[-12:]) or "none recorded"
        return f"Task: {task[:600]}\nFiles changed: {', '.join(self.files) or 'none'}\nCommands that worked: {cmds}"


class Compressor:
    """Keeps the context under tokensLimit by summarising old turns with `summarise(messages) -> str`."""

    def __init__(
        self, tokens_limit: int, threshold: float, counter: TokenCounter, summarise: Callable[[list[dict]], str]
    ):
        self.limit = tokens_limit
        self.threshold = threshold
        self.counter = counter
        self.summarise = summarise
        self.facts = Facts()

    def needed(self, messages: list[dict], tools: list[dict] | None) -> bool:
        return self.counter.count(messages, tools) > self.threshold * self.limit

    def keep_recent(self, turns: list[list[dict]]) -> int:
        """How many recent turns fit in RECENT_SHARE of the budget (at least one)."""
        kept, used, budget = 0, 0, RECENT_SHARE * self.limit
        for turn in reversed(turns):
            cost = self.counter.count(turn)
            if kept >= 1 and used + cost > budget:
                break
            kept, used = kept + 1, used + cost
        return kept

    def compress(self, messages: list[dict], pinned: dict | None = None) -> tuple[list[dict], str] | None:
        """New message list with a state note replacing older turns, or None when nothing can be folded.

        `pinned` (the task being worked on, in an interactive session) stays verbatim after the note.
        """
        head, turns = split_turns(messages)
        keep = self.keep_recent(turns)
        old, recent = turns[: len(turns) - keep], turns[len(turns) - keep :]
        if not old:
            return None
        self.facts.add_turns(old)
        note = self.state_note(head, old)
        kept = [m for t in recent for m in t]
        folded_pin = [pinned] if pinned is not None and any(m is pinned for t in old for m in t) else []
        return head + [{"role": "user", "content": note}] + folded_pin + kept, note

    def state_note(self, head: list[dict], old: list[list[dict]]) -> str:
        task = head[1].get("content") or "" if len(head) > 1 else ""
        budget_chars = int(SUMMARY_SHARE * self.limit / max(self.counter.ratio, 1e-3))
        request = [
            {"role": "system", "content": SUMMARY_PROMPT},
            {
                "role": "user",
                "content": f"TASK: {task}\n\nHISTORY:\n{transcript(old, budget_chars)}\n\nWrite the state note.",
            },
        ]
        try:
            summary = self.summarise(request).strip()
        except Exception as e:  # noqa: BLE001 - any failure: the mechanical facts still make a usable note
            summary = f"(the model could not summarise: {e})"
        return (
            f"{NOTE_MARK}\n{self.facts.render(task)}\nSummary of earlier work:\n{summary}\nContinue the task from here."
        )

    def shrink(self, messages: list[dict], per_message: int) -> list[dict]:
        """Last resort when even the recent turns overflow: cut long tool outputs in place of dropping them."""
        out = []
        for i, m in enumerate(messages):
            content = m.get("content")
            if i >= 2 and isinstance(content, str) and len(content) > per_message and m["role"] != "assistant":
                half = per_message // 2
                m = {
                    **m,
                    "content": f"{content[:half]}\n[... {len(content) - per_message} characters elided ...]\n{content[-half:]}",
                }
            out.append(m)
        return out
