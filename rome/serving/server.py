"""The OpenAI-compatible HTTP server: `rome serve --model DIR [--engine vllm|hf] [--admin-token T]`.

Routes: GET /v1/models, POST /v1/chat/completions, POST /v1/completions, GET /healthz,
POST /admin/load_weights (Bearer admin token; loads in place). `start_server(...)` runs the same app in a
background thread with its own event loop and returns a handle once it answers; it installs
no signal handlers, so it works off the main thread (inside a Ray actor).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import threading
from collections.abc import Iterable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rome.errors import RomeError
from rome.serving.engine import EngineKind
from rome.serving.protocol import ChatCompletionRequest, CompletionRequest, LoadWeightsRequest
from rome.serving.service import ApiError, ModelService

log = logging.getLogger("rome.serve")


def _sse(chunks) -> StreamingResponse:
    async def body():
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n"
        except Exception as e:  # headers are gone: report in-band like OpenAI does
            log.exception("stream failed")
            yield f"data: {json.dumps(ApiError(500, str(e), 'server_error').body())}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


def create_app(service: ModelService, admin_token: str | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="rome serve", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RomeError)
    async def _rome_error(request: Request, e: RomeError):
        return JSONResponse(ApiError(400, str(e)).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        # FastAPI's own errors (a body it cannot parse, an unknown route) in the same OpenAI shape as ours.
        return JSONResponse(ApiError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"] if x != "body")
        return JSONResponse(ApiError(400, f"{where}: {first['msg']}", param=where).body(), status_code=400)

    @app.get("/healthz")
    async def healthz():
        return service.health()

    @app.get("/v1/models")
    async def models():
        return service.models()

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest):
        return _sse(await service.chat_stream(req)) if req.stream else await service.chat(req)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        return _sse(await service.complete_stream(req)) if req.stream else await service.complete(req)

    @app.post("/admin/load_weights")
    async def load_weights(req: LoadWeightsRequest, request: Request):
        _check_admin(request, admin_token)
        return await service.load_weights(req.path, req.policy_version)

    return app


def _check_admin(request: Request, admin_token: str | None) -> None:
    if admin_token is None:
        raise ApiError(403, "admin routes are disabled: start the server with --admin-token", "permission_denied")
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), admin_token.encode()):
        raise ApiError(401, "missing or wrong admin token (Authorization: Bearer ...)", "unauthorized")


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), port 0 = any free one, held until the server listens on it.

    Binding here, before the engine loads, keeps the port ours: picking a free port and binding it
    only after start-up let vLLM's own ports (taken while it loads) land on it (CI, session 15).
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise RomeError(f"rome serve cannot bind {host}:{port}: {e.strerror}; choose another --port") from None
    return sock


class ServerHandle:
    """A server running in a background thread; returned by `start_server` once it answers."""

    def __init__(
        self,
        service: ModelService,
        server,
        thread: threading.Thread,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
    ):
        self.service, self._server, self._thread, self._loop = service, server, thread, loop
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}/v1"

    @property
    def policy_version(self) -> int:
        return self.service.policy_version

    def load_weights(self, path: str | Path, policy_version: int, timeout: float | None = 600) -> dict:
        """Load new weights (same architecture) into the running engine; waits for in-flight requests."""
        future = asyncio.run_coroutine_threadsafe(self.service.load_weights(path, policy_version), self._loop)
        return future.result(timeout)

    def update_weights_from_bytes(
        self, buckets: Iterable[bytes], policy_version: int, timeout: float | None = 600
    ) -> dict:
        """Load safetensors buckets of whole layers (`rome.serving.weights.state_dict_buckets`), no disk.

        buckets is read one at a time on the server's thread, so a generator keeps the extra
        memory to one bucket; waits for in-flight requests like load_weights.
        """
        coro = self.service.update_weights_from_bytes(buckets, policy_version)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self, timeout: float = 60) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(
    model_dir: str | Path,
    engine: EngineKind = "vllm",
    host: str = "127.0.0.1",
    port: int = 0,
    admin_token: str | None = None,
    startup_timeout: float = 900,
) -> ServerHandle:
    """Serve model_dir from a background thread of this process; returns when the server answers.

    Raises the start-up error (bad model dir, engine failure) in the caller's thread.
    """
    import uvicorn

    sock = _bind(host, port)
    port = sock.getsockname()[1]
    try:
        service = ModelService(model_dir, engine)
    except BaseException:
        sock.close()
        raise
    config = uvicorn.Config(create_app(service, admin_token), host=host, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    loop = asyncio.new_event_loop()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            # serve() rather than run(): run() would install signal handlers, main thread only.
            loop.run_until_complete(server.serve(sockets=[sock]))
        except BaseException as e:
            failure.append(e)
        finally:
            loop.close()
            sock.close()

    thread = threading.Thread(target=run, name=f"rome-serve-{port}", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            error = failure[0] if failure else None
            if error is None or isinstance(error, SystemExit):  # uvicorn exits on a failed lifespan or bind
                raise RomeError(f"rome serve on port {port} exited during start-up; the log above says why") from error
            raise error
        thread.join(0.1)
        startup_timeout -= 0.1
        if startup_timeout <= 0:
            server.should_exit = True
            raise RomeError(f"rome serve on port {port} did not start in time")
    return ServerHandle(service, server, thread, loop, host, port)


def serve_forever(
    model_dir: str | Path,
    engine: EngineKind = "vllm",
    host: str = "127.0.0.1",
    port: int = 8000,
    admin_token: str | None = None,
) -> None:
    """The `rome serve` command: blocks; Ctrl-C stops it (uvicorn handles the signals)."""
    import uvicorn

    sock = _bind(host, port)
    try:
        service = ModelService(model_dir, engine)
        print(f"rome serve: {service.model_dir} on http://{host}:{port}/v1 (engine {engine})", flush=True)
        config = uvicorn.Config(create_app(service, admin_token), host=host, port=port, log_level="info")
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
