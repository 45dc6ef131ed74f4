"""Sandboxes and their persistent sessions survive a SIGKILL of `rock serve` and a restart.

    .venv/bin/pytest tests/rock/test_restart.py -q               # 5 sandboxes
    .venv/bin/pytest tests/rock/test_restart.py -q -m slow       # 100 sandboxes (about two minutes)

N sandboxes, one session each with cwd, an exported and a plain shell variable and a function set;
the manager is killed with SIGKILL and started again on the same state dir. Every sandbox must be
re-adopted and usable, every session re-adopted with its state (one whose shell was killed while
no manager ran must answer 409 naming the session and why), and after deleting them all no
container of this manager is left and the new server holds no more sockets than when it started
(the relays of N adopted sessions would show as N).
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from rock import errors
from rock.launch import RockProcess
from rock.sdk import AsyncSession, Session

pytestmark = pytest.mark.docker
SPEC = {"memory": "64m", "pids_limit": 64, "cpus": 0.5}
POOLED = 16  # connections the engine keeps alive to the daemon (rock.backend.engine.Engine's pool_size)


def ours(docker_client, state_dir) -> list:
    manager = (state_dir / "manager_id").read_text().strip()
    return docker_client.containers.list(all=True, filters={"label": f"ale.rock.manager={manager}"})


def sockets(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except FileNotFoundError:
            pass  # closed while we listed
    return n


async def gather_limited(coros, limit: int) -> list:
    sem = asyncio.Semaphore(limit)

    async def one(c):
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


async def before_kill(rock: RockProcess, n: int, limit: int) -> list[tuple[str, str]]:
    async with rock.async_client() as c:
        boxes = await gather_limited([c.create_sandbox(**SPEC) for _ in range(n)], limit)

        async def prepare(sb):
            s = await sb.session(env={"FROM_OPEN": "o"})
            r = await s.run(f"cd /tmp && export E={sb.id} && V=plain && f() {{ echo fn; }}")
            assert r.exit_code == 0, r
            return sb.id, s.id

        return await gather_limited([prepare(sb) for sb in boxes], limit)


async def after_restart(rock: RockProcess, pairs: list[tuple[str, str]], killed: str, limit: int) -> None:
    async with rock.async_client() as c:

        async def check(sandbox_id: str, session_id: str):
            sb = await c.sandbox(sandbox_id)
            assert (await sb.exec(["echo", "ok"])).stdout == "ok\n"
            s = AsyncSession(sb, session_id)
            if session_id == killed:
                with pytest.raises(errors.Conflict) as e:
                    await s.run("true")
                assert session_id in str(e.value) and "did not survive" in str(e.value)
                return
            r = await s.run("pwd; echo $E $V $FROM_OPEN; f")
            assert (r.exit_code, r.stdout) == (0, f"/tmp\n{sandbox_id} plain o\nfn\n"), r
            assert (await s.run("cd / && echo again")).stdout == "again\n"
            await s.close()

        await gather_limited([check(*p) for p in pairs], limit)
        assert {sb.id for sb in await c.list_sandboxes()} == {sid for sid, _ in pairs}

        async def drop(sandbox_id: str):
            await (await c.sandbox(sandbox_id)).delete()

        await gather_limited([drop(sid) for sid, _ in pairs], limit)


def restart_round(tmp_path, docker_client, n: int, limit: int) -> dict:
    state = tmp_path / "state"
    first = RockProcess(state_dir=state).start()
    try:
        pairs = asyncio.run(before_kill(first, n, limit))
    finally:
        first.kill()
    # A shell that dies while no manager runs: its session must be reported ended, not hang.
    sandbox_id, killed = pairs[0]
    cid = next(c for c in ours(docker_client, state) if c.labels["ale.rock.sandbox"] == sandbox_id)
    out = cid.exec_run(["sh", "-c", f"kill -9 $(cat /dev/shm/rock-sessions/{killed}/pid)"])
    assert out.exit_code == 0, out.output
    t0 = time.monotonic()
    second = RockProcess(state_dir=state, token=first.token).start()
    try:
        started_s = time.monotonic() - t0
        with second.client() as c:
            c.list_sandboxes()  # the client's own keep-alive connection is part of the baseline
            base = sockets(second.proc.pid)
            t0 = time.monotonic()
            asyncio.run(after_restart(second, pairs, killed, limit))
            used_s = time.monotonic() - t0
            c.list_sandboxes()
            leaked = sockets(second.proc.pid) - base
        left = ours(docker_client, state)
    finally:
        second.stop()
    assert left == [], f"{len(left)} orphaned containers"
    # Sequential calls keep at most a couple of pooled daemon connections; concurrent ones up to `limit`.
    assert leaked <= min(POOLED, limit + 2), f"{leaked} more sockets than at start"
    return {"n": n, "restart_s": started_s, "adopt_and_use_s": used_s, "extra_sockets": leaked}


def test_sessions_and_sandboxes_survive_a_manager_sigkill(tmp_path, docker_client):
    print(restart_round(tmp_path, docker_client, n=5, limit=1))


@pytest.mark.slow
def test_a_hundred_sandboxes_survive_a_manager_sigkill(tmp_path, docker_client):
    print(restart_round(tmp_path, docker_client, n=100, limit=8))


def test_a_graceful_stop_with_on_exit_keep_leaves_sessions_for_the_next_start(tmp_path, docker_client):
    state = tmp_path / "state"
    with RockProcess(state_dir=state, on_exit="keep") as first, first.client() as c:
        sb = c.create_sandbox(**SPEC)
        s = sb.session()
        assert s.run("cd /etc && V=kept").exit_code == 0
        token = first.token
    with RockProcess(state_dir=state, token=token) as second, second.client() as c:
        box = c.sandbox(sb.id)
        assert Session(box, s.id).run("echo $V; pwd").stdout == "kept\n/etc\n"
        assert box.session().run("pwd").stdout == "/root\n"  # a new session next to the adopted one
    assert ours(docker_client, state) == []
