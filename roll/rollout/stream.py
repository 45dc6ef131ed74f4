"""The run's chunk buffer, fed by the gateway's subscription as chunks are recorded (`roll train`, both modes;
`.venv/bin/pytest tests/roll/test_stream.py -m docker`).

One subscriber per run: a thread reads the rock server's `GET /v1/chunks/stream` (every sandbox of the run) and
files each chunk into a buffer keyed by trajectory the moment it arrives, so an attempt's chunks are already on
the driver when the attempt ends; nothing is pulled after it. `take(sandbox, trajectory_id)` assembles the
trajectory from the buffer, checked against the gateway's count for it (`GET /v1/chunks/count`):
- a chunk still on its way gets `grace_s` to arrive;
- a chunk missing after that (lost by the stream, or the stream itself lost) is fetched once from the sandbox's
  recorded trajectory and counted in `chunks_refetched`, with a log line: never silently lost;
- a chunk delivered twice is filed once (keyed by its index), one arriving after its trajectory was taken is
  dropped (it was refetched already).
Metrics (`metrics()`, since the last call: one iteration, or one update in async mode): `chunks_streamed` (taken
from the buffer), `chunks_refetched`, `stream_lag_p50_s` and `stream_lag_max_s`, seconds from the gateway's record
(`chunk.created_at`) to the buffer, on one machine's wall clock.

When the stream cannot be opened (a rock server without the route), `ChunkStream.open` returns None after a log
line, and attempts pull their chunks after they end, as before (the fallback only).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

from rock.contracts import Chunk

LogFn = Callable[[str], None]


class ChunkStream:
    """The subscriber thread and its buffer (module docstring). Thread-safe: attempts `take` from many threads."""

    def __init__(self, url: str, token: str | None, *, keepalive_s: float = 15.0, grace_s: float = 5.0,
                 log: LogFn = print):  # fmt: skip
        from rock.sdk import Client

        self.keepalive_s, self.grace_s, self.log = keepalive_s, grace_s, log
        self._http = Client(url, token)  # its own connection: the stream holds one for the whole run
        self._buf: dict[str, dict[int, Chunk]] = {}
        self._taken: set[str] = set()
        self._cond = threading.Condition()
        self._opened = threading.Event()
        self._error: BaseException | None = None
        self._ended = False
        self._closed = False
        self._lags: list[float] = []
        self._window = {"streamed": 0, "refetched": 0}
        self.totals = {"streamed": 0, "refetched": 0, "late": 0}
        self._thread = threading.Thread(target=self._read, name="chunk-stream", daemon=True)

    @classmethod
    def open(cls, url: str, token: str | None, *, timeout_s: float = 30.0, log: LogFn = print,
             **kw) -> ChunkStream | None:  # fmt: skip
        """The run's subscriber, live (the server said `open`) before it returns; None with a log line when the
        server has no stream (then attempts pull their chunks after they end)."""
        stream = cls(url, token, log=log, **kw)
        stream._thread.start()
        if stream._opened.wait(timeout_s) and stream._error is None and not stream._ended:
            log(f"chunk stream open: chunks are buffered as the gateway records them ({url}/v1/chunks/stream)")
            return stream
        why = f"{type(stream._error).__name__}: {stream._error}" if stream._error else f"no answer in {timeout_s}s"
        stream.close()
        log(f"chunk stream unavailable ({why}); falling back to pulling each attempt's chunks after it ends")
        return None

    # -- the subscriber thread
    def _read(self) -> None:
        try:
            for event in self._http.chunk_stream(keepalive_s=self.keepalive_s):
                if self._closed or event.type == "end":
                    break
                if event.type == "open":
                    self._opened.set()
                elif event.type == "chunk" and event.chunk is not None:
                    self._file(event.chunk, time.time())
        except BaseException as e:  # noqa: BLE001 - reported by `take`, whose missing chunks are refetched
            if not self._closed:
                self._error = e
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()
            self._opened.set()

    def _file(self, chunk: Chunk, received: float) -> None:
        with self._cond:
            if chunk.trajectory_id in self._taken:
                self.totals["late"] += 1
                return
            self._buf.setdefault(chunk.trajectory_id, {})[chunk.index] = chunk
            self._lags.append(max(0.0, received - chunk.created_at))
            self._cond.notify_all()

    # -- the attempts' side
    def take(self, sandbox, trajectory_id: str) -> list[Chunk]:
        """The trajectory's chunks in index order, as many as the gateway recorded (an attempt that has ended)."""
        count = sandbox.client.chunk_count(sandbox.id, trajectory_id)
        deadline = time.monotonic() + self.grace_s
        with self._cond:
            while len(self._buf.get(trajectory_id, {})) < count and not self._ended:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            got = self._buf.pop(trajectory_id, {})
            self._taken.add(trajectory_id)
            lost = self._error
        got = {i: c for i, c in got.items() if c.sandbox_id == sandbox.id}
        streamed = len(got)
        missing = [i for i in range(count) if i not in got]
        if missing:
            recorded = {c.index: c for c in sandbox.trajectory() if c.trajectory_id == trajectory_id}
            got |= {i: recorded[i] for i in missing if i in recorded}
            why = f"the stream ended ({type(lost).__name__}: {lost})" if lost else f"not streamed in {self.grace_s}s"
            self.log(f"  chunk stream: {trajectory_id} chunks {missing} {why}; fetched from the gateway's record")
        with self._cond:
            for key, n in (("streamed", streamed), ("refetched", len(missing))):
                self._window[key] += n
                self.totals[key] += n
        return [got[i] for i in sorted(got)]

    def discard(self, trajectory_id: str) -> None:
        """An attempt that ended without taking its chunks (it failed early, or pulled them itself)."""
        with self._cond:
            self._buf.pop(trajectory_id, None)
            self._taken.add(trajectory_id)

    def metrics(self) -> dict:
        """Since the last call: chunks taken from the stream and refetched, record-to-buffer seconds."""
        with self._cond:
            lags, self._lags = self._lags, []
            window, self._window = self._window, {"streamed": 0, "refetched": 0}
        return {
            "chunks_streamed": window["streamed"],
            "chunks_refetched": window["refetched"],
            "stream_lag_p50_s": round(statistics.median(lags), 4) if lags else None,
            "stream_lag_max_s": round(max(lags), 4) if lags else None,
        }

    @property
    def buffered(self) -> int:
        """Chunks in the buffer not yet taken (of attempts still running)."""
        with self._cond:
            return sum(len(v) for v in self._buf.values())

    def close(self) -> None:
        self._closed = True
        self._http.close()  # ends the blocking read
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
