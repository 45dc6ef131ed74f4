"""python3 -m iflow_cli.testing.scripted_server --script FILE.json --port N

A scripted OpenAI-compatible model server (standard library only): it plays a fixed list of
responses, one per request, so that the agent, the model gateway and the training loop can be
tested end to end without a real model. It is the "scripted" model provider of iflow.

Each scripted response is one of:
  "text"                                              assistant text
  {"content": "...", "tool_calls": [{"name", "arguments"}], "finish_reason": "stop"}
  {"status": 500, "body": "message" | {...}}          an HTTP error
and any dict may add "delay": seconds (sleep before answering, for timeout tests). From Python,
`responses` may also be a function of the request body returning one such response (for
sessions whose order of calls is not fixed in advance, e.g. when the agent compresses).

Token ids are the UTF-8 bytes of the rendered prompt and of the response text (content plus the
tool calls rendered as `<tool_call>{json}</tool_call>`), and logprobs are a fixed function of
(byte, position), so that recorded chunks can be checked exactly.

Python: `with ScriptedServer(["hi"]) as s: ... s.url ... s.requests`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STREAM_PIECES = 3  # content is streamed in this many pieces so that clients must reassemble it


def render_prompt(messages: list[dict], tools: list[dict] | None = None) -> str:
    """A ChatML-like rendering of the request: its UTF-8 bytes are the prompt token ids."""
    parts = []
    if tools:
        parts.append("<|im_start|>tools\n" + json.dumps(tools, sort_keys=True) + "<|im_end|>\n")
    for m in messages:
        body = content_text(m.get("content"))
        for tc in m.get("tool_calls") or []:
            fn = tc.get("function", {})
            body += render_tool_call(fn.get("name", ""), fn.get("arguments", ""))
        parts.append(f"<|im_start|>{m.get('role', 'user')}\n{body}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def content_text(content: Any) -> str:
    """Message content as text: OpenAI allows a string, null, or a list of typed parts."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def render_tool_call(name: str, arguments: str) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def token_logprob(token: int, position: int) -> float:
    """Deterministic, always negative, differs between neighbours: easy to check after a round trip."""
    return -round(0.01 + ((token * 31 + position * 7) % 97) / 50.0, 4)


def logprob_entries(token_ids: list[int], start: int) -> list[dict]:
    """Chat-completions logprobs.content entries for tokens at positions start, start+1, ..."""
    return [
        {
            "token": bytes([t]).decode("latin-1"),
            "logprob": token_logprob(t, start + i),
            "bytes": [t],
            "top_logprobs": [],
        }
        for i, t in enumerate(token_ids)
    ]


def normalise(item: Any) -> dict:
    """One scripted response as a dict with content, tool_calls (OpenAI shape) or an error status."""
    if isinstance(item, str):
        return {"content": item, "tool_calls": []}
    if not isinstance(item, dict):
        raise ValueError(f"scripted response must be a string or an object, got {type(item).__name__}")
    if "status" in item:
        return dict(item)
    calls = [normalise_call(c) for c in item.get("tool_calls") or []]
    return {**item, "content": item.get("content"), "tool_calls": calls}


def normalise_call(call: dict) -> dict:
    """{"name", "arguments"} with arguments a dict (serialised) or a raw string (kept: may be malformed)."""
    args = call.get("arguments", {})
    return {"name": call["name"], "arguments": args if isinstance(args, str) else json.dumps(args)}


def response_text(resp: dict) -> str:
    """The text whose bytes are the response token ids: content then the rendered tool calls."""
    text = resp.get("content") or ""
    return text + "".join(render_tool_call(c["name"], c["arguments"]) for c in resp["tool_calls"])


