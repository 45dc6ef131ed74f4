"""python3 -m iflow_cli -p "hello" --base-url URL: the OpenAI-compatible chat client (urllib only).

Works with any /v1/chat/completions server (rome serve, vLLM, vendors, the scripted server).
Errors carry their cause (HTTP status with the server's message, timeout, unreachable or
malformed URL) and whether a retry can help; `complete` retries those with exponential backoff.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


class ModelError(Exception):
    """A model call failed; `retryable` says whether trying again can help."""

    def __init__(self, message: str, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable


@dataclass
class Completion:
    """One assistant reply: text, tool calls [{"id" ("" when the model gave none), "name", "arguments" (raw
    string)}], usage."""

    content: str
    tool_calls: list[dict]
    finish_reason: str | None
    usage: dict = field(default_factory=dict)
    latency_s: float = 0.0


def check_base_url(url: str) -> str | None:
    """Why a base URL is malformed, or None when it looks usable."""
    if not url:
        return "no baseUrl set (use --base-url, the baseUrl setting, or OPENAI_BASE_URL)"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"malformed baseUrl {url!r}: expected http(s)://host[:port]/v1"
    return None


def http_error_message(err: urllib.error.HTTPError) -> str:
    """The server's own error message when it sent one (OpenAI shape or plain text)."""
    try:
        raw = err.read().decode("utf-8", "replace")
    except OSError:
        raw = ""
    try:
        body = json.loads(raw)
        detail = body.get("error", body) if isinstance(body, dict) else body
        msg = detail.get("message", raw) if isinstance(detail, dict) else str(detail)
    except (json.JSONDecodeError, AttributeError):
        msg = raw.strip()[:500]
    return msg or err.reason or ""


def describe_url_error(url: str, err: Exception) -> tuple[str, bool]:
    """(message, retryable) for transport failures."""
    reason = getattr(err, "reason", err)
    if isinstance(reason, TimeoutError | socket.timeout):
        return f"timed out waiting for {url}", True
    if isinstance(reason, ConnectionRefusedError | ConnectionResetError):
        return f"cannot reach {url}: {reason.strerror or reason}", True
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve host of {url}: {reason}", False
    return f"request to {url} failed: {reason}", True


