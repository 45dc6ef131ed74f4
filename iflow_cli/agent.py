"""python3 -m iflow_cli -p TASK --yolo: the agent loop, one file (after mini-swe-agent's default agent).

Each step: check limits, keep the context in budget, query the model, run the tool calls it asked
for (OpenAI `tool_calls`, or `<tool_call>{json}</tool_call>` blocks in the text), and append the
observations. A reply without a tool call is the final answer. Control flow is by exceptions that
carry their message; the trajectory is appended after every step, in `finally`.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from iflow_cli.context import Compressor, TokenCounter
from iflow_cli.models import Completion, ModelError, OpenAIModel
from iflow_cli.prompts import text_tools
from iflow_cli.tools import Toolbox, ToolError, truncate

TEXT_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


class Submitted(Exception):
    """The model answered without calling a tool: its text is the final answer."""


class LimitsExceeded(Exception):
    """A session limit ended the run; `reason` is the termination reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class FormatError(Exception):
    """The reply could not be acted on; the message goes back to the model as an observation."""


@dataclass
class RunResult:
    session_id: str
    answer: str
    termination_reason: str  # finished | max_turns | timeout | context_limit | format_error | model_error | interrupted
    rounds: int
    usage: dict
    seconds: float
    model_seconds: float
    tool_seconds: float
    tool_results: list[dict] = field(default_factory=list)
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.termination_reason == "finished"


@dataclass
class Action:
    id: str  # the id its observation answers to (the model's, or one made up when it gave none)
    name: str
    args: dict | None
    problem: str = ""  # why the call is malformed, when it is
    call_id: str | None = None  # the id as the model gave it (None for text calls and calls without one)


