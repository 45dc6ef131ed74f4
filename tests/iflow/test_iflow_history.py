"""pytest tests/iflow/test_iflow_history.py — `iflow -p TASK --history FILE` continues a recorded conversation
(roll/rollout/resample.py starts the agent this way at chunk k of a reference trajectory).
"""

from __future__ import annotations

import json

import pytest
from iflow_helpers import call

TASK = "Write the word in a.txt to b.txt"
CALL = {"id": "call_ref_0", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "a.txt"}'}}
HISTORY = [
    {"role": "user", "content": TASK},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_ref_0", "content": "toad\n"},
]


def write(workdir, data) -> str:
    path = workdir.parent / "history.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_the_model_continues_the_history_after_iflows_own_system_prompt(iflow, workdir):
    script = [call("write_file", path="b.txt", content="toad"), "Done."]
    run = iflow(script, "--yolo", "--max-turns", "2", "--history", write(workdir, HISTORY), prompt=TASK)
    assert run.code == 0 and run.out.strip() == "Done.", run.err
    first, second = run.server.requests
    assert first["messages"][0]["role"] == "system" and "coding agent" in first["messages"][0]["content"].lower()
    assert first["messages"][1:] == HISTORY  # the prefix as prompt history, exactly
    assert second["messages"][1:4] == HISTORY and second["messages"][-1]["role"] == "tool"
    assert (workdir / "b.txt").read_text() == "toad"
    # max turns and the tool results' rounds count this session's own model calls only
    assert run.info["rounds"] == 2 and [r["round"] for r in run.info["tool_results"]] == [0]
    messages = [e["message"] for e in run.trajectory if e["type"] == "message"]
    assert messages[:3] == HISTORY


@pytest.mark.parametrize(
    "history, message",
    [
        ({"role": "user"}, "non-empty JSON list"),
        ([{"role": "system", "content": "x"}, *HISTORY], "message 0 has role 'system'"),
        ([{"role": "user", "content": "another task"}], "must start with the task"),
        (HISTORY[:2], "ends with an assistant message"),
        ("{not json", "Expecting property name"),
    ],
)
def test_a_history_that_cannot_be_continued_is_a_config_error(iflow, workdir, history, message):
    path = workdir.parent / "history.json"
    path.write_text(history if isinstance(history, str) else json.dumps(history))
    run = iflow(["never asked"], "--yolo", "--history", str(path), prompt=TASK)
    assert run.code == 2 and run.server.requests == []
    assert run.info["termination_reason"] == "config_error" and message in run.info["error"], run.info["error"]
    assert run.err.count("\n") == 1 and run.err.startswith("iflow: --history ")


def test_history_needs_a_prompt(workdir, capsys):
    from iflow_cli.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--history", write(workdir, HISTORY)])
    assert e.value.code == 2 and "--history needs -p" in capsys.readouterr().err
