"""The inference pool: `inference.engines` InferenceServer Ray actors behind one OpenAI-compatible endpoint
(`.venv/bin/pytest tests/roll/test_pool.py`; two real vLLM engines: `-m slow tests/roll/test_pool.py`).

With one engine the pool's URL is that engine's own (no hop). With more, a `Router` in a thread of the driver
serves the URL the rock gateway forwards to (`model_upstream`) and sends each request to one engine:

- sticky per trajectory: the gateway names the call's trajectory in the `x-trajectory-id` header, and every call
  of a trajectory goes to the engine its first call went to, so that the engine's prefix cache holds the
  conversation so far (an agent's next call repeats the whole of it);
- least-loaded for a new trajectory (or a call without the header): the engine with fewest requests in flight,
  then with fewest trajectories so far;
- replies passed through as they come (a stream piece by piece, unbuffered) with their `policy_version`.

It reuses the gateway's HTTP pieces (rock/gateway/wire.py to read requests and write answers, client.py's pooled
upstream connections). An engine that refuses the connection or stops answering is named in the 502/504 the router
answers ("inference engine 2 of 2 died: ...") and in `failures`, which the driver's check_inference turns into a
WorkerDied. Weight updates go to every engine at once (each in memory), and the pool checks that every engine
reports the new policy version before the driver counts it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from rock.gateway.client import BrokenReply, ConnectFailed, ConnectTimeout, ReadTimeout, TransportError, UpstreamPool
from rock.gateway.upstream import url_for
from rock.gateway.wire import MAX_HEAD, BadRequest, Limits, Request, RequestReader, Responder, error_body
from roll.errors import RollError

log = logging.getLogger("roll.pool")
TRAJECTORY_HEADER = "x-trajectory-id"  # set by the gateway on every call it forwards (rock/gateway/gateway.py)
FORWARDED = ("content-type", "authorization", "accept", TRAJECTORY_HEADER)


class EngineVersionMismatch(RollError):
    """After a weight update not every engine serves the new policy version."""


def engine_names(n: int) -> list[str]:
    """How the driver names each engine in errors: one engine is 'the inference worker' as before."""
    return ["inference"] if n == 1 else [f"inference engine {i + 1} of {n}" for i in range(n)]


class Router:
    """An HTTP/1.1 proxy on loopback in front of `urls` (engine base URLs ending in /v1), on its own event loop
    in a background thread; see the module docstring for the routing."""

    def __init__(self, urls: list[str], names: list[str] | None = None, read_timeout_s: float = 600,
                 connect_timeout_s: float = 5, max_sticky: int = 100_000):  # fmt: skip
        self.urls, self.names = list(urls), names or engine_names(len(urls))
        self.read_timeout_s, self.connect_timeout_s, self.max_sticky = read_timeout_s, connect_timeout_s, max_sticky
        n = len(urls)
        self.in_flight, self.requests, self.trajectories = [0] * n, [0] * n, [0] * n
        self.sticky: OrderedDict[str, int] = OrderedDict()  # trajectory id -> engine index, oldest first
        self.failures: dict[int, str] = {}  # engine index -> what the router saw go wrong
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[asyncio.Task] = set()

    # -- routing (runs on the router's loop only)
    def pick(self, trajectory: str | None) -> int:
        """The engine for a call of `trajectory`: its engine so far, else the least-loaded live one."""
        if trajectory and (i := self.sticky.get(trajectory)) is not None:
            self.sticky.move_to_end(trajectory)
            return i
        i = min(range(len(self.urls)), key=lambda j: (j in self.failures, self.in_flight[j], self.trajectories[j], j))
        if trajectory:
            self.sticky[trajectory] = i
            self.trajectories[i] += 1
            if len(self.sticky) > self.max_sticky:  # finished trajectories are never called again
                self.sticky.popitem(last=False)
        return i

    # -- lifecycle (from any thread)
    def start(self, host: str = "127.0.0.1") -> str:
        """Listen on a free port of `host`; returns the base URL (ends in /v1)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="roll-router", daemon=True)
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._open(host), self._loop).result(30)
        self.url = f"http://{host}:{port}/v1"
        return self.url

    async def _open(self, host: str) -> int:
        self._upstream = UpstreamPool(1024, self.connect_timeout_s, self.read_timeout_s)
        self._server = await asyncio.start_server(self._serve, host, 0, limit=MAX_HEAD)
        return self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._loop is None or not self._loop.is_running():
            return

        async def close() -> None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._upstream.close()

        try:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def counts(self) -> list[int]:
        """Requests routed to each engine so far."""
        return list(self.requests)

    # -- one connection, one request
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        requests = RequestReader(reader, writer, Limits(idle_timeout_s=self.read_timeout_s))
        try:
            while (request := await requests.next()) is not None:
                out = Responder(writer, request)
                await self._forward(request, out)
                if not out.reusable:
                    break
        except BadRequest as e:
            await Responder(writer, None).error(e.status, e.code, e.message)
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            pass  # the client hung up, or the router is stopping
        except Exception:
            log.exception("router: a request failed")
        finally:
            writer.close()
            self._connections.discard(task)

    async def _forward(self, request: Request, out: Responder) -> None:
        if not request.path.startswith("/v1/"):
            return await out.error(404, "not_found", f"no route {request.path}: the model API is under /v1/")
        i = self.pick(request.headers.get(TRAJECTORY_HEADER))
        name, url = self.names[i], url_for(self.urls[i], request.path)
        headers = {k: request.headers[k] for k in FORWARDED if k in request.headers}
        self.in_flight[i] += 1
        self.requests[i] += 1
        try:
            try:
                resp = await self._upstream.request(request.method, url, request.body or None, headers)
            except (ConnectFailed, ConnectTimeout, BrokenReply) as e:
                return await out.error(502, "engine_died", self._failed(i, f"{name} died: {e}"))
            except ReadTimeout:
                why = f"{name} did not answer within {self.read_timeout_s:g}s"
                return await out.error(504, "engine_timeout", self._failed(i, why))
            try:
                await self._relay(i, resp, out)
            finally:
                resp.release()
        finally:
            self.in_flight[i] -= 1

    async def _relay(self, i: int, resp, out: Responder) -> None:
        """The engine's reply as it is: a whole body with its length, or a stream re-framed piece by piece."""
        ctype = resp.headers.get("content-type", "application/json")
        if resp.length is not None:
            try:
                body = await resp.read()
            except TransportError as e:
                return await out.error(502, "engine_died", self._failed(i, f"{self.names[i]} broke off: {e}"))
            out.writer.write(out.head(resp.status, ctype, len(body)) + body)
            await out.writer.drain()
            out.reusable = out.keep_alive
            return
        out.writer.write(out.head(resp.status, ctype, None))
        try:
            async for piece in resp.iter_any():
                out.write_framed(piece)
                await out.writer.drain()
        except TransportError as e:  # the head went out: end the stream with an error event
            out.write_event(error_body("engine_died", self._failed(i, f"{self.names[i]} broke off: {e}")))
            out.write_framed(b"data: [DONE]\n\n")
        if out.chunked:
            out.writer.write(b"0\r\n\r\n")
            out.reusable = out.keep_alive
        await out.writer.drain()

    def _failed(self, i: int, why: str) -> str:
        self.failures.setdefault(i, why)
        log.warning("router: %s", why)
        return why