class Agent:
    def __init__(
        self,
        model: OpenAIModel,
        toolbox: Toolbox,
        system_prompt: str,
        settings,
        trajectory=None,
        log: Callable[[str], None] = print,
        show: Callable[[str, dict], None] | None = None,
    ):
        self.model, self.toolbox, self.settings = model, toolbox, settings
        self.text_mode = settings.tool_call_mode == "text"
        self.tools = None if self.text_mode else toolbox.schemas()
        self.messages: list[dict] = [{"role": "system", "content": system_prompt}]
        self.trajectory = trajectory
        self.log, self.show = log, show or (lambda kind, data: None)
        self.session_id = uuid.uuid4().hex
        self.counter = TokenCounter()
        self.compressor = Compressor(
            settings.tokens_limit, settings.compression_token_threshold, self.counter, self.summarise
        )
        self.rounds, self.format_errors = 0, 0
        # Completions received, summaries included: the gateway records one chunk per completion, so the
        # 0-based count of the call that issued a tool call is that call's chunk (`round` in tool_results).
        self.model_calls, self.call_round = 0, -1
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        self.model_seconds = self.tool_seconds = 0.0
        self.tool_results: list[dict] = []
        self.task_message: dict | None = None  # the task being worked on: never folded into a note
        self.created = self.start = time.monotonic()
        self.deadline: float | None = None

    # -- the loop -------------------------------------------------------------------------------
    def run(self, task: str, history: list[dict] | None = None) -> RunResult:
        """Work on `task` (a new user turn of this session) until an answer or a limit.

        `history` (iflow --history): the conversation so far, after the system prompt and starting with
        `task` as its first user message, to continue instead of starting afresh (check_history says
        what fits); the model is asked for the next reply at once, and maxSessionTurns counts new calls."""
        if len(self.messages) == 1:
            tools = [t["function"]["name"] for t in self.toolbox.schemas()]
            meta = {"session_id": self.session_id, "model": self.model.model, "tools": tools}
            self.record("session", {**meta, "system_prompt": self.messages[0]["content"]})
        # The timeout and the reported seconds are per task: an interactive session runs many.
        self.start = time.monotonic()
        self.deadline = self.start + self.settings.timeout if self.settings.timeout else None
        self.task_message = {"role": "user", "content": task}
        if history:
            self.task_message = history[0]
        for message in history or [self.task_message]:
            self.add(message)
        while True:
            try:
                self.step()
            except Submitted as e:
                return self.finish("finished", str(e))
            except LimitsExceeded as e:
                return self.finish(e.reason, "", str(e))
            except ModelError as e:
                reason = "timeout" if self.deadline and time.monotonic() >= self.deadline else "model_error"
                return self.finish(reason, "", str(e))
            except KeyboardInterrupt as e:
                return self.finish("interrupted", "", f"interrupted ({e or 'Ctrl-C'})")
            finally:
                self.flush()

    def step(self) -> None:
        self.check_limits()
        self.fit_context()
        completion = self.query()
        try:
            actions = self.parse(completion)
        except FormatError as e:
            self.add({"role": "assistant", "content": completion.content})
            return self.format_error(str(e))
        self.add(self.assistant_message(completion, actions))
        if not actions:
            raise Submitted(completion.content)
        problems = self.execute(actions)
        if problems:
            self.format_error("; ".join(problems), observed=True)
        else:
            self.format_errors = 0

    def check_limits(self) -> None:
        if self.rounds >= self.settings.max_session_turns:
            raise LimitsExceeded("max_turns", f"reached maxSessionTurns ({self.settings.max_session_turns})")
        if self.deadline and time.monotonic() >= self.deadline:
            raise LimitsExceeded("timeout", f"session timeout of {self.settings.timeout:g}s reached")

    def format_error(self, message: str, observed: bool = False) -> None:
        """Bounded re-prompt: the error is an observation until too many come in a row."""
        self.format_errors += 1
        self.show("format_error", {"message": message})
        if self.format_errors > self.settings.max_format_errors:
            raise LimitsExceeded("format_error", f"{self.format_errors} malformed replies in a row; last: {message}")
        if not observed:
            self.add({"role": "user", "content": f"Format error: {message}\n{self.format_hint()}"})

    def format_hint(self) -> str:
        if self.text_mode:
            return 'Call a tool as <tool_call>{"name": "...", "arguments": {...}}</tool_call>, or answer without one when done.'
        return "Call one of the provided tools with valid JSON arguments, or answer in plain text when done."

    # -- model ----------------------------------------------------------------------------------
    def query(self) -> Completion:
        self.rounds += 1
        self.show("round", {"round": self.rounds})
        try:
            completion = self.model.complete(self.messages, self.tools, self.deadline)
        except ModelError as e:
            if self.text_mode or e.status != 400 or "tool" not in str(e).lower():
                raise
            self.use_text_mode(str(e))
            completion = self.model.complete(self.messages, self.tools, self.deadline)
        self.account(completion)
        self.call_round = self.model_calls - 1
        self.counter.calibrate(self.messages, self.tools, completion.usage.get("prompt_tokens", 0))
        self.record(
            "model_call",
            {
                "round": self.rounds,
                "usage": completion.usage,
                "latency_s": completion.latency_s,
                "finish_reason": completion.finish_reason,
                "context_tokens": self.counter.count(self.messages, self.tools),
            },
        )
        return completion

    def use_text_mode(self, why: str) -> None:
        """The server refuses OpenAI `tools` (e.g. vLLM without a tool parser): describe them in the prompt."""
        self.log(f"iflow: the server rejects OpenAI tools ({why}); using <tool_call> blocks in text instead")
        self.text_mode, self.tools = True, None
        self.messages[0] = {
            **self.messages[0],
            "content": self.messages[0]["content"] + text_tools(self.toolbox.schemas()),
        }
        self.record("text_mode", {"reason": why})

    def account(self, completion: Completion) -> None:
        self.model_calls += 1
        for key in self.usage:
            self.usage[key] += int(completion.usage.get(key) or 0)
        self.model_seconds += completion.latency_s

    def summarise(self, request: list[dict]) -> str:
        """The compressor's model call (no tools); counted in usage like any other."""
        completion = self.model.complete(request, None, self.deadline)
        self.account(completion)
        return completion.content

    def fit_context(self) -> None:
        """Compress past the threshold; if still over tokensLimit, cut long outputs; else give up."""
        if not self.compressor.needed(self.messages, self.tools):
            return
        before = self.counter.count(self.messages, self.tools)
        folded = self.compressor.compress(self.messages, self.task_message)
        if folded:
            self.messages = folded[0]
        limit = self.settings.tokens_limit
        for per_message in (4000, 1000, 300):
            if self.counter.count(self.messages, self.tools) <= limit:
                break
            self.messages = self.compressor.shrink(self.messages, per_message)
        after = self.counter.count(self.messages, self.tools)
        self.record("compression", {"before": before, "after": after, "note": folded[1] if folded else None})
        self.show("compression", {"before": before, "after": after})
        if after > limit:
            raise LimitsExceeded("context_limit", f"context of ~{after} tokens does not fit tokensLimit {limit}")

    # -- tool calls -----------------------------------------------------------------------------
    def parse(self, completion: Completion) -> list[Action]:
        if completion.tool_calls:
            return [self.native_action(c, i) for i, c in enumerate(completion.tool_calls)]
        blocks = TEXT_CALL.findall(completion.content or "")
        if not blocks and "<tool_call>" in (completion.content or ""):
            raise FormatError("unterminated <tool_call> block (missing </tool_call>)")
        if not blocks and not (completion.content or "").strip():
            raise FormatError("empty reply: neither text nor a tool call")
        return [self.text_action(b, i) for i, b in enumerate(blocks)]

    def native_action(self, call: dict, index: int) -> Action:
        ids = (call["id"] or f"call_{index}", call["id"] or None)
        try:
            args = json.loads(call["arguments"] or "{}")
        except json.JSONDecodeError as e:
            return Action(ids[0], call["name"], None, f"arguments of {call['name']} are not valid JSON ({e})", ids[1])
        if not isinstance(args, dict):
            return Action(ids[0], call["name"], None, f"arguments of {call['name']} must be a JSON object", ids[1])
        return Action(ids[0], call["name"], args, call_id=ids[1])

    def text_action(self, block: str, index: int) -> Action:
        try:
            data = json.loads(block)
            name, args = data["name"], data.get("arguments", {})
            args = json.loads(args) if isinstance(args, str) else args
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            return Action(
                f"text_{index}", "?", None, f"<tool_call> block is not valid JSON with name/arguments ({e!r})"
            )
        if not isinstance(args, dict):
            return Action(f"text_{index}", str(name), None, "tool call arguments must be a JSON object")
        return Action(f"text_{index}", str(name), args)

    def assistant_message(self, completion: Completion, actions: list[Action]) -> dict:
        if self.text_mode or not completion.tool_calls:
            return {"role": "assistant", "content": completion.content}
        calls = [
            {"id": a.id, "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for a, c in zip(actions, completion.tool_calls, strict=True)
        ]
        return {"role": "assistant", "content": completion.content or None, "tool_calls": calls}

    def execute(self, actions: list[Action]) -> list[str]:
        """Run each call; returns the format problems (malformed calls), which were also observed."""
        problems, outputs = [], []
        for action in actions:
            problem, text = self.run_action(action)
            if problem:
                problems.append(problem)
            outputs.append((action, text))
        self.observe(outputs)
        return problems

    def run_action(self, action: Action) -> tuple[str, str]:
        if action.problem:
            self.note(action, parsed=False, ok=False, error=action.problem)
            return action.problem, f"Format error: {action.problem}. {self.format_hint()}"
        self.show("tool", {"name": action.name, "args": action.args})
        start = time.monotonic()
        try:
            result = self.toolbox.call(action.name, action.args or {}, self.deadline)
        except ToolError as e:  # unknown tool, missing or mistyped arguments: the call did not parse
            self.note(action, parsed=False, ok=False, error=str(e))
            return str(e), f"Format error: {e}"
        finally:
            self.tool_seconds += time.monotonic() - start
        error = "" if result.ok else result.error or first_line(result.output)
        self.note(action, parsed=True, ok=result.ok, exit_code=result.exit_code, error=error)
        self.show("tool_result", {"name": action.name, "ok": result.ok, "output": result.output})
        return "", result.output

    def note(self, action: Action, parsed: bool, ok: bool, exit_code: int | None = None, error: str = "") -> None:
        """One entry of the execution info's tool_results (the fields of rock.contracts.ToolResult, and round)."""
        self.tool_results.append(
            {
                "round": self.call_round,
                "call_id": action.call_id,
                "tool": action.name,
                "parsed": parsed,
                "ok": ok,
                "exit_code": exit_code,
                "error": first_line(error),
            }
        )

    def observe(self, outputs: list[tuple[Action, str]]) -> None:
        """Tool messages for native calls; one user message of <tool_response> blocks for text calls."""
        budget = self.output_budget()
        if self.text_mode or not any(a.id and not a.id.startswith("text_") for a, _ in outputs):
            body = "\n".join(
                f'<tool_response name="{a.name}">\n{truncate(t, budget)}\n</tool_response>' for a, t in outputs
            )
            return self.add({"role": "user", "content": body})
        for action, text in outputs:
            self.add({"role": "tool", "tool_call_id": action.id, "content": truncate(text, budget)})

    def output_budget(self) -> int:
        """Characters one observation may take: the configured cap, and a quarter of the token budget."""
        by_tokens = int(0.25 * self.settings.tokens_limit / max(self.counter.ratio, 1e-3))
        return max(200, min(self.settings.tool_output_limit, by_tokens))

    # -- bookkeeping ----------------------------------------------------------------------------
    def add(self, message: dict) -> None:
        self.messages.append(message)
        self.record("message", {"message": message})

    def record(self, kind: str, data: dict) -> None:
        if self.trajectory is not None:
            self.trajectory.add({"type": kind, "t": round(time.monotonic() - self.created, 4), **data})

    def flush(self) -> None:
        if self.trajectory is not None:
            self.trajectory.flush()

    def finish(self, reason: str, answer: str, error: str = "") -> RunResult:
        if error:
            self.log(f"iflow: stopped ({reason}): {error}")
        result = RunResult(
            self.session_id,
            answer,
            reason,
            self.rounds,
            dict(self.usage),
            round(time.monotonic() - self.start, 3),
            round(self.model_seconds, 3),
            round(self.tool_seconds, 3),
            list(self.tool_results),
            error,
        )
        self.record("result", asdict(result))
        return result


HISTORY_ROLES = ("user", "assistant", "tool")


def check_history(history: object, task: str) -> list[dict]:
    """The messages of an --history file, or ValueError saying what is wrong: a list of OpenAI messages
    (user, assistant, tool; the system prompt stays iflow's own), the first the task as a user message,
    the last not the assistant's (the model is to reply next)."""
    if not isinstance(history, list) or not history:
        raise ValueError("history must be a non-empty JSON list of messages")
    for i, m in enumerate(history):
        if not isinstance(m, dict) or m.get("role") not in HISTORY_ROLES:
            role = m.get("role") if isinstance(m, dict) else type(m).__name__
            raise ValueError(f"history message {i} has role {role!r}; expected one of {', '.join(HISTORY_ROLES)}")
    if history[0]["role"] != "user" or history[0].get("content") != task:
        raise ValueError("history must start with the task (the -p prompt) as its first user message")
    if history[-1]["role"] == "assistant":
        raise ValueError("history ends with an assistant message; it must end where the model replies next")
    return history


def first_line(text: str, limit: int = 300) -> str:
    """The first non-blank line, cut to `limit` characters: enough to say why, small enough to keep per call."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


class Trajectory:
    """Append-only JSON lines, written out after every step (so a crash loses at most one step)."""

    def __init__(self, path: str):
        self.path = path
        self.pending: list[dict] = []
        open(path, "w").close()

    def add(self, event: dict) -> None:
        self.pending.append(event)

    def flush(self) -> None:
        if not self.pending:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            for event in self.pending:
                f.write(json.dumps(event, ensure_ascii=False) + "\n")
        self.pending.clear()
