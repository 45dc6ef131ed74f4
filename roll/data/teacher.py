"""The oracle teacher: `python -m roll.data.teacher --tasks ale [--families a,b] [--port 8321] [--mistake-rate 0.2]`.

A registered OpenAI-compatible backend (`TEACHERS["oracle"]`) that plays each task's golden solution as
the tool calls a model would make: look (list or glob the working directory, read a file the instruction
names that setup made), act (`task.solution_steps`, one `run_shell_command` each, or the whole
`task.solution`; a step that writes literal text into a directory known to exist becomes `write_file`),
check (`cat` of what was written, or `ls -la`), then a short final answer with no tool call. With
probability `mistake_rate` the plan holds one
realistic mistake and the fix right after it: a mistyped command (`command not found`), a wrong path, a
wrong argument name (missing required argument), or a tool call whose JSON is cut short.

Stateless over HTTP: the task is the one whose instruction is the first user message (iflow sends
it verbatim); the plan is drawn on the first call of an attempt from a seed (the teacher's seed, the task
and a per-task counter, so K attempts differ) and that seed is written into every tool-call id
(`call_oracle_<seed>_<step>`), so later calls, whose history carries the ids, continue the same plan.

Replies carry vLLM's extras when asked (`return_token_ids`, `logprobs`): `prompt_token_ids` are ROME's chat
template rendering of the request (messages and tools) tokenised by a ROME tokenizer, exactly as `rome serve`
does; `token_ids` are the reply in the model's own format (`<tool_call>\\n{json}\\n</tool_call>` then
`<|im_end|>`). The teacher is deterministic: every logprob is 0.0 (probability 1 under the teacher).
It answers with OpenAI tool calls (iflow's native mode, the harness's); iflow's text mode, which drops
the call ids from its history, is not supported.

Tests: `.venv/bin/pytest tests/roll/test_teacher.py`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shlex
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from roll.errors import RollError
from roll.tasks.spec import TaskSpec

MISTAKES = ("typo", "wrong_path", "missing_arg", "bad_json")
ID_RE = re.compile(r"^call_oracle_([0-9a-f]{12})_(\d+)$")
# Shell words a typo would not turn into a missing command (keywords, builtins that parse their own way).
NO_TYPO = {"cd", "set", "export", "for", "if", "while", "case", "function", "source", ".", "exec", "eval", "test"}
PATH_WORD = re.compile(r"[A-Za-z0-9_./-]+")
HEREDOC = re.compile(r"^cat\s*>\s*([A-Za-z0-9_./-]+)\s*<<\s*(['\"])(\w+)\2\n(.*)\n\3\s*$", re.S)
HEREDOC_FIRST = re.compile(r"^cat\s*<<\s*(['\"])(\w+)\1\s*>\s*([A-Za-z0-9_./-]+)\n(.*)\n\2\s*$", re.S)
ECHO = re.compile(r"^echo\s+(.+?)\s*>\s*([A-Za-z0-9_./-]+)\s*$")
PLAIN_WORDS = re.compile(r"[A-Za-z0-9_.,:/+=@%-]+( [A-Za-z0-9_.,:/+=@%-]+)*")  # echo prints these as they are
END_REDIRECT = re.compile(r"^[^;&|<>\n]*>>?\s*([A-Za-z0-9_./-]+)\s*$")
REMOVAL = re.compile(r"\brm\s[^;&|\n]*")  # what setup deletes is not there to read


class TeacherError(RollError):
    """A teacher that cannot be built (unknown name, bad option) or a request it cannot answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Step:
    """One reply of a plan: a tool call (`arguments` is the JSON text as written, malformed on purpose for
    a bad_json mistake), or the final answer when `tool` is empty."""

    tool: str
    arguments: str = ""
    text: str = ""
    mistake: str = ""  # the kind, on the step that is the planned mistake


@dataclass(frozen=True)
class Plan:
    seed: str
    steps: list[Step]
    mistake: str  # "" for a clean plan