class InferencePool:
    """The run's engines (InferenceServer Ray actors) and, with more than one, the router in front of them.

    `get(worker_name, ref, timeout)` is the driver's ray.get (Run._get), which turns an engine's death into a
    WorkerDied naming it; every call to the engines is submitted to all of them before any is awaited."""

    def __init__(self, actors: list, get: Callable[..., Any], router_timeout_s: float = 600):
        self.actors, self.get, self.router_timeout_s = list(actors), get, router_timeout_s
        self.names = engine_names(len(self.actors))
        self.engine_urls: list[str] = []
        self.router: Router | None = None
        self.url = ""
        self._reported = [0] * len(self.actors)

    def __len__(self) -> int:
        return len(self.actors)

    def wait_ready(self, timeout: float) -> str:
        """Wait for every engine to serve; start the router if there are several. Returns the pool's URL."""
        self.engine_urls = self._all("url", timeout=timeout)
        if len(self.actors) == 1:
            self.url = self.engine_urls[0]
        else:
            self.router = Router(self.engine_urls, self.names, read_timeout_s=self.router_timeout_s)
            self.url = self.router.start()
        return self.url

    def _all(self, method: str, *args, timeout: float | None = None) -> list:
        refs = [getattr(a, method).remote(*args) for a in self.actors]
        return [self.get(name, ref, timeout) for name, ref in zip(self.names, refs, strict=True)]

    def policy_versions(self, timeout: float | None = 120) -> list[int]:
        return self._all("policy_version", timeout=timeout)

    def _check_version(self, version: int) -> None:
        versions = self.policy_versions()
        wrong = [f"{n} serves {v}" for n, v in zip(self.names, versions, strict=True) if v != version]
        if wrong:
            raise EngineVersionMismatch(f"after the update to policy version {version}: {', '.join(wrong)}")

    def update_weights(self, buckets, policy_version: int) -> dict:
        """The buckets (an ObjectRef of the trainer's `weight_buckets`, or a list) into every engine at once, each
        in memory; returns the first engine's report once all of them serve `policy_version`."""
        results = self._all("update_weights", buckets, policy_version)
        self._check_version(policy_version)
        return results[0]

    def load_weights(self, path: str, policy_version: int) -> int:
        self._all("load_weights", path, policy_version)
        self._check_version(policy_version)
        return policy_version

    def failures(self) -> list[str]:
        """What the router saw go wrong with an engine whose actor may still answer Ray (a hung or dead server)."""
        return [] if self.router is None else [self.router.failures[i] for i in sorted(self.router.failures)]

    def request_counts(self) -> dict:
        """Requests routed to each engine since the last call (metrics); nothing with a single engine."""
        if self.router is None:
            return {}
        now = self.router.counts()
        delta, self._reported = [a - b for a, b in zip(now, self._reported, strict=True)], now
        return {"engine_requests": delta}

    def colocated_engines(self, get_for: Callable[[str], Callable]):
        """The engines as roll/colocate.py's machine moves them; `get_for(name)` is the get for that engine."""
        from roll.colocate import ActorEngines

        engines = [ActorEngines(a, get_for(n)) for a, n in zip(self.actors, self.names, strict=True)]
        return engines[0] if len(engines) == 1 else PoolEngines(engines, self.names)

    def stop(self) -> None:
        """The router, then every engine's server (10 s), then the actors; each step runs whatever failed before."""
        import ray

        if self.router is not None:
            try:
                self.router.stop()
            except Exception as e:
                log.warning("stopping the router failed: %s", e)
        refs = []
        for a in self.actors:
            with suppress(Exception):
                refs.append(a.stop.remote())
        with suppress(Exception):  # the actors are killed next anyway
            ray.wait(refs, num_returns=len(refs), timeout=10)
        for a in self.actors:
            with suppress(Exception):
                ray.kill(a)


class PoolEngines:
    """roll/colocate.py's Engines over several engines: every move applied to each; their states must agree."""

    def __init__(self, engines: list, names: list[str]):
        self.engines, self.names = engines, names

    def state(self):
        from roll.colocate import ColocateError

        states = [e.state() for e in self.engines]
        if len(set(states)) > 1:
            raise ColocateError("the engines are in different states: "
                                + ", ".join(f"{n} {s}" for n, s in zip(self.names, states, strict=True)))  # fmt: skip
        return states[0]

    def pause(self) -> None:
        for e in self.engines:
            e.pause()

    def resume(self) -> None:
        for e in self.engines:
            e.resume()

    def sleep(self) -> None:
        for e in self.engines:
            e.sleep()

    def wake_up(self, tags: list[str] | None) -> None:
        for e in self.engines:
            e.wake_up(tags)
