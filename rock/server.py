"""ROCK REST v1 over FastAPI; run it with `rock serve --token T` (or `python -m rock serve`).

Endpoints are one-line calls into `SandboxService`. Every route but `/healthz` needs
`Authorization: Bearer <token>`; every error is `{"error": {"code", "message"}}` with a 4xx
status (502 only when the Docker daemon itself fails).

`GET /v1/chunks/stream?sandbox_id=&trajectory_id=&keepalive_s=` streams the gateway's chunks as they are
recorded (NDJSON `rock.models.ChunkEvent`: `open`, then `chunk`s, a `keepalive` line after `keepalive_s` without
one); `GET /v1/chunks/count` says how many a trajectory has (`.venv/bin/pytest tests/roll/test_stream.py`).
"""

from __future__ import annotations

import logging
import secrets
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rock import errors
from rock.config import ServerConfig
from rock.models import (
    ChunkCount,
    CreateSandbox,
    CreateSession,
    ExecRequest,
    ExecResult,
    ImageBuilt,
    Sandbox,
    SandboxList,
    SessionInfo,
    SessionRun,
    Snapshot,
    SnapshotList,
)
from rock.service import SandboxService

log = logging.getLogger("rock.server")
TAR = "application/x-tar"


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return "; ".join(parts)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or PayloadTooLarge as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise errors.PayloadTooLarge(f"body of {declared} bytes is over the upload limit of {limit} bytes")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise errors.PayloadTooLarge(f"body is over the upload limit of {limit} bytes")
    return bytes(buf)


def _mode(mode: str | None) -> int:
    if mode is None:
        return 0o644
    try:
        value = int(mode, 8)
    except ValueError:
        raise errors.BadRequest(f"mode must be octal like 644 or 755, not {mode!r}") from None
    if not 0 <= value <= 0o7777:
        raise errors.BadRequest(f"mode {mode} is out of range")
    return value


