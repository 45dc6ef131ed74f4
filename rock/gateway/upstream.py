"""The gateway's side towards the model: rewrite the request so the upstream returns token ids
and sampling logprobs, send it with bounded retries, and strip from the reply what the agent
did not ask for. Tests: `.venv/bin/pytest tests/gateway/test_gateway.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from rock.gateway.client import (
    BrokenReply,
    ConnectFailed,
    ConnectTimeout,
    ReadTimeout,
    Response,
    TransportError,
    UpstreamPool,
)

RETRY_STATUSES = {429, 500, 502, 503, 504}


class UpstreamError(Exception):
    """The upstream failed in a way the agent should see as a gateway error (502/504) or as its own 4xx."""

    def __init__(self, status: int, code: str, message: str, body: bytes | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.body = status, code, message, body


def quote(data: bytes, limit: int = 200) -> str:
    """The first bytes of a bad reply, quoted so the agent's error message shows what came back."""
    return repr(data[:limit]) + ("..." if len(data) > limit else "")


def url_for(upstream: str, path: str) -> str:
    """`path` is the agent's /v1/...; the upstream URL is a base that ends in /v1 (rome, vLLM, OpenAI)."""
    base = upstream.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    return base + path[len("/v1") :]


def upstream_body(request: dict[str, Any], chat: bool) -> dict[str, Any]:
    """The request as sent upstream: vLLM's extras ask for the token ids and the sampled logprobs."""
    body = dict(request)
    body["return_token_ids"] = True
    if chat:
        body["logprobs"] = True
    elif request.get("logprobs") is None:
        body["logprobs"] = 1  # completions: an int; 1 = the sampled token's logprob plus the top one
    return body


def strip_reply(reply: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """Remove, in place, the extras that the gateway asked for and the agent did not."""
    wants_ids = bool(request.get("return_token_ids"))
    wants_logprobs = request.get("logprobs") not in (None, False)
    if not wants_ids:
        reply.pop("prompt_token_ids", None)
    for choice in reply.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        if not wants_ids:
            choice.pop("token_ids", None)
            choice.pop("prompt_token_ids", None)
        if not wants_logprobs and "logprobs" in choice:
            choice["logprobs"] = None
    return reply


def parse_json_reply(data: bytes) -> dict[str, Any]:
    try:
        reply = orjson.loads(data)
    except orjson.JSONDecodeError:
        reply = None
    if not isinstance(reply, dict):
        raise UpstreamError(
            502, "bad_upstream_reply", f"upstream returned a reply that is not a JSON object: {quote(data)}"
        )
    return reply


async def open_upstream(
    pool: UpstreamPool,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    retries: int,
    backoff_s: float,
) -> Response:
    """A response with a 2xx status whose body is not yet read; retried on 429/5xx and connection
    failures, which is safe because nothing has reached the agent yet."""
    content = orjson.dumps(body)
    for attempt in range(retries + 1):
        last = attempt == retries
        try:
            resp = await pool.request("POST", url, content, headers)
        except (ConnectFailed, ConnectTimeout) as e:
            if not last:
                await asyncio.sleep(backoff_s * 2**attempt)
                continue
            if isinstance(e, ConnectTimeout):
                raise UpstreamError(504, "upstream_timeout", f"upstream {url} did not answer in time ({e})") from e
            raise UpstreamError(502, "upstream_unreachable", f"upstream {url}: {e}") from e
        except ReadTimeout as e:
            raise UpstreamError(504, "upstream_timeout", f"upstream {url} did not answer in time ({e})") from e
        except BrokenReply as e:
            raise UpstreamError(502, "bad_upstream_reply", f"upstream {url} sent a broken reply: {e}") from e
        if resp.status < 300:
            return resp
        data = await read_capped(resp)
        if resp.status in RETRY_STATUSES and not last:
            await asyncio.sleep(retry_after(resp, backoff_s * 2**attempt))
            continue
        raise upstream_status_error(url, resp.status, data, attempt + 1)
    raise AssertionError("unreachable: the last attempt returns or raises")


async def read_capped(resp: Response, limit: int = 4096) -> bytes:
    try:
        return await resp.read(limit)
    except TransportError:
        return b""
    finally:
        resp.close()


async def read_whole(resp: Response, url: str) -> bytes:
    try:
        return await resp.read()
    except ReadTimeout as e:
        raise UpstreamError(504, "upstream_timeout", f"upstream {url} stalled mid-reply") from e
    except TransportError as e:
        raise UpstreamError(502, "upstream_error", f"upstream {url} broke off its reply: {e}") from e
    finally:
        resp.release()


async def lines(resp: Response) -> AsyncIterator[bytes]:
    """The body's lines as they arrive (without a cap on line length)."""
    buf = b""
    async for data in resp.iter_any():
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.rstrip(b"\r")
    if buf:
        yield buf


def retry_after(resp: Response, default: float) -> float:
    try:
        return min(float(resp.headers.get("retry-after", default)), 10.0)
    except ValueError:
        return default


def upstream_status_error(url: str, status: int, data: bytes, attempts: int) -> UpstreamError:
    if 400 <= status < 500:
        # The agent's own mistake (bad model name, context too long) or rate limit: pass it on as is.
        return UpstreamError(status, "upstream_rejected", f"upstream answered {status}: {quote(data)}", data)
    code = "upstream_timeout" if status == 504 else "upstream_error"
    return UpstreamError(
        504 if status == 504 else 502,
        code,
        f"upstream {url} answered {status} after {attempts} attempt(s): {quote(data)}",
    )