def call(tool: str, **args: Any) -> Step:
    # json.dumps with its default separators is how rome's parser re-serialises a model's arguments.
    return Step(tool, json.dumps(args, ensure_ascii=False))


# -- the plan ---------------------------------------------------------------------------------


def named_existing_file(task: TaskSpec) -> str | None:
    """A path the instruction names that the environment makes (so reading it first is informed)."""
    made = REMOVAL.sub(" ", task.environment.setup + (task.environment.dockerfile or ""))
    made += "".join(task.environment.files)
    for word in PATH_WORD.findall(task.instruction.replace("`", " ")):
        word = word.rstrip(".")
        if ("/" in word or re.search(r"\.[A-Za-z0-9]{1,5}$", word)) and not word.startswith("-") and word in made:
            if word not in (".", "..") and not word.endswith("/"):
                return word
    return None


def literal_write(command: str) -> tuple[str, str] | None:
    """(path, content) when a command only writes literal text to a plain path: a quoted heredoc, or
    echo of a single-quoted string or of plain words."""
    command = command.strip()
    if m := HEREDOC.match(command):
        return m.group(1), m.group(4) + "\n"
    if m := HEREDOC_FIRST.match(command):
        return m.group(3), m.group(4) + "\n"
    if m := ECHO.match(command):
        arg = m.group(1)
        text = arg[1:-1] if re.fullmatch(r"'[^'\n\\]*'", arg) else arg if PLAIN_WORDS.fullmatch(arg) else None
        if text is not None and not text.startswith("-"):
            return m.group(2), text + "\n"
    return None


def dir_exists(path: str, task: TaskSpec, earlier: list[str]) -> bool:
    """Whether the directory of `path` is surely there: the workdir, or a directory that setup or an
    earlier step names (and setup does not remove). write_file makes missing directories and the shell
    does not, so a write into any other directory stays a shell command (it may be meant to fail)."""
    parent = os.path.dirname(path.rstrip("/"))
    if parent in ("", ".") or parent.rstrip("/") == task.workdir.rstrip("/"):
        return True
    made = REMOVAL.sub(" ", task.environment.setup + "\n" + "\n".join(earlier))
    return re.search(re.escape(parent) + r"(?=[/\s'\"]|$)", made, re.M) is not None


def act_steps(task: TaskSpec) -> list[Step]:
    steps = [call("write_file", path=f"/solution/{p}", content=t) for p, t in sorted(task.solution_files.items())]
    commands = [c for c in task.solution_steps or [task.solution] if c.strip()]
    for i, command in enumerate(commands):
        write = literal_write(command)
        if write and dir_exists(write[0], task, commands[:i]):
            steps.append(call("write_file", path=write[0], content=write[1]))
        else:
            steps.append(call("run_shell_command", command=command))
    return steps


def written_path(step: Step) -> str | None:
    """What a step plainly wrote: a write_file path, or a single command's final `> path` redirect."""
    args = json.loads(step.arguments)
    if step.tool == "write_file":
        return args["path"]
    m = END_REDIRECT.match(args.get("command", "").strip())
    if m and not m.group(1).startswith("/dev/") and " cd " not in f" {args['command']}":
        return m.group(1)
    return None


def check_step(act: list[Step], rng: random.Random) -> Step:
    target = written_path(act[-1]) if act else None
    if target and rng.random() < 0.7:
        return call("run_shell_command", command=f"cat {shlex.quote(target)}")
    return call("run_shell_command", command="ls -la")


def look_steps(task: TaskSpec, rng: random.Random) -> list[Step]:
    r = rng.random()
    first = (
        call("list_directory", path=".")
        if r < 0.5
        else call("run_shell_command", command="ls -la")
        if r < 0.8
        else call("glob", pattern="**/*")
    )
    named = named_existing_file(task)
    if not named or reads_first(task, named):
        return [first]
    return [first, inspect(named)]


def reads_first(task: TaskSpec, path: str) -> bool:
    """The solution's own first step already looks at `path` (the error-recovery family's failing read):
    looking before it would only say the same."""
    words = (task.solution_steps or [task.solution])[0].split()
    return bool(words) and words[0] in {"cat", "head", "tail", "less", "ls", "file", "stat"} and path in words


