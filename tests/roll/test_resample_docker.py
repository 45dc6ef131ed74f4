"""Initialized resampling on real sandboxes: `.venv/bin/pytest tests/roll/test_resample_docker.py -m docker`.

The reference is one oracle-teacher iflow attempt at multi_step_chain-0 (8 chunks: look, four reads along the
chain, write_file of the word at chunk 5, a check, the answer). The teacher continues its plan from the call ids
in the history it is given, so from start k it makes exactly the reference's calls k.. : an attempt that starts
after the write (k = 6) resolves only if the replay (or the snapshot) put the written file back. With the run's
ChunkStream the sampled chunks come from its buffer (none pulled after the attempt), joined as the pull's are.
"""

from __future__ import annotations

import json

import pytest

from rock.launch import RockProcess
from roll.cli import main
from roll.data.teacher import OracleTeacher
from roll.rollout.attempt import AgentOptions, iflow_source_dir, run_attempt
from roll.rollout.resample import SnapshotCache, resampled_attempt
from roll.rollout.stream import ChunkStream
from roll.tasks.suite import generate

pytestmark = [pytest.mark.docker, pytest.mark.slow]
TASK = generate("multi_step_chain", 0)
OPTIONS = AgentOptions(max_turns=12)


@pytest.fixture(scope="module")
def rock_proc(docker_client, tmp_path_factory):
    with RockProcess(state_dir=tmp_path_factory.mktemp("rock"), allow_mounts=[str(iflow_source_dir())],
                     warm_pool=0) as proc:  # fmt: skip
        yield proc


@pytest.fixture(scope="module")
def rock(rock_proc):
    with rock_proc.client() as client:
        yield client


@pytest.fixture(scope="module")
def teacher():
    with OracleTeacher([TASK], None, mistake_rate=0.0).serve() as server:
        yield server.url


@pytest.fixture(scope="module")
def reference(rock, teacher):
    ref = run_attempt(rock, TASK, "iflow", model_url=teacher, options=OPTIONS)
    assert ref.resolved and len(ref.chunks) == 8, (ref.status, ref.error, len(ref.chunks))
    assert json.loads(ref.chunks[5].response.tool_calls[0].function["arguments"])["path"] == "/app/thunder.txt"
    return ref


@pytest.fixture(scope="module")
def snapshots(rock):
    cache = SnapshotCache()
    yield cache
    cache.delete_all(rock)


def same_calls(a, b) -> bool:
    return [c.function for c in a.response.tool_calls] == [c.function for c in b.response.tool_calls]


def test_a_start_after_the_write_resolves_from_the_replayed_state_then_from_its_snapshot(
    rock, teacher, reference, snapshots, tmp_path
):
    first = resampled_attempt(rock, TASK, reference, 6, OPTIONS, model_url=teacher, snapshots=snapshots,
                              attempt_dir=tmp_path / "a", group=3)  # fmt: skip
    assert first.resolved, (first.status, first.error)
    assert (first.start_chunk, first.reference_id, first.group, len(first.chunks)) == (6, reference.trajectory_id, 3, 8)
    restore = (tmp_path / "a/restore.log").read_text()
    assert "ran  chunk 5 write_file" in restore and "skip chunk 1 run_shell_command" not in restore, restore
    # the policy's first prompt is the reference's chunk-6 prompt (iflow's own system prompt, then the prefix)
    assert first.chunks[6].messages == reference.chunks[6].messages
    assert [c.index for c in first.chunks] == list(range(8))
    assert {c.trajectory_id for c in first.chunks} == {first.trajectory_id}
    assert all(same_calls(a, b) for a, b in zip(first.chunks, reference.chunks, strict=True))
    assert first.chunks[5].sandbox_id == reference.sandbox_id and first.chunks[6].sandbox_id == first.sandbox_id
    # tool results: the reference's for chunks 0..5, then the sampled check (chunk 6)
    assert [r.chunk_index for r in first.tool_results] == list(range(7)) and first.tool_results[6].ok
    assert len(snapshots) == 1

    second = resampled_attempt(rock, TASK, reference, 6, OPTIONS, model_url=teacher, snapshots=snapshots,
                               attempt_dir=tmp_path / "b")  # fmt: skip
    assert second.resolved, (second.status, second.error)
    assert (tmp_path / "b/restore.log").read_text().startswith("forked snapshot ")


def test_a_wrong_write_in_the_prefix_is_what_the_tests_see(rock, teacher, reference):
    """The control: the replayed prefix, not the agent, made the state a start at chunk 6 relies on."""
    ref = reference.model_copy(deep=True)
    ref.chunks[5].response.tool_calls[0].function["arguments"] = json.dumps(
        {"path": "/app/thunder.txt", "content": "not-the-word\n"}
    )
    traj = resampled_attempt(rock, TASK, ref, 6, OPTIONS, model_url=teacher)
    assert traj.status == "unresolved" and len(traj.chunks) == 8, (traj.status, traj.error)


