"""The model gateway: one unix socket per sandbox, served inside `rock serve`'s event loop.

    gw = ModelGateway(state_dir, default_upstream="http://127.0.0.1:9000/v1")
    await gw.start()
    att = await gw.attach("sbx1")          # mounts/env/command for the container
    ...                                    # the sandbox's agent calls $OPENAI_BASE_URL
    gw.trajectory("sbx1")                  # the recorded chunks
    await gw.detach("sbx1"); await gw.stop()

The in-sandbox proxy hands each of the agent's connections over the sandbox's socket
(handoff.py), and the gateway speaks HTTP/1.1 with the agent on it (wire.py). The socket a
connection arrives on names the sandbox; the bearer token must be that sandbox's.
Each call is forwarded to the sandbox's upstream with token ids and logprobs requested, streamed
back as it arrives, and recorded as a Chunk. Attachments are persisted, so a restarted manager
re-opens every socket with the same token. Tests: `.venv/bin/pytest tests/gateway`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from rock.gateway import replay, wire
from rock.gateway.chunks import ChunkStore, ResponseAggregate, Subscription
from rock.gateway.client import ReadTimeout, Response, TransportError, UpstreamPool
from rock.gateway.handoff import Listener
from rock.gateway.upstream import (
    UpstreamError,
    lines,
    open_upstream,
    parse_json_reply,
    quote,
    read_whole,
    strip_reply,
    upstream_body,
    url_for,
)

log = logging.getLogger(__name__)
PROXY_SOURCE = Path(__file__).resolve().parent.parent / "modelproxy.py"
ROUTES = {"/v1/chat/completions": "POST", "/v1/completions": "POST", "/v1/models": "GET"}


class GatewayError(ValueError):
    """A bad attach (no upstream, unknown sandbox); rock's server turns it into a 4xx."""


class GatewayConfig(BaseModel):
    """Tuning of the gateway; the defaults suit a local `rock serve`."""

    model_config = ConfigDict(extra="forbid")
    port: int = 8765  # the proxy's port on the sandbox's loopback
    container_socket_dir: str = "/run/rock"  # where the per-sandbox socket directory is mounted
    container_proxy_path: str = "/opt/rock/modelproxy.py"
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0  # between two bytes of the upstream's reply; a long decode is fine
    retries: int = 3  # extra attempts on 429/5xx/connect failure, before anything reached the agent
    backoff_s: float = 0.25  # doubled per attempt
    max_connections: int = 512  # pooled upstream connections, all upstreams together
    keepalive_timeout_s: float = 120.0  # an agent's idle connection is closed after this long
    # What one request of an agent may be (parsed by llhttp, rock/gateway/httpparse.py); past any of
    # these the request gets its 4xx (431, 413, 408) and the connection closes.
    max_head_bytes: int = Field(default=64 * 1024, gt=0)
    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    head_timeout_s: float = Field(default=10.0, gt=0)  # from a request's first byte to the end of its headers
    body_timeout_s: float = Field(default=60.0, gt=0)  # from the end of the headers to the end of the body
    max_agent_connections: int = 256  # open at once per sandbox; more are closed on arrival
    upstream_api_key: str | None = None  # sent upstream as Bearer; the sandbox's token never leaves the host


class ModelAttachment(BaseModel):
    """What the sandbox manager needs to wire a container to the gateway."""

    model_config = ConfigDict(extra="forbid")
    sandbox_id: str
    token: str
    upstream: str | None
    trajectory_id: str
    socket_path: str  # on the host
    mounts: list[tuple[str, str, bool]]  # (host_path, container_path, read_only)
    env: dict[str, str]
    command: list[str]  # run in the container once started; returns once the proxy listens
    replay: list[dict[str, Any]] | None = Field(default=None, exclude=True)


class Attached:
    """A live attachment: its listener, its in-flight calls, its replay position."""

    def __init__(self, att: ModelAttachment, upstream_key: str | None) -> None:
        self.att = att
        self.upstream_key = upstream_key
        self.listener: Listener | None = None
        self.replay_pos = 0