def inspect(path: str) -> Step:
    """Read a named file; a name with no extension may be a directory (a repository, a folder to
    archive), so it is listed by the shell, which shows either."""
    if re.search(r"\.[A-Za-z0-9]{1,5}$", path.rpartition("/")[2]):
        return call("read_file", path=path)
    return call("run_shell_command", command=f"ls -la {shlex.quote(path)}")


def misspell(path: str) -> str:
    """One letter less at the end of the name's stem (`notes.txt` -> `note.txt`), or a stray `_` before
    a short name."""
    head, slash, name = path.rpartition("/")
    stem, dot, ext = name.rpartition(".") if "." in name[1:] else (name, "", "")
    return head + slash + (stem[:-1] + dot + ext if len(stem) > 2 else "_" + name)


def typo(word: str) -> str:
    """A transposition in the middle of a word (`grep` -> `gerp`); short words get a doubled letter."""
    if len(word) >= 4:
        i = len(word) // 2 - 1
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    return word + word[-1]


def typo_target(step: Step) -> str | None:
    """The mistyped command, if this shell step fails as a whole on its first word (no side effects):
    one command, or an `&&` chain, whose first word is a plain program name."""
    if step.tool != "run_shell_command":
        return None
    command = json.loads(step.arguments)["command"].strip()
    rest = command.replace("&&", "")
    if any(c in rest for c in ";|&\n`$(") or "||" in command:
        return None
    first, _, tail = command.partition(" ")
    if not re.fullmatch(r"[a-z][a-z0-9_.+-]+", first) or first in NO_TYPO:
        return None
    wrong = typo(first)
    return wrong + (" " + tail if tail else "") if wrong != first else None


def mistake_steps(kind: str, task: TaskSpec, look: list[Step], act: list[Step], rng: random.Random):
    """(where: "look"|"act", index in that list, the mistaken step) or None when this kind does not fit."""
    if kind == "typo":
        fits = [(i, t) for i, s in enumerate(act) if (t := typo_target(s))]
        if not fits:
            return None
        i, wrong = rng.choice(fits)
        return "act", i, Step("run_shell_command", json.dumps({"command": wrong}, ensure_ascii=False))
    if kind == "wrong_path":
        named = named_existing_file(task) if len(look) > 1 else None  # only where the plan reads it
        if named:
            wrong_path = misspell(named)
            if wrong_path.rpartition("/")[2] in task.environment.setup:  # the misspelling exists: be surely wrong
                head, slash, name = named.rpartition("/")
                wrong_path = head + slash + "_" + name
            wrong = inspect(wrong_path)
            return "look", 1, Step(wrong.tool, wrong.arguments)
        workdir = task.workdir.rstrip("/")
        if len(workdir) < 2:
            return None
        look[0] = call("list_directory", path=task.workdir)  # the fix: the directory meant
        return "look", 0, Step("list_directory", json.dumps({"path": workdir[:-1]}))
    if not act:  # nothing to act on (an empty solution): the remaining kinds go wrong in acting
        return None
    if kind == "missing_arg":
        i = rng.randrange(len(act))
        args = json.loads(act[i].arguments)
        if act[i].tool == "run_shell_command":
            wrong = {"cmd": args["command"]}  # the wrong name for the one required argument
        else:
            wrong = {k: v for k, v in args.items() if k != "content"}
        return "act", i, Step(act[i].tool, json.dumps(wrong, ensure_ascii=False))
    if kind == "bad_json":
        i = rng.randrange(len(act))
        return "act", i, Step(act[i].tool, act[i].arguments[:-1])  # the closing brace is missing
    raise TeacherError(f"unknown mistake kind {kind!r}; known: {', '.join(MISTAKES)}")