def split_pieces(text: str, n: int) -> list[str]:
    size = max(1, -(-len(text) // n))
    return [text[i : i + size] for i in range(0, len(text), size)]


def error_body(status: int, body: Any) -> dict:
    if isinstance(body, dict):
        return body
    return {"error": {"message": str(body), "type": "scripted_error", "code": status}}


class ScriptedServer:
    """Plays `responses` in order on a threaded HTTP server; context manager.

    `.url` ends in /v1; `.requests` holds the JSON bodies received (in order); `.paths` their paths.
    With `api_key` set, requests without `Authorization: Bearer <api_key>` get a 401 (not consuming
    the script), as a real vendor endpoint would.
    """

    def __init__(
        self,
        responses: list | Callable[[dict], Any],
        port: int = 0,
        host: str = "127.0.0.1",
        model: str = "scripted",
        api_key: str | None = None,
    ):
        self.responder = responses if callable(responses) else None
        self.responses = [] if callable(responses) else [normalise(r) for r in responses]
        self.model = model
        self.api_key = api_key
        self.requests: list[dict] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self._next = 0
        self._httpd = _Server((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.scripted = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def remaining(self) -> int:
        return len(self.responses) - self._next

    def start(self) -> ScriptedServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="scripted-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def take(self, path: str, body: dict) -> tuple[int, dict | None]:
        """Record the request and hand out the next response: (request number, response or None if exhausted)."""
        with self._lock:
            self.requests.append(body)
            self.paths.append(path)
            number = len(self.requests)
            if self.responder is not None:
                return number, normalise(self.responder(body))
            if self._next >= len(self.responses):
                return number, None
            self._next += 1
            return number, self.responses[self._next - 1]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Many clients connect at once in the gateway tests and benchmarks; the default backlog of 5
    # refuses connections under that load.
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # A client that gave up (timeout tests do this on purpose) is not a server error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Keep-alive clients otherwise stall ~40 ms per reply on Nagle + delayed ACK.
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # quiet: tests read stderr of the agent, not of the server
        pass

    @property
    def scripted(self) -> ScriptedServer:
        return self.server.scripted  # type: ignore[attr-defined]

    def do_GET(self):
        if not self.authorised():
            return
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            model = {"id": self.scripted.model, "object": "model", "created": 0, "owned_by": "scripted"}
            return self.send_json(200, {"object": "list", "data": [model]})
        if self.path in ("/health", "/healthz"):
            return self.send_json(200, {"status": "ok"})
        self.send_json(404, error_body(404, f"no route GET {self.path}"))

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not self.authorised():
            return
        route = self.path.split("?")[0].rstrip("/")
        if route not in ("/v1/chat/completions", "/v1/completions"):
            return self.send_json(404, error_body(404, f"no route POST {self.path}"))
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError as e:
            return self.send_json(400, error_body(400, f"request body is not JSON: {e}"))
        number, resp = self.scripted.take(route, body)
        if resp is None:
            msg = f"scripted server: script exhausted ({len(self.scripted.responses)} responses, this is request {number})"
            return self.send_json(410, error_body(410, msg))
        time.sleep(float(resp.get("delay", 0)))
        if "status" in resp:
            return self.send_json(
                int(resp["status"]), error_body(int(resp["status"]), resp.get("body", "scripted error"))
            )
        chat = route.endswith("chat/completions")
        prompt = render_prompt(body.get("messages") or [], body.get("tools")) if chat else prompt_text(body)
        reply = Reply(self.scripted.model, body, resp, prompt, chat)
        if body.get("stream"):
            self.send_stream(reply.stream_chunks())
        else:
            self.send_json(200, reply.full())

    def authorised(self) -> bool:
        key = self.scripted.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self.send_json(
            401,
            {
                "error": {
                    "message": "Incorrect API key provided.",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            },
        )
        return False

    def send_json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_stream(self, chunks: list[dict]) -> None:
        # Server-sent events without Content-Length: the connection closes at the end of the stream.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


def prompt_text(body: dict) -> str:
    prompt = body.get("prompt", "")
    return "".join(prompt) if isinstance(prompt, list) else str(prompt)


class Reply:
    """One scripted response rendered as an OpenAI chat or text completion, whole or as stream chunks."""

    def __init__(self, model: str, request: dict, resp: dict, prompt: str, chat: bool):
        self.model = request.get("model") or model
        self.request = request
        self.resp = resp
        self.chat = chat
        self.prompt_ids = list(prompt.encode())
        self.text = response_text(resp) if chat else (resp.get("content") or "")
        self.ids = list(self.text.encode())
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:12]
        self.created = int(time.time())

    @property
    def want_ids(self) -> bool:
        return bool(self.request.get("return_token_ids"))

    @property
    def want_logprobs(self) -> bool:
        return bool(self.request.get("logprobs"))

    @property
    def finish_reason(self) -> str:
        default = "tool_calls" if self.chat and self.resp["tool_calls"] else "stop"
        return self.resp.get("finish_reason") or default

    def usage(self) -> dict:
        p, c = len(self.prompt_ids), len(self.ids)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def envelope(self, chunk: bool = False) -> dict:
        obj = "chat.completion" if self.chat else "text_completion"
        return {
            "id": self.id,
            "object": obj + (".chunk" if chunk and self.chat else ""),
            "created": self.created,
            "model": self.model,
        }

    def tool_calls(self) -> list[dict]:
        return [
            {
                "id": f"call_{self.id[-8:]}_{i}",
                "type": "function",
                "function": {"name": c["name"], "arguments": c["arguments"]},
            }
            for i, c in enumerate(self.resp["tool_calls"])
        ]

    def full(self) -> dict:
        choice: dict[str, Any] = {"index": 0, "finish_reason": self.finish_reason}
        if self.chat:
            msg: dict[str, Any] = {"role": "assistant", "content": self.resp.get("content")}
            if self.resp["tool_calls"]:
                msg["tool_calls"] = self.tool_calls()
            choice["message"] = msg
        else:
            choice["text"] = self.text
        self.add_token_info(choice, self.ids, 0)
        out = {**self.envelope(), "choices": [choice], "usage": self.usage()}
        if self.want_ids:
            out["prompt_token_ids"] = self.prompt_ids
        return out

    def add_token_info(self, choice: dict, ids: list[int], start: int) -> None:
        if self.want_ids:
            choice["token_ids"] = ids
        if self.want_logprobs:
            choice["logprobs"] = self.logprobs(ids, start)
        else:
            choice.setdefault("logprobs", None)

    def logprobs(self, ids: list[int], start: int) -> dict:
        if self.chat:
            return {"content": logprob_entries(ids, start)}
        tokens = [bytes([t]).decode("latin-1") for t in ids]
        return {
            "tokens": tokens,
            "token_logprobs": [token_logprob(t, start + i) for i, t in enumerate(ids)],
            "top_logprobs": None,
            "text_offset": list(range(start, start + len(ids))),
        }

    def stream_pieces(self) -> list[tuple[dict, str]]:
        """(delta, text whose bytes this chunk carries): role, content pieces, one chunk per tool call."""
        if not self.chat:
            return [({"text": p}, p) for p in split_pieces(self.text, STREAM_PIECES)]
        pieces: list[tuple[dict, str]] = [({"role": "assistant", "content": ""}, "")]
        pieces += [({"content": p}, p) for p in split_pieces(self.resp.get("content") or "", STREAM_PIECES)]
        for i, (call, raw) in enumerate(zip(self.tool_calls(), self.resp["tool_calls"], strict=True)):
            delta = {"tool_calls": [{"index": i, **call}]}
            pieces.append((delta, render_tool_call(raw["name"], raw["arguments"])))
        return pieces

    def stream_chunks(self) -> list[dict]:
        chunks, pos = [], 0
        for delta, text in self.stream_pieces():
            ids = list(text.encode())
            choice = {"index": 0, "finish_reason": None, **({"delta": delta} if self.chat else delta)}
            self.add_token_info(choice, ids, pos)
            chunks.append({**self.envelope(chunk=True), "choices": [choice]})
            pos += len(ids)
        last = {"index": 0, "finish_reason": self.finish_reason, **({"delta": {}} if self.chat else {"text": ""})}
        self.add_token_info(last, [], pos)
        chunks.append({**self.envelope(chunk=True), "choices": [last], "usage": self.usage()})
        if self.want_ids:
            chunks[0]["prompt_token_ids"] = self.prompt_ids
        return chunks


def load_script(path: str) -> list:
    """A script file is a JSON list of responses, or an object with a "responses" list."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data["responses"] if isinstance(data, dict) else data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python3 -m iflow_cli.testing.scripted_server",
        description=__doc__.split("\n\n")[1],
        epilog="\n\n".join(__doc__.split("\n\n")[2:4]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--script", required=True, help="JSON file: a list of responses (see module doc)")
    ap.add_argument("--port", type=int, default=0, help="TCP port (0 = a free one; the URL is printed)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--model", default="scripted", help="model id reported by /v1/models")
    ap.add_argument("--api-key", default=None, help="require this Bearer token (401 otherwise)")
    args = ap.parse_args(argv)
    server = ScriptedServer(
        load_script(args.script), port=args.port, host=args.host, model=args.model, api_key=args.api_key
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server:
        print(f"scripted server listening on {server.url}", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
