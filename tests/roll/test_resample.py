"""Initialized resampling without Docker: the reference's prefix, its replay on a fake sandbox, the joined
trajectory: `.venv/bin/pytest tests/roll/test_resample.py` (a second). The real thing: test_resample_docker.py.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from iflow_cli.agent import check_history
from rock import errors as rock_errors
from rock.contracts import Chunk, ChunkResponse, ToolCall, ToolResult, Trajectory
from roll.rollout.resample import (
    BadReference,
    ReplayMismatch,
    check_reference,
    joined_chunks,
    joined_results,
    prefix_calls,
    reference_history,
    replay,
    starts_processes,
)
from roll.tasks.spec import Environment, TaskSpec

TASK = TaskSpec(id="t-0", instruction="Write the word in a.txt to b.txt", family="read_then_write",
                environment=Environment(image="rock/base:bookworm", setup="echo toad > a.txt"),
                tests={"run-tests.sh": "true"}, solution="cat a.txt > b.txt")  # fmt: skip
SYSTEM = {"role": "system", "content": "You are iflow."}


def native(cid: str, name: str, **args) -> ToolCall:
    return ToolCall(id=cid, function={"name": name, "arguments": json.dumps(args)})


def chunk(i: int, messages: list[dict], calls=(), text: str = "") -> Chunk:
    return Chunk(trajectory_id="ref", sandbox_id="sb-ref", index=i, messages=messages, latency_s=0.1,
                 created_at=float(i), response=ChunkResponse(text=text, tool_calls=list(calls)))  # fmt: skip


def reference() -> Trajectory:
    """Five chunks: list, a failing typo, mkdir, a write (native), a text-mode write and a cut-short call."""
    calls = [
        [native("c0", "list_directory", path=".")],
        [native("c1", "run_shell_command", command="mkdri out")],
        [native("c2", "run_shell_command", command="mkdir out"), native("c3", "read_file", path="a.txt")],
        [native("c4", "write_file", path="out/b.txt", content="toad\n")],
        [],
    ]
    text = ['', '', '', '', '<tool_call>{"name": "write_file", "arguments": {"path": "c.txt", "content": "x"}}</tool_call>'
            '<tool_call>{"name": "write_file", "arguments": {"path": "d.txt"</tool_call>']  # fmt: skip
    history: list[dict] = [SYSTEM, {"role": "user", "content": TASK.instruction}]
    chunks = []
    for i in range(5):
        chunks.append(chunk(i, list(history), calls[i], text[i]))
        history.append({"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls[i]]})
        history.append({"role": "tool", "tool_call_id": f"c{i}", "content": "..."})
    chunks.append(chunk(5, list(history), text="Done."))
    results = [
        ToolResult(chunk_index=0, call_id="c0", tool="list_directory", parsed=True, ok=True),
        ToolResult(chunk_index=1, call_id="c1", tool="run_shell_command", parsed=True, ok=False, exit_code=127),
        ToolResult(chunk_index=2, call_id="c3", tool="read_file", parsed=True, ok=True),  # out of order: by id
        ToolResult(chunk_index=2, call_id="c2", tool="run_shell_command", parsed=True, ok=True, exit_code=0),
        ToolResult(chunk_index=3, call_id="c4", tool="write_file", parsed=True, ok=True),
        ToolResult(chunk_index=4, tool="write_file", parsed=True, ok=True),
        ToolResult(chunk_index=4, tool="write_file", parsed=False, ok=False, error="not valid JSON"),
    ]
    return Trajectory(trajectory_id="ref", task_id=TASK.id, family=TASK.family, split="train", reward=1.0,
                      status="resolved", chunks=chunks, tool_results=results, sandbox_id="sb-ref")  # fmt: skip


class FakeSandbox:
    """Files in a dict; a shell command exits with `codes[command]` (0 when not listed)."""

    def __init__(self, codes: dict[str, int] | None = None):
        self.files: dict[str, bytes] = {}
        self.codes = codes or {}
        self.ran: list[tuple[str, str | None]] = []

    def exec(self, cmd, timeout=None, cwd=None, env=None):
        command = cmd[2] if cmd[:2] == ["bash", "-c"] else " ".join(cmd)
        self.ran.append((command, cwd))
        code = self.codes.get(command, 0)
        return SimpleNamespace(exit_code=code, stdout="", stderr="" if not code else "boom", duration_s=0.0,
                               timed_out=False)  # fmt: skip

    def read_file(self, path):
        if path not in self.files:
            raise rock_errors.NotFound(f"no {path}")
        return self.files[path]

    def write_file(self, path, data, mode=None):
        self.files[path] = data if isinstance(data, bytes) else data.encode()


def test_prefix_calls_pair_each_call_with_its_recorded_result():
    calls = prefix_calls(reference(), 5)
    got = [(c.chunk, c.tool, c.args, c.recorded and (c.recorded.ok, c.recorded.parsed)) for c in calls]
    assert got == [
        (0, "list_directory", {"path": "."}, (True, True)),
        (1, "run_shell_command", {"command": "mkdri out"}, (False, True)),
        (2, "run_shell_command", {"command": "mkdir out"}, (True, True)),  # by id, though listed second
        (2, "read_file", {"path": "a.txt"}, (True, True)),
        (3, "write_file", {"path": "out/b.txt", "content": "toad\n"}, (True, True)),
        (4, "write_file", {"path": "c.txt", "content": "x"}, (True, True)),  # text-mode block, by order
        (4, "?", None, (False, False)),  # cut short: the agent ran nothing
    ]
    assert [c.chunk for c in prefix_calls(reference(), 2)] == [0, 1]
    assert prefix_calls(reference(), 0) == []


def test_replay_runs_the_state_changing_calls_the_way_iflows_tools_do():
    box = FakeSandbox({"mkdri out": 127})
    lines = replay(box, TASK, prefix_calls(reference(), 5))
    shell = [c for c, cwd in box.ran if cwd == "/app"]
    assert shell == ["mkdri out", "mkdir out"]  # in the workdir; the reads were not run
    assert box.files == {"/app/out/b.txt": b"toad\n", "/app/c.txt": b"x"}  # write_file by upload
    assert [line.split()[0] for line in lines] == ["skip", "ran", "ran", "skip", "ran", "ran", "skip"]


def test_replay_stops_where_an_outcome_differs_from_the_recorded_one():
    with pytest.raises(
        ReplayMismatch, match=r"chunk 2 run_shell_command .*mkdir out.* failed \(boom\) where the reference's succeeded"
    ):
        replay(FakeSandbox({"mkdri out": 127, "mkdir out": 1}), TASK, prefix_calls(reference(), 5))
    with pytest.raises(ReplayMismatch, match=r"chunk 1 .* succeeded where the reference's failed \(127\)"):
        replay(FakeSandbox(), TASK, prefix_calls(reference(), 5))  # the typo now runs


def test_the_history_is_the_start_chunks_prompt_after_the_system_prompt_and_iflow_accepts_it():
    ref = reference()
    history = reference_history(ref, 3)
    assert [SYSTEM, *history] == ref.chunks[3].messages and history[0]["content"] == TASK.instruction
    assert check_history(history, TASK.instruction) == history
    assert reference_history(ref, 0) == [{"role": "user", "content": TASK.instruction}]


def test_bad_references_are_refused_with_the_reason():
    ref = reference()
    with pytest.raises(BadReference, match="start chunk 6 is not a chunk of reference ref \\(6 chunks\\)"):
        check_reference(TASK, ref, 6)
    with pytest.raises(BadReference, match="is of task t-0, not u-0"):
        check_reference(TASK.model_copy(update={"id": "u-0"}), ref, 1)
    bare = ref.model_copy(deep=True)
    bare.chunks[2].messages = None
    with pytest.raises(BadReference, match="chunk 2 of reference ref has no chat prompt"):
        check_reference(TASK, bare, 2)
    check_reference(TASK, ref, 5)


def test_the_joined_trajectory_numbers_given_then_sampled_chunks_and_their_results():
    ref = reference()
    sampled = [chunk(i, [], text="x").model_copy(update={"trajectory_id": "new", "sandbox_id": "sb-new"})
               for i in (0, 1)]  # fmt: skip
    joined = joined_chunks(ref, 2, sampled, "new")
    assert [(c.index, c.trajectory_id, c.sandbox_id) for c in joined] == [
        (0, "new", "sb-ref"), (1, "new", "sb-ref"), (2, "new", "sb-new"), (3, "new", "sb-new")]  # fmt: skip
    new = [ToolResult(chunk_index=0, tool="run_shell_command", parsed=True, ok=True),
           ToolResult(chunk_index=None, tool="?", parsed=False, ok=False)]  # fmt: skip
    results = joined_results(ref, 2, sampled, new)
    assert [(r.chunk_index, r.call_id) for r in results] == [(0, "c0"), (1, "c1"), (2, None), (None, None)]


def test_processes_that_no_snapshot_holds_force_a_replay():
    calls = prefix_calls(reference(), 5)
    assert not starts_processes(TASK, calls)
    bg = TASK.model_copy(update={"environment": Environment(image="x", setup="setsid -f sleep 100 >/dev/null")})
    assert starts_processes(bg, calls)
    calls[2].args = {"command": "python3 -m http.server 8000 &"}
    assert starts_processes(TASK, calls)
    calls[2].args = {"command": "true && echo a > b"}
    assert not starts_processes(TASK, calls)