def test_a_reference_that_no_longer_reproduces_is_reported_and_skipped(rock, teacher, reference, snapshots, tmp_path):
    # the task's setup changed since the reference was recorded: the chain's first file is gone
    setup = TASK.environment.setup.replace("echo /app/knife/summer.txt > /app/knife/pasta.txt\n", "")
    moved = TASK.model_copy(update={"environment": TASK.environment.model_copy(update={"setup": setup})})
    results, cached = [], len(snapshots)
    for task, k in ((moved, 4), (TASK, 3)):  # the broken one, then one (mid-chain) that goes on
        results.append(resampled_attempt(rock, task, reference, k, OPTIONS, model_url=teacher, snapshots=snapshots,
                                         attempt_dir=tmp_path / str(k)))  # fmt: skip
    broken, good = results
    assert broken.status == "environment_error" and broken.chunks == [] and broken.start_chunk == 4
    assert "reference does not reproduce" in broken.error and "chunk 1 run_shell_command" in broken.error
    assert "cat /app/knife/pasta.txt" in broken.error and "failed" in broken.error, broken.error
    assert good.resolved and good.start_chunk == 3 and len(good.chunks) == 8, (good.status, good.error)
    assert good.chunks[3].messages == reference.chunks[3].messages
    assert all(same_calls(a, b) for a, b in zip(good.chunks, reference.chunks, strict=True))
    assert len(snapshots) == cached + 1  # the good start's; nothing for the broken reference


def test_the_sampled_chunks_come_from_the_runs_stream_joined_as_the_pull_joins_them(
    rock_proc, rock, teacher, reference, snapshots, tmp_path
):
    pulled = resampled_attempt(rock, TASK, reference, 6, OPTIONS, model_url=teacher, snapshots=snapshots)
    lines = []
    stream = ChunkStream.open(rock_proc.url, rock_proc.token, log=lines.append, keepalive_s=1.0, grace_s=0.5)
    assert stream is not None, lines
    try:
        streamed = resampled_attempt(rock, TASK, reference, 6, OPTIONS, model_url=teacher, snapshots=snapshots,
                                     attempt_dir=tmp_path / "s", stream=stream)  # fmt: skip
        m = stream.metrics()
        assert stream.buffered == 0  # taken, not left behind
    finally:
        stream.close()
    assert pulled.resolved and streamed.resolved, (pulled.status, pulled.error, streamed.status, streamed.error)
    # both sampled chunks (the check, the answer) through the stream, none fetched after the attempt
    assert (m["chunks_streamed"], m["chunks_refetched"]) == (2, 0), (m, lines)
    assert not any("fetched from the gateway" in line for line in lines), lines
    assert [c.index for c in streamed.chunks] == list(range(8)) == [c.index for c in pulled.chunks]
    assert {c.trajectory_id for c in streamed.chunks} == {streamed.trajectory_id}
    for mine, ref in zip(streamed.chunks[:6], reference.chunks[:6], strict=True):  # the given prefix
        assert (mine.messages, mine.response, mine.sandbox_id) == (ref.messages, ref.response, ref.sandbox_id)
    assert all(c.sandbox_id == streamed.sandbox_id for c in streamed.chunks[6:])  # recorded in its own sandbox
    assert streamed.chunks[6].messages == reference.chunks[6].messages
    assert all(same_calls(a, b) for a, b in zip(streamed.chunks, pulled.chunks, strict=True))
    assert [c.response.text for c in streamed.chunks] == [c.response.text for c in pulled.chunks]
    assert [r.chunk_index for r in streamed.tool_results] == [r.chunk_index for r in pulled.tool_results]
    assert streamed.policy_versions == pulled.policy_versions


class WeakTeacher(OracleTeacher):
    """The oracle, except that its write_file writes the wrong word: a policy that has not learned that step."""

    def message(self, plan, index, step):
        msg = super().message(plan, index, step)
        for call in msg.get("tool_calls") or []:
            if call["function"]["name"] == "write_file":
                args = json.loads(call["function"]["arguments"]) | {"content": "wrong\n"}
                call["function"]["arguments"] = json.dumps(args)
        return msg


def test_cli_rollback_finds_the_write_as_the_critical_chunk(rock_proc, reference, tmp_path, capsys):
    ref = tmp_path / "reference.json"
    ref.write_text(reference.model_dump_json())
    out = tmp_path / "out"
    with WeakTeacher([TASK], None, mistake_rate=0.0).serve() as weak:
        code = main(["resample", "--task", TASK.id, "--reference", str(ref), "--model-url", weak.url, "--group", "1",
                     "--budget", "1", "--critical-budget", "1", "--max-attempts", "3", "--concurrency", "1",
                     "--rock-url", rock_proc.url, "--rock-token", rock_proc.token, "--out", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0, text
    report = json.loads((out / "report.json").read_text())
    rows = {r["start"]: r for r in report["starts"]}
    # starts 7 (the answer) and 6 (the check) resolve from the reference's state; from 5 the weak write fails
    assert [(rows[k]["attempts"], rows[k]["resolved"]) for k in (7, 6, 5, 4)] == [(1, 1), (1, 1), (1, 0), (0, 0)]
    assert report["critical"] == [5] and rows[5]["does"] == "write_file /app/thunder.txt folder"
    assert "critical chunks: 5 (write_file /app/thunder.txt folder)" in text
    assert len((out / "attempts.jsonl").read_text().splitlines()) == 3
