"""The trajectory contract (`rock.contracts`): `.venv/bin/pytest tests/roll/test_contracts.py -q`.

Linking iflow's tool_results to chunks, policy versions and the Trajectory JSON round trip on
hand-built chunks; then the whole path through Docker: iflow in a real `rock serve` sandbox
(network=model, a scripted model behind the gateway), its execution info read back from the
sandbox and its tool calls tied to the chunks the gateway recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from rock.contracts import Chunk, ChunkResponse, ToolCall, ToolResult, Trajectory, link_tool_results, versions_of

ROOT = Path(__file__).resolve().parents[2]


def chunk(index: int, call_ids: tuple[str | None, ...] = (), error: str | None = None, version=None) -> Chunk:
    calls = [ToolCall(id=cid, function={"name": "run_shell_command", "arguments": "{}"}) for cid in call_ids]
    return Chunk(
        trajectory_id="t",
        sandbox_id="sb-1",
        index=index,
        response=ChunkResponse(text="", tool_calls=calls),
        latency_s=0.1,
        policy_version=version,
        error=error,
        created_at=1.0,
    )


def result(round_: int | None, call_id: str | None = None, **kw) -> dict:
    return {"round": round_, "call_id": call_id, "tool": "run_shell_command", "parsed": True, "ok": True} | kw


def test_link_by_call_id_wins_over_a_wrong_round():
    chunks = [chunk(0, ("a",)), chunk(1, ("b", "c")), chunk(2, ("d",))]
    linked = link_tool_results(chunks, [result(0, "a"), result(0, "c"), result(9, "d"), result(2, "b")])
    assert [r.chunk_index for r in linked] == [0, 1, 2, 1]
    assert [r.call_id for r in linked] == ["a", "c", "d", "b"]


def test_link_by_round_counts_only_completed_calls():
    # Text-mode calls have no ids; the chunk with an error (a stream that broke and was retried)
    # is no round of the agent's, so round 1 is chunk 2.
    chunks = [chunk(0), chunk(1, error="upstream connection broke"), chunk(2), chunk(3)]
    linked = link_tool_results(chunks, [result(0), result(1), result(2), result(2), result(3), result(None)])
    assert [r.chunk_index for r in linked] == [0, 2, 3, 3, None, None]


def test_link_falls_back_to_round_when_an_id_is_reused_or_unknown():
    chunks = [chunk(0, ("call_0",)), chunk(1, ("call_0",)), chunk(2, ("x",))]
    linked = link_tool_results(chunks, [result(0, "call_0"), result(1, "call_0"), result(2, "nowhere")])
    assert [r.chunk_index for r in linked] == [0, 1, 2]
    assert link_tool_results(chunks, [result(-1, "nowhere"), result(True)])[0].chunk_index is None


def test_link_keeps_what_the_agent_said_about_each_call():
    bad = result(0, "a", tool="delete_everything", parsed=False, ok=False, exit_code=None, error="unknown tool")
    failed = result(0, "b", ok=False, exit_code=2, error="ls: cannot access 'x': No such file or directory")
    old = {"tool": "read_file", "ok": True, "exit_code": None}  # before round/call_id/parsed existed
    linked = link_tool_results([chunk(0, ("a", "b"))], [bad, failed, old])
    assert linked == [
        ToolResult(chunk_index=0, call_id="a", tool="delete_everything", parsed=False, ok=False, error="unknown tool"),
        ToolResult(
            chunk_index=0,
            call_id="b",
            tool="run_shell_command",
            parsed=True,
            ok=False,
            exit_code=2,
            error="ls: cannot access 'x': No such file or directory",
        ),  # fmt: skip
        ToolResult(chunk_index=None, tool="read_file", parsed=True, ok=True),
    ]


def test_versions_of_keeps_first_appearance_order():
    chunks = [chunk(i, version=v) for i, v in enumerate([None, 3, 3, None, 5, 4, 3])]
    assert versions_of(chunks) == [3, 5, 4]
    assert versions_of([]) == [] and versions_of([chunk(0)]) == []


def test_trajectory_json_round_trip_and_validation():
    chunks = [chunk(0, ("a",), version=1), chunk(1, version=2)]
    chunks[0].prompt_token_ids, chunks[0].response_token_ids, chunks[0].response_logprobs = [1, 2], [3], [-0.25]
    traj = Trajectory(
        trajectory_id="t",
        task_id="create_file-0",
        family="create_file",
        split="train",
        reward=1.0,
        status="resolved",
        policy_versions=versions_of(chunks),
        chunks=chunks,
        tool_results=link_tool_results(chunks, [result(0, "a", ok=False, exit_code=1, error="boom")]),
        sandbox_id="sb-1",
        group=3,
        seconds=1.5,
    )
    again = Trajectory.model_validate_json(traj.model_dump_json())
    assert again == traj and again.resolved and again.policy_versions == [1, 2]
    assert again.chunks[0].response.tool_calls[0].id == "a" and again.tool_results[0].chunk_index == 0
    assert json.loads(traj.model_dump_json())["chunks"][0]["response_logprobs"] == [-0.25]
    data = traj.model_dump()
    with pytest.raises(ValidationError, match="status"):
        Trajectory.model_validate(data | {"status": "passed"})
    with pytest.raises(ValidationError, match="surprise"):
        Trajectory.model_validate(data | {"surprise": 1})
    with pytest.raises(ValidationError, match="latency_s"):
        Chunk.model_validate({k: v for k, v in data["chunks"][0].items() if k != "latency_s"})


# ---- through Docker: iflow in a rock sandbox, its calls tied to the recorded chunks ----------------

SCRIPT = [
    {"tool_calls": [{"name": "run_shell_command", "arguments": {"command": "echo hi > note.txt && cat note.txt"}}]},
    {
        "content": "Two more.",
        "tool_calls": [
            {"name": "write_file", "arguments": "{not json"},
            {"name": "run_shell_command", "arguments": {"command": "cat missing.txt"}},
        ],
    },
    {"tool_calls": [{"name": "delete_everything", "arguments": {"path": "/"}}]},
    "note.txt says hi",
]


@pytest.mark.docker
@pytest.mark.slow
def test_iflow_tool_results_link_to_the_sandbox_chunks(tmp_path, base_image):
    from iflow_cli.testing.scripted_server import ScriptedServer
    from rock.launch import RockProcess

    with (
        ScriptedServer(SCRIPT) as upstream,
        RockProcess(model_upstream=upstream.url, allow_mounts=[ROOT], state_dir=tmp_path / "rock") as rock,
        rock.client() as client,
    ):
        mount = {"source": str(ROOT / "iflow_cli"), "target": "/opt/ale/iflow_cli", "read_only": True}
        with client.create_sandbox(
            image=base_image, network="model", mounts=[mount], trajectory_id="attempt-1", labels={"ale.test": "roll"}
        ) as sb:
            argv = ["python3", "-m", "iflow_cli", "-p", "write a note", "--yolo", "-o", "/tmp/iflow-info.json"]
            run = sb.exec(argv, timeout=120, cwd="/root", env={"PYTHONPATH": "/opt/ale"})
            info = json.loads(sb.read_file("/tmp/iflow-info.json"))
            chunks = sb.trajectory()
            env = {**os.environ, "ROCK_URL": rock.url, "ROCK_API_TOKEN": rock.token}
            cli = subprocess.run(
                [sys.executable, "-m", "rock", "sandbox", "trajectory", sb.id],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
    assert run.exit_code == 0 and run.stdout.strip() == "note.txt says hi", run.stderr
    assert cli.returncode == 0 and [Chunk.model_validate_json(line) for line in cli.stdout.splitlines()] == chunks
    assert [(c.trajectory_id, c.index, c.error) for c in chunks] == [("attempt-1", i, None) for i in range(4)]
    assert info["rounds"] == 4 and [r["round"] for r in info["tool_results"]] == [0, 1, 1, 2]

    linked = link_tool_results(chunks, info["tool_results"])
    assert [r.chunk_index for r in linked] == [0, 1, 1, 2]
    for r in linked:  # each call id is one the issuing chunk's response holds
        assert r.call_id and r.call_id in [call.id for call in chunks[r.chunk_index].response.tool_calls]
    brief = [(r.tool, r.parsed, r.ok, r.exit_code) for r in linked]
    assert brief == [
        ("run_shell_command", True, True, 0),
        ("write_file", False, False, None),
        ("run_shell_command", True, False, 1),
        ("delete_everything", False, False, None),
    ]
    assert linked[1].error.startswith("arguments of write_file are not valid JSON")
    assert linked[2].error == "cat: missing.txt: No such file or directory"
    assert linked[3].error.startswith("unknown tool 'delete_everything'")
    # Without the ids (text-mode calls have none) the rounds alone tie them to the same chunks.
    by_round = link_tool_results(chunks, [dict(r, call_id=None) for r in info["tool_results"]])
    assert [r.chunk_index for r in by_round] == [0, 1, 1, 2]