class OpenAIModel:
    """Chat completions over HTTP with retries; `log` receives one-line notices (errors, retries)."""

    def __init__(
        self,
        base_url: str,
        api_key: str = "",
        model: str = "",
        max_tokens: int = 4096,
        temperature: float | None = None,
        timeout: float = 300.0,
        stream: bool = False,
        max_retries: int = 3,
        retry_delay: float = 1.0,
        log: Callable[[str], None] = print,
    ):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout = timeout
        self.stream = stream
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.log = log
        self.on_text: Callable[[str], None] | None = None  # streamed text goes here as it arrives

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def probe(self) -> str:
        """Startup check: the server answers /models; returns the model to use. Raises ModelError."""
        problem = check_base_url(self.base_url)
        if problem:
            raise ModelError(problem)
        try:
            req = urllib.request.Request(self.base_url + "/models", headers=self.headers())
            with urllib.request.urlopen(req, timeout=min(self.timeout, 15)) as r:
                data = json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise ModelError(f"HTTP {e.code} from {self.base_url}: {http_error_message(e)}", e.code) from e
            return self.model  # some servers have no /models; the first chat call will tell
        except (urllib.error.URLError, OSError) as e:
            raise ModelError(f"baseUrl unreachable: {describe_url_error(self.base_url, e)[0]}") from e
        except json.JSONDecodeError:
            return self.model
        if not self.model:
            models = data.get("data") or []
            self.model = models[0]["id"] if models else "default"
        return self.model

    def complete(
        self, messages: list[dict], tools: list[dict] | None = None, deadline: float | None = None
    ) -> Completion:
        """One completion, retried with backoff on retryable errors; raises ModelError at the end."""
        attempt = 0
        while True:
            try:
                return self.complete_once(messages, tools, deadline)
            except ModelError as e:
                attempt += 1
                delay = self.retry_delay * 2 ** (attempt - 1)
                late = deadline is not None and time.monotonic() + delay >= deadline
                if not e.retryable or attempt > self.max_retries or late:
                    raise
                self.log(f"model error: {e}; retrying in {delay:.1f}s (retry {attempt}/{self.max_retries})")
                time.sleep(delay)

    def request_body(self, messages: list[dict], tools: list[dict] | None) -> dict:
        body: dict = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens, "stream": self.stream}
        if tools:
            body["tools"] = tools
            body["tool_choice"] = "auto"
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def complete_once(
        self, messages: list[dict], tools: list[dict] | None, deadline: float | None = None
    ) -> Completion:
        problem = check_base_url(self.base_url)
        if problem:
            raise ModelError(problem)
        url = self.base_url + "/chat/completions"
        data = json.dumps(self.request_body(messages, tools)).encode()
        timeout = self.timeout if deadline is None else max(0.1, min(self.timeout, deadline - time.monotonic()))
        start = time.monotonic()
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data, self.headers()), timeout=timeout) as resp:
                completion = (
                    read_stream(resp, self.on_text) if self.stream else parse_completion(json.loads(resp.read()))
                )
        except urllib.error.HTTPError as e:
            raise ModelError(
                f"HTTP {e.code} from {url}: {http_error_message(e)}", e.code, e.code in RETRYABLE_STATUS
            ) from e
        except (urllib.error.URLError, OSError) as e:
            msg, retry = describe_url_error(url, e)
            raise ModelError(msg, retryable=retry) from e
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
            raise ModelError(f"malformed reply from {url}: {e!r}", retryable=True) from e
        completion.latency_s = time.monotonic() - start
        return completion


def parse_completion(body: dict) -> Completion:
    choice = body["choices"][0]
    msg = choice.get("message") or {}
    calls = [
        {
            "id": c.get("id") or "",  # "" when the model gave none: the agent names the call itself
            "name": c["function"].get("name", ""),
            "arguments": as_text(c["function"].get("arguments")),
        }
        for c in msg.get("tool_calls") or []
    ]
    return Completion(content_text(msg.get("content")), calls, choice.get("finish_reason"), body.get("usage") or {})


def as_text(arguments) -> str:
    """Arguments are a JSON string by the spec; some servers send the object itself."""
    if arguments is None:
        return ""
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def content_text(content) -> str:
    """Content is a string by the spec; some servers send a list of typed parts."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def sse_events(resp) -> Iterator[dict]:
    """Yield the JSON payloads of a server-sent-event stream until [DONE]."""
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        yield json.loads(payload)


def read_stream(resp, on_text: Callable[[str], None] | None) -> Completion:
    """Reassemble a streamed reply: content pieces, tool-call fragments by index, final usage."""
    text, calls, finish, usage = [], {}, None, {}
    for event in sse_events(resp):
        if event.get("error"):
            raise ModelError(f"error in stream: {event['error']}", retryable=True)
        usage = event.get("usage") or usage
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                text.append(delta["content"])
                if on_text:
                    on_text(delta["content"])
            for tc in delta.get("tool_calls") or []:
                merge_tool_delta(calls, tc)
            finish = choice.get("finish_reason") or finish
    ordered = [calls[i] for i in sorted(calls)]
    return Completion("".join(text), ordered, finish, usage)


def merge_tool_delta(calls: dict[int, dict], tc: dict) -> None:
    """OpenAI streams a tool call as fragments sharing an index: the name once, the arguments in pieces."""
    slot = calls.setdefault(tc.get("index", len(calls)), {"id": "", "name": "", "arguments": ""})
    slot["id"] = tc.get("id") or slot["id"]
    fn = tc.get("function") or {}
    slot["name"] += fn.get("name") or ""
    slot["arguments"] += as_text(fn.get("arguments"))
