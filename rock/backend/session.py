"""Persistent bash sessions: one long-lived `bash` per session, fed commands through FIFOs.

    .venv/bin/pytest tests/rock/test_api.py -q -k session; .venv/bin/pytest tests/rock/test_restart.py -q

The shell is started by a detached exec with its stdin, stdout and stderr on three FIFOs under
`/dev/shm/rock-sessions/<session id>/`, each opened read-write by the shell itself, so that no
end of the manager's connection can ever give it EOF or SIGPIPE. The manager talks to it through
a relay exec (`cat` each way) on a hijacked connection. When the manager dies, only the relay
ends; the shell (cwd, env, variables, functions, background jobs) lives on, and the next manager
attaches a new relay to it (`attach(adopt=True)`), or learns that the shell is gone.

Each run is sent base64-encoded and `eval`ed by a function in the session's own shell, so cwd,
exported env and shell variables persist. The run's end is a random sentinel printed on stdout
and stderr with the exit status. On a per-run timeout the shell gets SIGUSR1, whose trap
`return`s from that function once the foreground child is gone, and the run's children (they
carry `ROCK_EXEC_ID=<run nonce>`) are killed: the rest of the run is skipped and the shell
survives. A run that loops inside bash itself (a builtin loop) cannot be stopped that way, and
its session's shell is killed instead.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
import uuid

from rock import errors
from rock.backend.engine import Engine, EngineError, frames
from rock.backend.execs import Capped, kill_marked

SESSION_ROOT = "/dev/shm/rock-sessions"  # tmpfs: not in a `docker commit`, so forks carry no stale FIFOs
# `return` in a trap leaves the function the shell is running, i.e. the rest of the run.
PREAMBLE = """__rock_run() { eval "$(printf %s "$1" | base64 -d)"; }
trap 'return 124 2>/dev/null' USR1
"""
GRACE_S = 2.0  # after the kill, how long the shell gets to print the sentinel
ADOPT_TIMEOUT_S = 10.0  # a re-adopted shell still busy with a run from before the restart answers after it
# The shell, started detached: it opens its three FIFOs read-write (`<>`), so it never sees EOF or EPIPE.
SHELL = (
    'D=$1; mkdir -p "$D" && mkfifo "$D/in" "$D/out" "$D/err" || exit 1; '
    'exec bash --noprofile --norc 0<>"$D/in" 1<>"$D/out" 2<>"$D/err"'
)
# The relay, attached: stdin -> in, out -> stdout, err -> stderr. It is its exec's process-group
# leader; a new relay kills the previous one's group (which the old manager's death may have left
# reading), and the group ends when the manager closes stdin or the shell's stdout ends (it exited).
RELAY = (
    'D=$1; if [ "$2" = adopt ]; then P=$(cat "$D/pid" 2>/dev/null); '
    '[ -p "$D/in" ] && [ -n "$P" ] && kill -0 "$P" 2>/dev/null || { rm -rf "$D"; exit 3; }; fi; '
    'n=0; until [ -p "$D/err" ]; do n=$((n+1)); [ $n -gt 1000 ] && exit 3; sleep 0.01; done; '
    'O=$(cat "$D/relay" 2>/dev/null) && kill -TERM -"$O" 2>/dev/null; echo $$ >"$D/relay"; '
    'exec 6<&0; { cat <&6 >"$D/in"; kill 0; } & exec 6<&-; '
    'cat "$D/err" >&2 & cat "$D/out"; rm -rf "$D"; kill 0'
)


class _Stream:
    """Output of one stream for the current run: capped text plus a tail kept for sentinel search."""

    def __init__(self):
        self.pending = bytearray()
        self.capped: Capped | None = None
        self.done = asyncio.Event()
        self.code: int | None = None
        self.pattern: re.Pattern | None = None

    def reset(self, nonce: str, limit: int) -> None:
        self.pending.clear()
        self.capped, self.code = Capped(limit), None
        self.pattern = re.compile(rb"\n__ROCK_" + nonce.encode() + rb"_(\d+)__\n")
        self.done.clear()

    def feed(self, data: bytes) -> None:
        if self.capped is None or self.done.is_set():
            return  # output of background jobs between runs is dropped
        self.pending += data
        m = self.pattern.search(self.pending)
        if m:
            self.capped.add(bytes(self.pending[: m.start()]))
            self.code = int(m.group(1))
            self.done.set()
        elif len(self.pending) > 4096:
            keep = 128  # longer than any sentinel
            self.capped.add(bytes(self.pending[:-keep]))
            del self.pending[:-keep]


class ShellSession:
    def __init__(self, engine: Engine, container: str, session_id: str):
        self.engine, self.container, self.id = engine, container, session_id
        self.dir = f"{SESSION_ROOT}/{session_id}"
        self.out, self.err = _Stream(), _Stream()
        self.lock = asyncio.Lock()
        self.alive = False
        self._reader_task: asyncio.Task | None = None
        self._writer = None
        self.pid = 0

    async def open(self, env: dict[str, str], cwd: str | None) -> None:
        """Start the shell (with `env`, in `cwd`) and attach to it."""
        exec_id = await self.engine.exec_create(self.container, ["sh", "-c", SHELL, "sh", self.dir], env, cwd, False)
        try:
            await self.engine.call("POST", f"/exec/{exec_id}/start", {"Detach": True, "Tty": False})
        except EngineError as e:
            if e.status in (404, 409):
                raise
            raise errors.BackendError(f"session shell did not start: {e.message}") from e
        await self._attach(PREAMBLE + f'printf %s $$ >"{self.dir}/pid"\n', adopt=False)

    async def adopt(self) -> None:
        """Attach to the shell an earlier manager started; Conflict (ended) if it is gone."""
        await self._attach("", adopt=True)

    async def _attach(self, preamble: str, adopt: bool) -> None:
        argv = ["sh", "-c", RELAY, "sh", self.dir, "adopt" if adopt else "open"]
        exec_id = await self.engine.exec_create(self.container, argv, {}, None, stdin=True)
        reader, self._writer = await self.engine.exec_start(exec_id)
        self.alive = True
        self._reader_task = asyncio.create_task(self._pump(reader))
        self._writer.write(preamble.encode())
        # The first answer also fences off output of a run the shell was in when the last manager died.
        out = await self.run("echo $$", ADOPT_TIMEOUT_S if adopt else 10.0, 100)
        if out["exit_code"] != 0 or not out["stdout"].strip().isdigit():
            await self.close(end_shell=not adopt)
            if adopt:
                why = "is still busy with a run from before" if out["timed_out"] else "did not survive"
                raise errors.Conflict(f"session {self.id} has ended: its shell {why} the manager's restart")
            raise errors.BackendError(f"session shell did not start: {out['stderr'].strip()}")
        self.pid = int(out["stdout"])

    async def _pump(self, reader) -> None:
        async for stream, data in frames(reader):
            (self.out if stream == 1 else self.err).feed(data)
        self.alive = False
        self.out.done.set()
        self.err.done.set()

    async def run(self, cmd: str, timeout: float | None, limit: int) -> dict:
        async with self.lock:
            if not self.alive:
                raise errors.Conflict(f"session {self.id} has ended")
            return await self._run(cmd, timeout, limit)

    async def _run(self, cmd: str, timeout: float | None, limit: int) -> dict:
        t0, nonce = time.monotonic(), uuid.uuid4().hex
        self.out.reset(nonce, limit)
        self.err.reset(nonce, limit)
        b64 = base64.b64encode(cmd.encode()).decode()
        script = (
            f"export ROCK_EXEC_ID={nonce}\n"
            f"__rock_run '{b64}' </dev/null\n"
            f"__rock_rc=$?; export -n ROCK_EXEC_ID\n"
            f"printf '\\n__ROCK_{nonce}_%d__\\n' $__rock_rc; printf '\\n__ROCK_{nonce}_%d__\\n' $__rock_rc >&2\n"
        )
        self._writer.write(script.encode())
        await self._writer.drain()
        both = asyncio.gather(self.out.done.wait(), self.err.done.wait())
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.shield(both), timeout)
        except TimeoutError:
            timed_out = True
            await self._interrupt(nonce)
            try:
                await asyncio.wait_for(both, GRACE_S)
            except TimeoutError:
                await self.close()  # a builtin loop in the shell itself: the session cannot be saved
        code = self.out.code if self.alive else None
        return {
            "exit_code": code,
            "stdout": self.out.capped.text() if self.out.capped else "",
            "stderr": self.err.capped.text() if self.err.capped else "",
            "duration_s": time.monotonic() - t0,
            "timed_out": timed_out,
            "truncated": bool(self.out.capped.truncated or self.err.capped.truncated),
        }

    async def _interrupt(self, nonce: str) -> None:
        """SIGUSR1 to the shell (pending until its foreground child dies), then kill the run's processes."""
        exec_id = await self.engine.exec_create(self.container, ["kill", "-USR1", str(self.pid)], {}, None, False)
        reader, writer = await self.engine.exec_start(exec_id)
        async for _ in frames(reader):
            pass
        writer.close()
        await kill_marked(self.engine, self.container, nonce)

    async def close(self, end_shell: bool = True) -> None:
        """Detach from the shell; with `end_shell`, kill it too (background jobs it started stay)."""
        was_alive, self.alive = self.alive, False
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
        if end_shell and was_alive and self.pid:
            try:
                await self._kill_shell()
            except EngineError as e:  # the container is gone or stopped: so is the shell
                if e.status not in (404, 409):
                    raise

    async def _kill_shell(self) -> None:
        argv = ["sh", "-c", 'kill -KILL "$1"; rm -rf "$2"', "sh", str(self.pid), self.dir]
        exec_id = await self.engine.exec_create(self.container, argv, {}, None, False)
        reader, writer = await self.engine.exec_start(exec_id)
        async for _ in frames(reader):
            pass
        writer.close()