def make_plan(task: TaskSpec, seed: str, mistake_rate: float, kinds: tuple[str, ...] = MISTAKES) -> Plan:
    """The plan for one attempt; the same (task, seed, rate, kinds) always gives the same plan."""
    rng = random.Random(seed)
    look, act = look_steps(task, rng), act_steps(task)
    check = check_step(act, rng)
    mistake = ""
    if kinds and rng.random() < mistake_rate:
        for kind in rng.sample(list(kinds), len(kinds)):
            placed = mistake_steps(kind, task, look, act, rng)
            if placed:
                where, i, wrong = placed
                steps = look if where == "look" else act
                steps.insert(i, Step(wrong.tool, wrong.arguments, mistake=kind))
                mistake = kind
                break
    answer = Step(
        "", text=f"The task is done ({first_sentence(task.instruction).rstrip('.')}), and I checked the result."
    )
    return Plan(seed, [*look, *act, check, answer], mistake)


def first_sentence(text: str) -> str:
    line = text.strip().split("\n")[0]
    sentence = re.split(r"(?<=[.!?])\s", line)[0]
    return sentence if len(sentence) <= 100 else sentence[:97] + "..."


# -- the backend ------------------------------------------------------------------------------


def flatten(content: Any) -> str:
    # As rome serve: content may be a list of typed parts; the template reads text.
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


