"""One-shot exec inside a sandbox container: timeout, process-tree kill, output cap, streaming.

Each exec carries a fresh `ROCK_EXEC_ID` in its environment. Docker has no API to kill an
exec, and runc makes every exec its own session, so on timeout a second exec walks /proc and
SIGKILLs every process (and its process group) whose environment holds that id: the command,
its children, and anything it put in the background, but nothing from other execs.
"""

from __future__ import annotations

import asyncio
import codecs
import time
import uuid
from collections.abc import AsyncIterator

from rock.backend.base import ExecSpec
from rock.backend.engine import Engine, frames

KILL_SCRIPT = (
    'for p in /proc/[0-9]*; do n=${p#/proc/}; [ "$n" = "$$" ] && continue; '
    'if grep -qsxz "ROCK_EXEC_ID=$1" "$p/environ"; then kill -9 "-$n" 2>/dev/null; kill -9 "$n" 2>/dev/null; fi; done; true'
)
STREAMS = {1: "stdout", 2: "stderr"}


def argv_of(cmd: str | list[str]) -> list[str]:
    return ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)


async def kill_marked(engine: Engine, container: str, marker: str) -> None:
    exec_id = await engine.exec_create(container, ["sh", "-c", KILL_SCRIPT, "sh", marker], {}, None, False)
    reader, writer = await engine.exec_start(exec_id)
    async for _ in frames(reader):
        pass
    writer.close()


_pending: set[asyncio.Task] = set()


def _background(coro) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _pending.add(task)  # keep a reference until done, or the task may be collected mid-way
    task.add_done_callback(_pending.discard)


async def _exit_code(engine: Engine, exec_id: str) -> int | None:
    # The attach stream can close a moment before the daemon records the exit; a busy daemon can
    # take seconds. None only if it never does (the result then says so instead of guessing).
    delay, deadline = 0.002, time.monotonic() + 10
    while True:
        info = await engine.exec_inspect(exec_id)
        if not info.get("Running"):
            return info.get("ExitCode")
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


async def exec_events(engine: Engine, spec: ExecSpec) -> AsyncIterator[tuple[str, bytes | dict]]:
    """Yield ("started", b"") once the command runs, ("stdout"|"stderr", bytes) as output arrives,
    then ("exit", {exit_code, duration_s, timed_out})."""
    t0 = time.monotonic()
    marker, container, stdin = uuid.uuid4().hex, spec.container, spec.stdin
    env = {**spec.env, "ROCK_EXEC_ID": marker}
    exec_id = await engine.exec_create(container, argv_of(spec.cmd), env, spec.cwd, stdin is not None)
    reader, writer = await engine.exec_start(exec_id)
    if stdin is not None:
        writer.write(stdin)
        await writer.drain()
        writer.write_eof()  # closes the process's stdin, as the docker CLI does at EOF
    deadline = None if spec.timeout is None else t0 + spec.timeout
    timed_out = finished = False
    it = frames(reader).__aiter__()
    try:
        yield "started", b""  # lets a streaming response begin (and notice a disconnect) before any output
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            try:
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                stream, data = await asyncio.wait_for(it.__anext__(), remaining)
            except StopAsyncIteration:
                break
            except TimeoutError:
                timed_out, deadline = True, None
                await kill_marked(engine, container, marker)
                continue
            yield STREAMS.get(stream, "stdout"), data
        finished = True
    finally:
        writer.close()
        if not finished:  # the caller went away (a streaming client disconnected): stop the command too
            _background(kill_marked(engine, container, marker))
    code = await _exit_code(engine, exec_id)
    yield "exit", {"exit_code": code, "duration_s": time.monotonic() - t0, "timed_out": timed_out}


class Capped:
    """Collects one stream up to `limit` bytes, remembering whether anything was dropped."""

    def __init__(self, limit: int):
        self.limit, self.buf, self.truncated = limit, bytearray(), False

    def add(self, data: bytes) -> None:
        room = self.limit - len(self.buf)
        if len(data) > room:
            self.truncated = True
            data = data[: max(room, 0)]
        self.buf += data

    def text(self) -> str:
        return self.buf.decode("utf-8", errors="replace")


async def exec_collect(engine: Engine, spec: ExecSpec, limit: int) -> dict:
    """The whole exec as one ExecResult dict, each stream capped at `limit` bytes."""
    out, err = Capped(limit), Capped(limit)
    result: dict = {}
    async for kind, data in exec_events(engine, spec):
        if kind == "exit":
            result = data
        elif kind != "started":
            (out if kind == "stdout" else err).add(data)
    stdout, stderr = out.text(), err.text()
    if result.get("exit_code") in (126, 127) and stdout.startswith("OCI runtime exec failed") and not stderr:
        # The daemon reports a command that could not start (missing binary, bad cwd) on the
        # stdout stream; it is an error message, and an agent reading stdout must not take it for output.
        stdout, stderr = "", stdout.strip() + "\n"
    return {**result, "stdout": stdout, "stderr": stderr, "truncated": out.truncated or err.truncated}


class Utf8Stream:
    """Incremental decoding so a multi-byte character split across frames is not mangled."""

    def __init__(self):
        self._dec = {s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in ("stdout", "stderr")}

    def decode(self, stream: str, data: bytes) -> str:
        return self._dec[stream].decode(data)