class ModelGateway:
    def __init__(self, state_dir: Path, default_upstream: str | None = None, config: GatewayConfig | None = None):
        self.state_dir = Path(state_dir)
        self.default_upstream = default_upstream
        self.config = c = config or GatewayConfig()
        self.limits = wire.Limits(
            c.max_head_bytes, c.max_body_bytes, c.keepalive_timeout_s, c.head_timeout_s, c.body_timeout_s
        )
        self.root = self.state_dir / "gateway"
        self.store = ChunkStore(self.root / "trajectories")
        self.attached: dict[str, Attached] = {}
        self.client: UpstreamPool | None = None

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the upstream pool and re-open the sockets of every attachment persisted before a restart."""
        c = self.config
        self.client = UpstreamPool(c.max_connections, c.connect_timeout_s, c.read_timeout_s)
        (self.root / "attachments").mkdir(parents=True, exist_ok=True)
        for f in sorted((self.root / "attachments").glob("*.json")):
            saved = json.loads(f.read_text())
            att = ModelAttachment(**saved["attachment"])
            live = Attached(att, saved.get("upstream_key"))
            att.replay = saved.get("replay")
            live.replay_pos = len(self.store.load(att.sandbox_id)) if att.replay else 0
            await self.listen(live)

    async def stop(self) -> None:
        """Close every socket and the pool; attachments stay persisted for the next start."""
        for sandbox_id in list(self.attached):
            await self.close_listener(self.attached.pop(sandbox_id))
        self.store.close()
        if self.client:
            await self.client.close()
            self.client = None

    async def attach(
        self,
        sandbox_id: str,
        upstream: str | None = None,
        trajectory_id: str | None = None,
        replay: list[dict[str, Any]] | str | None = None,
        upstream_api_key: str | None = None,
    ) -> ModelAttachment:
        """Create the sandbox's socket and token. Idempotent: attaching again returns the same attachment.

        `replay`: answer the sandbox's calls from these recorded chunks (or from those recorded
        for the sandbox of that id) instead of asking an upstream.
        """
        if isinstance(replay, str):
            source, replay = replay, self.trajectory(replay)
            if not replay:
                raise GatewayError(f"nothing recorded for sandbox {source!r} to replay")
        if sandbox_id in self.attached:
            return self.attached[sandbox_id].att
        if not sandbox_id or "/" in sandbox_id or sandbox_id.startswith("."):
            raise GatewayError(f"invalid sandbox id {sandbox_id!r}")
        upstream = upstream or self.default_upstream
        if not upstream and replay is None:
            raise GatewayError("no model upstream: pass model_upstream or start rock serve with --model-upstream")
        if upstream and not upstream.startswith(("http://", "https://")):
            raise GatewayError(f"model upstream must be an http(s) URL, got {upstream!r}")
        att = self.make_attachment(sandbox_id, upstream, trajectory_id or sandbox_id)
        att.replay = replay
        live = Attached(att, upstream_api_key or self.config.upstream_api_key)
        await self.listen(live)
        self.save(live)
        return att

    async def detach(self, sandbox_id: str) -> None:
        """Close the socket, end in-flight calls (recording what they got), forget the token."""
        live = self.attached.pop(sandbox_id, None)
        (self.root / "attachments" / f"{sandbox_id}.json").unlink(missing_ok=True)
        if live:
            await self.close_listener(live)

    async def reconcile(self, live_sandbox_ids: set[str]) -> None:
        """Detach every attachment whose sandbox is gone (after a manager restart re-adopted the rest)."""
        for sandbox_id in set(self.attached) - set(live_sandbox_ids):
            await self.detach(sandbox_id)

    def attachment(self, sandbox_id: str) -> ModelAttachment | None:
        """The live attachment, e.g. to run its `command` again in a container that was restarted."""
        live = self.attached.get(sandbox_id)
        return live.att if live else None

    def trajectory(self, sandbox_id: str, trajectory_id: str | None = None) -> list[dict[str, Any]]:
        """The sandbox's recorded chunks in the order they were recorded (also after detach and restart)."""
        chunks = self.store.load(sandbox_id)
        return [c for c in chunks if trajectory_id in (None, c["trajectory_id"])]

    def subscribe(self, sandbox_id: str | None = None, trajectory_id: str | None = None) -> Subscription:
        """New chunks as they are recorded (all sandboxes by default): `async for chunk in gw.subscribe()`."""
        return self.store.subscribe(sandbox_id, trajectory_id)

    def attachments(self) -> list[str]:
        return sorted(self.attached)

    # ---- sockets ---------------------------------------------------------------------------------

    def make_attachment(self, sandbox_id: str, upstream: str | None, trajectory_id: str) -> ModelAttachment:
        c = self.config
        sock_dir = self.root / "sockets" / sandbox_id
        token = "rock-" + secrets.token_urlsafe(32)
        container_sock = f"{c.container_socket_dir}/model.sock"
        return ModelAttachment(
            sandbox_id=sandbox_id,
            token=token,
            upstream=upstream,
            trajectory_id=trajectory_id,
            socket_path=str(sock_dir / "model.sock"),
            # The directory, not the socket, is mounted so that a restarted gateway can re-create
            # the socket; read-only so the sandbox cannot replace it (connect() still works).
            mounts=[(str(PROXY_SOURCE), c.container_proxy_path, True), (str(sock_dir), c.container_socket_dir, True)],
            env={
                "OPENAI_BASE_URL": f"http://127.0.0.1:{c.port}/v1",
                "OPENAI_API_BASE": f"http://127.0.0.1:{c.port}/v1",
                "OPENAI_API_KEY": token,
                "ROCK_TRAJECTORY_ID": trajectory_id,
            },
            command=[
                "python3",
                c.container_proxy_path,
                "--socket",
                container_sock,
                "--listen",
                f"127.0.0.1:{c.port}",
                "--daemon",
            ],
        )

    async def listen(self, live: Attached) -> None:
        path = Path(live.att.socket_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o755)
        path.unlink(missing_ok=True)
        sock = bind_unix(path)
        os.chmod(path, 0o666)  # any user inside the sandbox may call; the token is the credential
        live.listener = Listener(
            sock, lambda r, w: self.serve_connection(live, r, w), wire.MAX_HEAD, self.config.max_agent_connections
        )
        self.attached[live.att.sandbox_id] = live

    async def close_listener(self, live: Attached) -> None:
        if live.listener is None:
            return
        live.listener.close()
        tasks = list(live.listener.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        Path(live.att.socket_path).unlink(missing_ok=True)

    def save(self, live: Attached) -> None:
        data = {"attachment": live.att.model_dump(), "upstream_key": live.upstream_key, "replay": live.att.replay}
        f = self.root / "attachments" / f"{live.att.sandbox_id}.json"
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.chmod(tmp, 0o600)  # holds the token
        tmp.replace(f)

    # ---- one call --------------------------------------------------------------------------------

    async def serve_connection(self, live: Attached, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        """Requests on one connection of the agent's (handed over by the proxy) until it closes or
        an answer cannot be followed by another; idle keep-alive connections close after a while."""
        requests = wire.RequestReader(reader, writer, self.limits)
        try:
            while True:
                request = await requests.next()
                if request is None:
                    break
                out = wire.Responder(writer, request)
                await self.handle(live, request, out)
                if not out.reusable:
                    break
        except wire.BadRequest as e:
            await wire.Responder(writer, None).error(e.status, e.code, e.message)
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            pass  # the agent hung up or went idle, or the sandbox was detached: nothing left to answer
        except Exception:
            log.exception("gateway: call from sandbox %s failed", live.att.sandbox_id)
        finally:
            writer.close()

    async def handle(self, live: Attached, request: wire.Request, out: wire.Responder) -> None:
        if not hmac.compare_digest(request.bearer().encode(), live.att.token.encode()):
            return await out.error(401, "unauthorized", "missing or wrong API key for this sandbox")
        method = ROUTES.get(request.path)
        if method is None:
            where = "" if request.path.startswith("/v1/") else "; the model API is under /v1/"
            return await out.error(
                404, "not_found", f"no route {request.method} {request.path}{where}: it has {', '.join(ROUTES)}"
            )
        if request.method != method:
            return await out.error(405, "method_not_allowed", f"{request.path} takes {method}")
        if request.path == "/v1/models":
            return await self.models(live, out)
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError as e:
            return await out.error(400, "invalid_json", f"request body is not valid JSON: {e}")
        if not isinstance(body, dict):
            return await out.error(400, "invalid_json", "request body must be a JSON object")
        call = Call(live, request, body)
        try:
            if body.get("stream"):
                await self.stream(call, out)
            else:
                await self.whole(call, out)
        except UpstreamError as e:
            if e.body is not None and 400 <= e.status < 500:
                await out.json(e.status, e.body if is_json(e.body) else wire.error_body(e.code, e.message))
            else:
                await out.error(e.status, e.code, e.message)

    async def whole(self, call: Call, out: wire.Responder) -> None:
        if call.live.att.replay is not None:
            reply = replay.reply(self.next_replay(call.live), call.chat)
        else:
            resp = await self.open(call)
            reply = parse_json_reply(await read_whole(resp, str(resp.url)))
        call.agg.add(reply)
        self.record(call)
        await out.json(200, orjson.dumps(strip_reply(reply, call.body)))

    async def stream(self, call: Call, out: wire.Responder) -> None:
        """Relay the upstream's events as they come. The first event is read before answering, so
        that an upstream failure is still a proper HTTP error and not a broken stream."""
        events = self.replay_events(call) if call.live.att.replay is not None else self.upstream_events(call)
        try:
            first = await anext(events)
        except StopAsyncIteration:
            raise UpstreamError(502, "bad_upstream_reply", "upstream stream ended without any event") from None
        out.start_stream()
        done, ending = False, None  # ending: what closes the stream, written once the chunk is recorded
        try:
            event: dict[str, Any] | None = first
            while event is not None:
                call.agg.add(event)
                await out.event(orjson.dumps(strip_reply(event, call.body)))
                event = await anext(events, None)
            done, ending = True, b""
        except UpstreamError as e:
            call.error = e.message  # bytes already went out: end the stream with an error event
            ending = wire.error_body(e.code, e.message)
        except asyncio.CancelledError:
            call.error = "sandbox detached mid-stream"
            ending = b""  # best effort: the proxy may still be there to pass it on
            raise
        except ConnectionError:
            call.error = "client disconnected mid-stream"
        finally:
            await events.aclose()
            if not done and call.agg.finish_reason is None:
                call.agg.finish_reason = "abort"
            self.record(call)  # before the end goes out: a client that saw the end finds the record
            if ending is not None:
                if ending:
                    out.write_event(ending)
                out.end_stream()
        await out.writer.drain()

    async def open(self, call: Call) -> Response:
        live = call.live
        # the trajectory lets roll's inference pool keep a trajectory's calls on one engine (its prefix cache)
        headers = {"content-type": "application/json", "x-trajectory-id": call.trajectory_id}
        if live.upstream_key:
            headers["authorization"] = f"Bearer {live.upstream_key}"
        url = url_for(live.att.upstream, call.request.path)
        return await open_upstream(
            self.client, url, call.upstream_body(), headers, self.config.retries, self.config.backoff_s
        )

    async def upstream_events(self, call: Call) -> AsyncIterator[dict[str, Any]]:
        resp = await self.open(call)
        seen = b""  # the first bytes, to quote if the stream turns out not to be SSE
        try:
            async for line in lines(resp):
                if len(seen) < 200:
                    seen += line[:200] + b"\n"
                if not line.startswith(b"data:"):
                    continue  # blank separators, `: keep-alive` comments, `event:` lines
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    return
                try:
                    event = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    event = None
                if not isinstance(event, dict):
                    raise UpstreamError(502, "bad_upstream_reply", f"upstream sent a non-JSON event: {quote(line)}")
                yield event
            if not seen.lstrip().startswith((b"data:", b":", b"event:")):
                raise UpstreamError(502, "bad_upstream_reply", f"upstream did not answer with a stream: {quote(seen)}")
        except ReadTimeout as e:
            raise UpstreamError(504, "upstream_timeout", f"upstream stalled mid-reply ({e})") from e
        except TransportError as e:
            raise UpstreamError(502, "upstream_error", f"upstream connection broke: {e}") from e
        finally:
            resp.release()  # pooled again only if the stream was read to its end

    async def replay_events(self, call: Call) -> AsyncIterator[dict[str, Any]]:
        for event in replay.events(self.next_replay(call.live), call.chat):
            yield event

    def next_replay(self, live: Attached) -> dict[str, Any]:
        chunks = live.att.replay or []
        if live.replay_pos >= len(chunks):
            raise UpstreamError(410, "replay_exhausted", f"the replayed trajectory has only {len(chunks)} calls")
        live.replay_pos += 1
        return chunks[live.replay_pos - 1]

    async def models(self, live: Attached, out: wire.Responder) -> None:
        if live.att.replay is not None:
            names = sorted({c.get("model") or "replay" for c in live.att.replay}) or ["replay"]
            data = {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "rock-replay"} for n in names]}
            return await out.json(200, orjson.dumps(data))
        headers = {"authorization": f"Bearer {live.upstream_key}"} if live.upstream_key else {}
        try:
            resp = await self.client.request("GET", url_for(live.att.upstream, "/v1/models"), None, headers)
            try:
                status, data = resp.status, await resp.read(1 << 20)
            finally:
                resp.release()
        except ReadTimeout:
            return await out.error(504, "upstream_timeout", "upstream did not list its models in time")
        except TransportError as e:
            return await out.error(502, "upstream_unreachable", f"upstream: {e}")
        if status != 200 or not is_json(data):
            return await out.error(502, "upstream_error", f"upstream answered {status}: {quote(data)}")
        await out.json(200, data)

    def record(self, call: Call) -> None:
        """Append the call's chunk (the fields of `Chunk`, in its order). Built as a plain dict and
        not validated field by field: the token lists run to tens of thousands of ids per call, and
        a recording failure is logged rather than failing the agent."""
        agg, att = call.agg, call.live.att
        chunk = {
            "trajectory_id": call.trajectory_id,
            "sandbox_id": att.sandbox_id,
            "index": self.store.next_index(att.sandbox_id, call.trajectory_id),
            "prompt_token_ids": agg.prompt_token_ids,
            "response_token_ids": agg.token_ids,
            "response_logprobs": agg.logprobs,
            "policy_version": agg.policy_version,
            "messages": call.body.get("messages") if call.chat else None,
            "prompt": None if call.chat else call.body.get("prompt"),
            "tools": call.body.get("tools"),
            "response": agg.response(),
            "finish_reason": agg.finish_reason,
            "latency_s": round(time.monotonic() - call.started, 6),
            "endpoint": "chat.completions" if call.chat else "completions",
            "model": agg.model or call.body.get("model"),
            "error": call.error,
            "created_at": time.time(),
        }
        try:
            self.store.append(chunk)
        except Exception:
            log.exception("gateway: could not record a call of sandbox %s", att.sandbox_id)


class Call:
    """One model call in flight: the request, its trajectory, and what the reply has brought so far."""

    def __init__(self, live: Attached, request: wire.Request, body: dict[str, Any]) -> None:
        self.live, self.request, self.body = live, request, body
        self.chat = request.path == "/v1/chat/completions"
        self.trajectory_id = request.headers.get("x-trajectory-id") or live.att.trajectory_id
        self.agg = ResponseAggregate()
        self.started = time.monotonic()
        self.error: str | None = None

    def upstream_body(self) -> dict[str, Any]:
        return upstream_body(self.body, self.chat)


def bind_unix(path: Path) -> socket.socket:
    """A listening unix socket at `path`, also when `path` is longer than sun_path's 107 bytes
    (deep state dirs under pytest's tmp_path): bind through /proc/self/fd/N of its directory."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if len(os.fsencode(path)) < 100:
        sock.bind(str(path))
    else:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            sock.bind(f"/proc/self/fd/{dir_fd}/{path.name}")
        finally:
            os.close(dir_fd)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def is_json(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True