class OracleTeacher:
    """Answers chat-completion requests for `tasks` by playing their plans (see the module docstring)."""

    name = "oracle"

    def __init__(
        self,
        tasks: list[TaskSpec],
        tokenizer: Any = None,
        mistake_rate: float = 0.2,
        mistakes: tuple[str, ...] | list[str] = MISTAKES,
        seed: int = 0,
    ):
        if not 0.0 <= mistake_rate <= 1.0:
            raise TeacherError(f"mistake rate must be in [0, 1], got {mistake_rate}")
        unknown = [k for k in mistakes if k not in MISTAKES]
        if unknown:
            raise TeacherError(f"unknown mistake kind(s) {', '.join(unknown)}; known: {', '.join(MISTAKES)}")
        if not tasks:
            raise TeacherError("the oracle teacher needs at least one task")
        self.by_instruction: dict[str, TaskSpec] = {}
        for t in tasks:
            same = self.by_instruction.setdefault(t.instruction.strip(), t)
            if (same.solution, same.solution_steps) != (t.solution, t.solution_steps):
                raise TeacherError(
                    f"tasks {same.id} and {t.id} have the same instruction and different solutions: the oracle "
                    "teacher knows a task by its instruction; synthesise them in separate runs"
                )
        self.tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str | Path) else tokenizer
        self.mistake_rate, self.mistakes, self.seed = mistake_rate, tuple(mistakes), seed
        self.attempts: dict[str, int] = {}  # per task: plans drawn so far
        self.lock = threading.Lock()  # the counter, and the tokenizer (a fast tokenizer is not re-entrant)

    # -- which task, which plan, which step
    def task_of(self, messages: list[dict]) -> TaskSpec:
        first = next((flatten(m.get("content")) for m in messages if m.get("role") == "user"), None)
        if first is None:
            raise TeacherError("oracle teacher: the request has no user message (the task)")
        task = self.by_instruction.get(first.strip())
        if task is None:
            raise TeacherError(f"oracle teacher: no task has the instruction {first.strip()[:80]!r}")
        return task

    def new_seed(self, task: TaskSpec) -> str:
        with self.lock:
            n = self.attempts.get(task.id, 0)
            self.attempts[task.id] = n + 1
        return hashlib.sha256(f"{self.seed}/{task.id}/{n}".encode()).hexdigest()[:12]

    def position(self, task: TaskSpec, messages: list[dict]) -> tuple[str, int]:
        """(plan seed, index of the next step): the last id of ours, plus the assistant turns after it
        (a reply whose tool call did not parse comes back as text, without our id)."""
        for back, m in enumerate(reversed(messages)):
            for c in (m.get("tool_calls") or []) if m.get("role") == "assistant" else []:
                if match := ID_RE.match(str(c.get("id") or "")):
                    later = sum(1 for x in messages[len(messages) - back :] if x.get("role") == "assistant")
                    return match.group(1), int(match.group(2)) + 1 + later
        return self.new_seed(task), 0

    def next_step(self, messages: list[dict]) -> tuple[Plan, int, Step]:
        task = self.task_of(messages)
        seed, index = self.position(task, messages)
        plan = make_plan(task, seed, self.mistake_rate, self.mistakes)
        return plan, index, plan.steps[min(index, len(plan.steps) - 1)]

    # -- the reply
    def message(self, plan: Plan, index: int, step: Step) -> dict:
        """The assistant message as a server that parsed the model's output would send it."""
        if not step.tool:
            return {"role": "assistant", "content": step.text, "tool_calls": None}
        if step.mistake == "bad_json":  # unparsable: a real server returns the raw block as content
            return {"role": "assistant", "content": raw_call(step), "tool_calls": None}
        fn = {"name": step.tool, "arguments": step.arguments}
        tc = {"id": f"call_oracle_{plan.seed}_{index}", "type": "function", "function": fn}
        return {"role": "assistant", "content": None, "tool_calls": [tc]}

    def token_ids(self, request: dict, message: dict) -> tuple[list[int], list[int]]:
        """(prompt ids, response ids) as ROME would see and emit them; empty without a tokenizer."""
        if self.tokenizer is None:
            return [], []
        messages = [{**m, "content": flatten(m.get("content"))} for m in request.get("messages") or []]
        tools = request.get("tools") if request.get("tool_choice") != "none" else None
        with self.lock:
            try:
                text = self.tokenizer.apply_chat_template(
                    messages, tools=tools, tokenize=False, add_generation_prompt=True
                )
            except Exception as e:  # jinja: a message the template cannot render (rome serve says 400 too)
                raise TeacherError(f"messages cannot be rendered by the chat template: {e}") from e
            prompt = self.tokenizer.encode(text, add_special_tokens=False)
            response = self.tokenizer.encode(self.response_text(message), add_special_tokens=False)
        return prompt, response

    def response_text(self, message: dict) -> str:
        """The template's own rendering of the assistant turn, without its header and closing newline."""
        text = self.tokenizer.apply_chat_template([message], tokenize=False)
        head = "<|im_start|>assistant\n"
        return text[len(head) :].removesuffix("\n") if text.startswith(head) else text

    def respond(self, request: dict) -> dict:
        """One chat completion (OpenAI shape plus vLLM's extras when asked)."""
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            raise TeacherError("messages must be a non-empty list")
        plan, index, step = self.next_step(messages)
        message = self.message(plan, index, step)
        prompt_ids, ids = self.token_ids(request, message)
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "finish_reason": "tool_calls" if message["tool_calls"] else "stop",
            "logprobs": None,
        }
        has_ids = self.tokenizer is not None  # without a tokenizer no ids are sent rather than made up
        if request.get("logprobs") and has_ids:
            choice["logprobs"] = {"content": [self.entry(i) for i in ids]}
        body: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [choice],
            "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": len(ids), "total_tokens": 0},
        }
        body["usage"]["total_tokens"] = len(prompt_ids) + len(ids)
        if request.get("return_token_ids") and has_ids:
            choice["token_ids"] = ids
            body["prompt_token_ids"] = prompt_ids
        return body

    def entry(self, token_id: int) -> dict:
        tok = self.tokenizer.decode([token_id])
        return {"token": tok, "logprob": 0.0, "bytes": list(tok.encode()), "top_logprobs": []}

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> TeacherServer:
        return TeacherServer(self, host, port).start()


def raw_call(step: Step) -> str:
    return f'<tool_call>\n{{"name": "{step.tool}", "arguments": {step.arguments}}}\n</tool_call>'


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    path = Path(model_dir)
    if not (path / "tokenizer_config.json").is_file():
        raise TeacherError(f"{path}: not a model dir with a tokenizer (no tokenizer_config.json); make one: rome init")
    tok = AutoTokenizer.from_pretrained(path)
    if not tok.chat_template:
        raise TeacherError(f"{path}: the tokenizer has no chat template")
    return tok


