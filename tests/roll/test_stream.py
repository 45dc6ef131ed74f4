"""Chunks streamed from the gateway as they are recorded: `.venv/bin/pytest tests/roll/test_stream.py -m docker`
(about a minute).

The endpoint (`GET /v1/chunks/stream`, `GET /v1/chunks/count`) on a real `rock serve` with a scripted model
upstream: a chunk recorded after the subscription opened arrives, in order, filtered by sandbox and trajectory;
bad parameters are 4xx with a message. The run's buffer (roll/rollout/stream.py) under a real iflow attempt in a
sandbox: every chunk comes through the stream (none refetched), and a chunk the stream withholds is fetched once
from the gateway's record and counted.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from iflow_cli.testing.scripted_server import ScriptedServer
from rock import errors
from rock.launch import RockProcess
from roll.rollout.attempt import iflow_source_dir, run_attempt
from roll.rollout.stream import ChunkStream
from roll.tasks.spec import Environment, TaskSpec

pytestmark = pytest.mark.docker

CALL = """
import json, os, sys, urllib.request
req = urllib.request.Request(
    os.environ["OPENAI_BASE_URL"] + "/chat/completions",
    data=json.dumps({"model": "m", "messages": [{"role": "user", "content": sys.argv[1]}]}).encode(),
    headers={"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"], "Content-Type": "application/json"},
)
print(json.load(urllib.request.urlopen(req, timeout=30))["choices"][0]["message"]["content"])
"""


def answer(body: dict):
    """The scripted model: a shell call first, then a final answer once a tool result is in the messages;
    a plain question (CALL above) is echoed."""
    messages = body.get("messages") or []
    if not body.get("tools"):
        return f"echo {messages[-1]['content']}"
    if any(m.get("role") == "tool" for m in messages):
        return "Copied."
    return {"tool_calls": [{"name": "run_shell_command", "arguments": {"command": "cp input.txt out.txt"}}]}


@pytest.fixture(scope="module")
def rock(docker_client, tmp_path_factory):
    with ScriptedServer(answer) as model:
        with RockProcess(state_dir=tmp_path_factory.mktemp("rock"), model_upstream=model.url,
                         allow_mounts=[str(iflow_source_dir())]) as proc:  # fmt: skip
            yield proc


class Reader:
    """A thread reading one subscription into `events` until `stop`."""

    def __init__(self, rock: RockProcess, **params):
        self.client, self.events, self.opened, self.stopped = rock.client(), [], threading.Event(), False
        self.thread = threading.Thread(target=self.read, kwargs=params, daemon=True)
        self.thread.start()
        assert self.opened.wait(15), "the subscription did not open"

    def read(self, **params) -> None:
        for event in self.client.chunk_stream(keepalive_s=0.3, **params):
            self.events.append((event, time.time()))
            if event.type == "open":
                self.opened.set()
            if self.stopped:
                return

    def chunks(self) -> list:
        return [e.chunk for e, _ in self.events if e.type == "chunk"]

    def stop(self) -> None:
        self.stopped = True
        self.thread.join(5)
        self.client.close()


def wait_for(cond, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_chunks_recorded_after_the_subscription_opened_arrive_in_order_and_filtered(rock):
    with rock.client() as c, c.create_sandbox(network="model", trajectory_id="traj-s") as sb:
        mine, by_sandbox = Reader(rock, trajectory_id="traj-s"), Reader(rock, sandbox_id=sb.id)
        other = Reader(rock, trajectory_id="traj-other")
        try:
            for word in ("one", "two", "three"):
                r = sb.exec(["python3", "-c", CALL, word], timeout=60)
                assert r.exit_code == 0 and r.stdout == f"echo {word}\n", r.stderr
            wait_for(lambda: len(mine.chunks()) == 3 and len(by_sandbox.chunks()) == 3)
            time.sleep(0.7)  # two keep-alive periods: room for a wrongly delivered chunk to show up
        finally:
            for reader in (mine, by_sandbox, other):
                reader.stop()
        got = mine.chunks()
        assert [ch.index for ch in got] == [0, 1, 2]
        assert [ch.response.text for ch in got] == ["echo one", "echo two", "echo three"]
        assert all(ch.trajectory_id == "traj-s" and ch.sandbox_id == sb.id for ch in got)
        assert [ch.index for ch in by_sandbox.chunks()] == [0, 1, 2]
        # the stream carries what the gateway recorded, as the pull does
        recorded = sb.trajectory()
        assert [(x.response_token_ids, x.response_logprobs) for x in got] == [
            (x.response_token_ids, x.response_logprobs) for x in recorded
        ]
        assert c.chunk_count(sb.id, "traj-s") == 3 and c.chunk_count(sb.id, "traj-nope") == 0
        # another trajectory's subscriber got none of them, only keep-alives while nothing was recorded
        assert other.chunks() == [] and sum(e.type == "keepalive" for e, _ in other.events) >= 2
        # each arrived as it was recorded: within a second of the gateway's record
        assert all(0 <= t - e.chunk.created_at < 1.0 for e, t in mine.events if e.type == "chunk")


def test_bad_parameters_are_4xx_with_a_message(rock):
    with rock.client() as c:
        with pytest.raises(errors.ValidationFailed, match="keepalive_s"):
            next(iter(c.chunk_stream(keepalive_s=0)))
        with pytest.raises(errors.ValidationFailed, match="keepalive_s"):
            next(iter(c.chunk_stream(keepalive_s=1000)))
        with pytest.raises(errors.SandboxNotFound, match="sb-nope"):
            next(iter(c.chunk_stream(sandbox_id="sb-nope")))
        with pytest.raises(errors.SandboxNotFound, match="sb-nope"):
            c.chunk_count("sb-nope", "t")
        with c.create_sandbox() as plain:
            with pytest.raises(errors.BadRequest, match="not on the model network"):
                next(iter(c.chunk_stream(sandbox_id=plain.id)))
        r = httpx.get(f"{rock.url}/v1/chunks/count", params={"sandbox_id": "x"},
                      headers={"Authorization": f"Bearer {rock.token}"})  # fmt: skip
        assert r.status_code == 422 and "trajectory_id" in r.json()["error"]["message"]
        assert httpx.get(f"{rock.url}/v1/chunks/stream").status_code == 401


def open_streams(rock: RockProcess) -> float:
    text = httpx.get(f"{rock.url}/metrics", headers={"Authorization": f"Bearer {rock.token}"}).text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("rock_chunk_streams ")))


def test_a_client_gone_away_ends_its_subscription_and_the_async_sdk_streams_too(rock):
    import asyncio

    before = open_streams(rock)
    with rock.client() as c:
        events = c.chunk_stream(keepalive_s=0.2)
        assert next(events).type == "open" and next(events).type == "keepalive"
        assert open_streams(rock) == before + 1
        events.close()  # the client hangs up: the server's next keep-alive write (or the disconnect) ends it
    wait_for(lambda: open_streams(rock) == before, timeout=5)

    async def first_chunk() -> list:
        async with rock.async_client() as ac:
            sb = await ac.create_sandbox(network="model", trajectory_id="traj-async")
            try:
                seen = []
                async for event in ac.chunk_stream(sandbox_id=sb.id, keepalive_s=0.5):
                    seen.append(event.type)
                    if event.type == "open":
                        r = await sb.exec(["python3", "-c", CALL, "async"], timeout=60)
                        assert r.exit_code == 0, r.stderr
                    if event.type == "chunk":
                        return seen + [event.chunk.response.text]
            finally:
                await sb.delete()

    assert asyncio.run(asyncio.wait_for(first_chunk(), 60))[-2:] == ["chunk", "echo async"]


def task(name: str) -> TaskSpec:
    return TaskSpec(id=name, instruction="Copy /app/input.txt to /app/out.txt.", family="copy", split="heldout",
                    environment=Environment(image="rock/base:bookworm", setup="echo seed > input.txt"),
                    tests={"run-tests.sh": 'test "$(cat /app/out.txt)" = seed'}, solution="cp input.txt out.txt",
                    test_timeout_s=30)  # fmt: skip


class Withholding(ChunkStream):
    """A stream that loses chunk 1 of every trajectory on its way into the buffer."""

    def _file(self, chunk, received):
        if chunk.index != 1:
            super()._file(chunk, received)


@pytest.mark.parametrize("kind", [ChunkStream, Withholding])
def test_an_attempt_takes_its_chunks_from_the_stream_and_a_withheld_one_is_refetched(rock, kind, tmp_path):
    lines = []
    stream = kind.open(rock.url, rock.token, log=lines.append, keepalive_s=1.0, grace_s=0.5)
    assert stream is not None and "chunk stream open" in lines[0]
    try:
        with rock.client() as c:
            traj = run_attempt(c, task("s"), "iflow", stream=stream, attempt_dir=tmp_path / "a")
        m = stream.metrics()
    finally:
        stream.close()
    assert traj.status == "resolved", traj.error
    assert [ch.index for ch in traj.chunks] == [0, 1] and all(ch.response_token_ids for ch in traj.chunks)
    assert [ch.response.text for ch in traj.chunks] == ["", "Copied."]
    assert [r.chunk_index for r in traj.tool_results] == [0]
    assert stream.buffered == 0  # taken, not left behind
    if kind is ChunkStream:
        assert (m["chunks_streamed"], m["chunks_refetched"]) == (2, 0)
        assert 0 <= m["stream_lag_p50_s"] <= m["stream_lag_max_s"] < 1.0
    else:  # chunk 1 never reached the buffer: fetched once from the record, counted, logged
        assert (m["chunks_streamed"], m["chunks_refetched"]) == (1, 1)
        assert any(f"{traj.trajectory_id} chunks [1] not streamed" in line for line in lines)


def test_a_server_without_the_stream_falls_back_with_a_log_line():
    lines = []
    with ScriptedServer(["x"]) as not_rock:  # answers 404 on every other path
        assert ChunkStream.open(not_rock.url, "t", log=lines.append, timeout_s=5) is None
    assert "chunk stream unavailable" in lines[-1] and "falling back" in lines[-1]