def create_app(config: ServerConfig) -> FastAPI:
    svc = SandboxService(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await svc.start()
        try:
            yield
        finally:
            await svc.stop()

    app = FastAPI(title="ROCK sandbox manager", version="1", lifespan=lifespan)
    app.state.service = svc

    @app.exception_handler(errors.RockError)
    async def rock_error(request: Request, exc: errors.RockError):
        svc.metrics.errors.labels(exc.code).inc()
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        svc.metrics.errors.labels("validation_error").inc()
        return _error(422, "validation_error", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        svc.metrics.errors.labels(code).inc()
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        # The daemon or a bug: say what failed instead of a bare 500 page.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        svc.metrics.errors.labels("backend_error").inc()
        return _error(502, "backend_error", f"{type(exc).__name__}: {exc}")

    def auth(request: Request) -> None:
        got = request.headers.get("authorization", "")
        if not secrets.compare_digest(got.encode(), f"Bearer {config.token}".encode()):
            raise errors.Unauthorized("missing or wrong bearer token")

    add_routes(app, svc, Depends(auth))
    return app


def add_routes(app: FastAPI, svc: SandboxService, auth) -> None:
    lim = svc.limits
    deps = [auth]

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}

    @app.get("/metrics", dependencies=deps)
    async def metrics() -> Response:
        return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/sandboxes", status_code=201, dependencies=deps)
    async def create(body: CreateSandbox) -> Sandbox:
        return await svc.create(body)

    @app.get("/v1/sandboxes", dependencies=deps)
    async def list_sandboxes() -> SandboxList:
        return SandboxList(sandboxes=await svc.list())

    @app.get("/v1/sandboxes/{sandbox_id}", dependencies=deps)
    async def get(sandbox_id: str) -> Sandbox:
        return await svc.get(sandbox_id)

    @app.delete("/v1/sandboxes/{sandbox_id}", status_code=204, dependencies=deps)
    async def delete(sandbox_id: str) -> Response:
        await svc.delete(sandbox_id)
        return Response(status_code=204)

    @app.post("/v1/sandboxes/{sandbox_id}/exec", dependencies=deps, response_model=ExecResult)
    async def exec_(sandbox_id: str, body: ExecRequest, stream: bool = False):
        if stream:
            return StreamingResponse(await svc.exec_stream(sandbox_id, body), media_type="application/x-ndjson")
        return await svc.exec(sandbox_id, body)

    @app.post("/v1/sandboxes/{sandbox_id}/sessions", status_code=201, dependencies=deps)
    async def create_session(sandbox_id: str, body: CreateSession | None = None) -> SessionInfo:
        return await svc.create_session(sandbox_id, body or CreateSession())

    @app.post("/v1/sandboxes/{sandbox_id}/sessions/{session_id}/run", dependencies=deps)
    async def run_session(sandbox_id: str, session_id: str, body: SessionRun) -> ExecResult:
        return await svc.run_session(sandbox_id, session_id, body)

    @app.delete("/v1/sandboxes/{sandbox_id}/sessions/{session_id}", status_code=204, dependencies=deps)
    async def delete_session(sandbox_id: str, session_id: str) -> Response:
        await svc.delete_session(sandbox_id, session_id)
        return Response(status_code=204)

    @app.put("/v1/sandboxes/{sandbox_id}/files", status_code=204, dependencies=deps)
    async def put_file(sandbox_id: str, path: str, request: Request, mode: str | None = None) -> Response:
        await svc.put_file(sandbox_id, path, await read_body(request, lim.max_upload_bytes), _mode(mode))
        return Response(status_code=204)

    @app.get("/v1/sandboxes/{sandbox_id}/files", dependencies=deps)
    async def get_file(sandbox_id: str, path: str) -> Response:
        return Response(await svc.get_file(sandbox_id, path), media_type="application/octet-stream")

    @app.put("/v1/sandboxes/{sandbox_id}/archive", status_code=204, dependencies=deps)
    async def put_archive(sandbox_id: str, path: str, request: Request) -> Response:
        await svc.put_archive(sandbox_id, path, await read_body(request, lim.max_upload_bytes))
        return Response(status_code=204)

    @app.get("/v1/sandboxes/{sandbox_id}/archive", dependencies=deps)
    async def get_archive(sandbox_id: str, path: str) -> Response:
        return Response(await svc.get_archive(sandbox_id, path), media_type=TAR)

    @app.post("/v1/sandboxes/{sandbox_id}/snapshots", status_code=201, dependencies=deps)
    async def snapshot(sandbox_id: str) -> Snapshot:
        return await svc.snapshot(sandbox_id)

    @app.get("/v1/snapshots", dependencies=deps)
    async def list_snapshots() -> SnapshotList:
        return SnapshotList(snapshots=await svc.list_snapshots())

    @app.delete("/v1/snapshots/{snapshot_id}", status_code=204, dependencies=deps)
    async def delete_snapshot(snapshot_id: str) -> Response:
        await svc.delete_snapshot(snapshot_id)
        return Response(status_code=204)

    @app.post("/v1/images", dependencies=deps)
    async def build_image(request: Request) -> ImageBuilt:
        return await svc.build_image(await read_body(request, lim.max_upload_bytes))

    @app.get("/v1/chunks/stream", dependencies=deps)
    async def chunk_stream(sandbox_id: str | None = None, trajectory_id: str | None = None,
                           keepalive_s: float = Query(15.0, gt=0, le=300)) -> StreamingResponse:  # fmt: skip
        lines = await svc.chunk_stream(sandbox_id, trajectory_id, keepalive_s)
        return StreamingResponse(lines, media_type="application/x-ndjson")

    @app.get("/v1/chunks/count", dependencies=deps)
    async def chunk_count(sandbox_id: str, trajectory_id: str) -> ChunkCount:
        return await svc.chunk_count(sandbox_id, trajectory_id)

    @app.get("/v1/sandboxes/{sandbox_id}/trajectory", dependencies=deps)
    async def trajectory(sandbox_id: str) -> Response:
        return Response(svc.trajectory_lines(await svc.trajectory(sandbox_id)), media_type="application/x-ndjson")