def stream_events(body: dict) -> list[dict]:
    """The reply as vLLM streams it: a role chunk with the prompt ids, the message with its token ids
    and logprobs, then usage (asked or not: clients ignore what they did not ask for)."""
    choice = body["choices"][0]
    base = {k: body[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    delta: dict[str, Any] = {"content": choice["message"]["content"] or ""}
    if choice["message"]["tool_calls"]:
        delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(choice["message"]["tool_calls"])]
    last = {"index": 0, "delta": delta, "logprobs": choice["logprobs"], "finish_reason": choice["finish_reason"]}
    if "token_ids" in choice:
        first["token_ids"], last["token_ids"] = [], choice["token_ids"]
    head = base | {"choices": [first]}
    if "prompt_token_ids" in body:
        head["prompt_token_ids"] = body["prompt_token_ids"]
    return [head, base | {"choices": [last]}, base | {"choices": [], "usage": body["usage"]}]


class TeacherServer:
    """A teacher on a threaded stdlib HTTP server: `.url` ends in /v1; context manager."""

    def __init__(self, teacher: OracleTeacher, host: str = "127.0.0.1", port: int = 0):
        self.teacher = teacher
        self.httpd = _Server((host, port), _Handler)
        self.httpd.teacher = teacher  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="oracle-teacher", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> TeacherServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> TeacherServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many sandboxes' gateways connect at once


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # keep-alive replies otherwise wait on delayed ACKs

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        route = self.path.split("?")[0].rstrip("/")
        if route in ("/v1/models", "/models"):
            card = {"id": OracleTeacher.name, "object": "model", "created": 0, "owned_by": "roll"}
            return self.send_json(200, {"object": "list", "data": [card]})
        if route in ("/health", "/healthz"):
            return self.send_json(200, {"status": "ok"})
        self.send_json(404, error_body(f"no route GET {self.path}"))

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?")[0].rstrip("/") != "/v1/chat/completions":
            return self.send_json(404, error_body(f"no route POST {self.path}"))
        try:
            request = json.loads(raw or b"{}")
            body = self.server.teacher.respond(request)  # type: ignore[attr-defined]
        except json.JSONDecodeError as e:
            return self.send_json(400, error_body(f"request body is not JSON: {e}"))
        except TeacherError as e:
            return self.send_json(e.status, error_body(str(e)))
        if not request.get("stream"):
            return self.send_json(200, body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in stream_events(body):
            self.write_chunk(f"data: {json.dumps(event)}\n\n".encode())
        self.write_chunk(b"data: [DONE]\n\n")
        self.write_chunk(b"")

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def send_json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def error_body(message: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "code": "invalid_request_error"}}


TEACHERS = {"oracle": OracleTeacher}  # teachers served in-process; any other teacher is a model URL


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m roll.data.teacher", description="Serve the oracle teacher.")
    ap.add_argument("--tasks", default="ale", help="ale (the generated suite) or a folder of task folders")
    ap.add_argument("--families", help="comma-separated families")
    ap.add_argument("--split", choices=["train", "heldout"])
    ap.add_argument("--tokenizer", help="a ROME model dir (rome init) for token ids; none: no token ids")
    ap.add_argument("--mistake-rate", type=float, default=0.2)
    ap.add_argument("--port", type=int, default=8321)
    args = ap.parse_args(argv)
    from roll.tasks.loader import load_tasks

    families = args.families.split(",") if args.families else None
    tasks, errors = load_tasks(args.tasks, families=families, split=args.split)
    for e in errors:
        print(f"teacher: skipped: {e}", file=sys.stderr)
    try:
        teacher = OracleTeacher(tasks, args.tokenizer, args.mistake_rate)
        server = teacher.serve(port=args.port)
    except (TeacherError, OSError) as e:
        print(f"teacher: error: {e}", file=sys.stderr)
        return 2
    print(f"oracle teacher for {len(tasks)} tasks at {server.url}", flush=True)
    try:
        server.thread.join()
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
