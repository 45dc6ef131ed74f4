"""The async SDK against a real server: the same calls as the sync one, awaited, in parallel.

.venv/bin/pytest tests/rock/test_async_sdk.py -q
"""

from __future__ import annotations

import asyncio

import pytest

from rock import errors

pytestmark = pytest.mark.docker


def test_async_client_runs_sandboxes_concurrently(rock_server):
    async def one(c, i: int) -> str:
        async with await c.create_sandbox(memory="128m", env={"I": str(i)}) as sb:
            await sb.write_file("/tmp/in", f"n{i}")
            r = await sb.exec("cat /tmp/in; echo -$I", timeout=30)
            chunks = [ch async for ch in sb.exec_stream(["echo", "streamed"])]
            assert chunks[-1].type == "exit" and chunks[0].data == "streamed\n"
            s = await sb.session()
            await s.run("cd /tmp")
            assert (await s.run("pwd")).stdout == "/tmp\n"
            await s.close()
            assert await sb.read_file("/tmp/in") == f"n{i}".encode()
            assert await sb.trajectory() == []
            return r.stdout

    async def main():
        async with rock_server.async_client() as c:
            outs = await asyncio.gather(*(one(c, i) for i in range(4)))
            with pytest.raises(errors.SandboxNotFound):
                await c.sandbox("sb-nope")
            return outs

    assert asyncio.run(main()) == [f"n{i}-{i}\n" for i in range(4)]
