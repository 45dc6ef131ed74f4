"""The Docker Engine client (httpx over the unix socket; h11 for the hijacked exec start) against the real daemon.

.venv/bin/pytest tests/rock/test_engine.py -q
"""

from __future__ import annotations

import asyncio

import pytest

from rock.backend.engine import Engine, EngineError, frames

pytestmark = pytest.mark.docker


@pytest.fixture
def container(docker_client, base_image):
    c = docker_client.containers.run(base_image, ["sleep", "infinity"], detach=True, network_mode="none", init=True)
    yield c.id
    c.remove(force=True)


async def _exec(engine: Engine, cid: str, argv: list[str], stdin: bytes | None) -> tuple[bytes, bytes, int]:
    exec_id = await engine.exec_create(cid, argv, {"X": "1"}, "/tmp", stdin is not None)
    reader, writer = await engine.exec_start(exec_id)
    if stdin is not None:
        writer.write(stdin)
        await writer.drain()
        writer.write_eof()  # the half-close is what ends the process's stdin
    out, err = bytearray(), bytearray()
    async for stream, data in frames(reader):
        (out if stream == 1 else err).extend(data)
    writer.close()
    for _ in range(100):
        info = await engine.exec_inspect(exec_id)
        if not info["Running"]:
            return bytes(out), bytes(err), info["ExitCode"]
        await asyncio.sleep(0.02)
    raise AssertionError("exec did not finish")


def test_exec_streams_stdin_env_cwd_and_exit_code(container):
    async def go():
        engine = Engine()
        try:
            big = b"x" * (3 << 20)  # more than any socket buffer: the half-close must come after all of it
            out, err, code = await _exec(engine, container, ["sh", "-c", "wc -c; echo $X $PWD >&2; exit 3"], big)
            assert (out.strip(), err, code) == (str(len(big)).encode(), b"1 /tmp\n", 3)
            # Many calls on the kept-alive pool, some at once.
            results = await asyncio.gather(*(_exec(engine, container, ["echo", str(i)], None) for i in range(20)))
            assert [r[0] for r in results] == [f"{i}\n".encode() for i in range(20)]
        finally:
            await engine.close()

    asyncio.run(go())


def test_daemon_errors_carry_their_status(container):
    async def go():
        engine = Engine()
        try:
            with pytest.raises(EngineError) as e:
                await engine.exec_start("0" * 64)  # the upgrade answered with 404 and a JSON body
            assert e.value.status == 404 and "0" * 12 in e.value.message
            with pytest.raises(EngineError) as e:
                await engine.call("GET", "/containers/rock-no-such-container/json")
            assert e.value.status == 404 and "rock-no-such-container" in e.value.message
            assert (await engine.call("GET", f"/containers/{container}/json"))["State"]["Running"] is True
        finally:
            await engine.close()

    asyncio.run(go())
