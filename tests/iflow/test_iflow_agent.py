"""pytest tests/iflow/test_iflow_agent.py — sessions of `iflow -p` against the scripted model server."""

from __future__ import annotations

import json
import time

from iflow_helpers import call, tool_messages

from iflow_cli.context import NOTE_MARK, SUMMARY_PROMPT


def test_multi_turn_session_creates_edits_and_runs(iflow, workdir):
    script = [
        call("write_file", path="app.py", content="def add(a, b):\n    return a - b\n\nprint(add(2, 3))\n"),
        call("run_shell_command", command="python3 app.py"),
        call("replace", path="app.py", old_string="return a - b", new_string="return a + b"),
        {
            "content": "Checking again.",
            "tool_calls": [
                {"name": "run_shell_command", "arguments": {"command": "python3 app.py"}},
                {"name": "read_file", "arguments": {"path": "app.py", "limit": 2}},
            ],
        },
        call("list_directory", path="."),
        "Fixed: add() now returns 5 for (2, 3).",
    ]
    run = iflow(script, "--yolo")
    assert run.code == 0 and run.out.strip() == "Fixed: add() now returns 5 for (2, 3)."
    assert (workdir / "app.py").read_text().splitlines()[1] == "    return a + b"
    outputs = tool_messages(run.server.requests[-1])
    assert len(outputs) == 6 and outputs[0].startswith("Created ") and outputs[2].startswith("Replaced 1 occurrence")
    assert "Exit code: 0\nStdout:\n-1" in outputs[1] and "Exit code: 0\nStdout:\n5" in outputs[3]
    assert outputs[4].startswith("[lines 1-2 of 4") and "return a + b" in outputs[4]
    assert "app.py" in outputs[5].splitlines()[1:]
    assert run.server.requests[0]["tools"] and run.server.requests[0]["messages"][1] == {
        "role": "user",
        "content": "do the task",
    }
    assert [r["ok"] for r in run.info["tool_results"]] == [True] * 6


def test_malformed_tool_calls_are_recovered(iflow, workdir):
    script = [
        {"tool_calls": [{"name": "write_file", "arguments": "{not json"}]},
        call("write_file", content="no path"),
        call("delete_everything", path="/"),
        {
            "content": 'I will write it. <tool_call>{"name": "write_file", "arguments": {"path": "ok.txt", "content": "ok"}}</tool_call>'
        },
        "Wrote ok.txt",
    ]
    run = iflow(script, "--yolo")
    assert run.code == 0 and (workdir / "ok.txt").read_text() == "ok"
    observed = [tool_messages(r)[-1] for r in run.server.requests[1:4]]
    assert "not valid JSON" in observed[0]
    assert "missing required argument 'path'" in observed[1]
    assert "unknown tool 'delete_everything'" in observed[2]
    assert '<tool_response name="write_file">' in run.server.requests[4]["messages"][-1]["content"]


def test_too_many_format_errors_end_the_run(iflow):
    bad = {"tool_calls": [{"name": "read_file", "arguments": "[1, 2"}]}
    run = iflow([bad] * 5, "--yolo", "--set", "maxFormatErrors=2")
    assert run.code == 1 and run.info["termination_reason"] == "format_error" and run.info["rounds"] == 3


def test_500_then_success_is_retried_and_shown(iflow):
    run = iflow([{"status": 500, "body": "upstream overloaded"}, {"status": 503, "body": "again"}, "done"], "--yolo")
    assert run.code == 0 and run.out.strip() == "done"
    assert "HTTP 500" in run.err and "upstream overloaded" in run.err and "retrying" in run.err
    assert len(run.server.requests) == 3


def test_401_is_shown_and_not_retried(iflow):
    run = iflow(["never"], "--api-key", "wrong", api_key="right")
    assert run.code == 2 and "HTTP 401" in run.err and "Incorrect API key" in run.err
    assert run.server.requests == []  # refused at startup, the script untouched


def test_model_error_after_retries_ends_with_model_error(iflow):
    run = iflow([{"status": 500, "body": "down"}] * 3, "--set", "maxRetries=2")
    assert run.code == 1 and run.info["termination_reason"] == "model_error" and "down" in run.info["error"]


def test_execution_info_json(iflow):
    run = iflow([call("run_shell_command", command="echo hi"), "bye"], "--yolo")
    info = run.info
    assert info["finished"] is True and info["termination_reason"] == "finished" and info["answer"] == "bye"
    assert info["rounds"] == 2 and len(info["session_id"]) == 32 and info["seconds"] > 0
    sent = sum(len(json.dumps(r)) > 0 for r in run.server.requests)
    assert (
        sent == 2
        and info["usage"]["prompt_tokens"] > 0
        and info["usage"]["total_tokens"] == info["usage"]["prompt_tokens"] + info["usage"]["completion_tokens"]
    )
    [result] = info["tool_results"]
    assert result == {
        "round": 0,
        "call_id": run.server.requests[1]["messages"][2]["tool_calls"][0]["id"],
        "tool": "run_shell_command",
        "parsed": True,
        "ok": True,
        "exit_code": 0,
        "error": "",
    }
    assert result["call_id"].startswith("call_")
    kinds = [e["type"] for e in run.trajectory]
    assert (
        kinds[:2] == ["session", "message"]
        and run.trajectory[0]["system_prompt"].startswith("You are iFlow")
        and kinds.count("model_call") == 2
        and kinds[-1] == "result"
    )


def test_max_turns_ends_with_max_turns(iflow):
    run = iflow([call("run_shell_command", command="true")] * 5, "--yolo", "--max-turns", "3")
    assert run.code == 1 and run.info["termination_reason"] == "max_turns" and run.info["rounds"] == 3


def test_session_timeout_during_slow_model(iflow):
    start = time.monotonic()
    run = iflow(
        [call("run_shell_command", command="true"), {"content": "late", "delay": 5}], "--yolo", "--timeout", "1.5"
    )
    assert run.code == 1 and run.info["termination_reason"] == "timeout"
    assert time.monotonic() - start < 4.5


def test_shell_timeout_kills_the_process_group(iflow, workdir):
    # The grandchild writes its pid, then would touch a file after 3s: it must die with the group.
    cmd = "(sleep 3; touch survived) & echo $! > child.pid; sleep 30"
    run = iflow([call("run_shell_command", command=cmd, timeout=1), "stopped it"], "--yolo")
    assert run.code == 0 and "Timed out after 1s (process group killed)" in tool_messages(run.server.requests[1])[0]
    time.sleep(3.5)
    assert not (workdir / "survived").exists()


def test_batch_without_yolo_refuses_shell_and_writes(iflow, workdir):
    run = iflow(
        [
            call("run_shell_command", command="touch x"),
            call("write_file", path="y", content=""),
            call("read_file", path="z"),
            "gave up",
        ]
    )
    refusals = [tool_messages(r)[-1] for r in run.server.requests[1:3]]
    assert all("refused" in r and "--yolo" in r for r in refusals)
    assert not (workdir / "x").exists() and not (workdir / "y").exists()
    assert (
        "no such file" in tool_messages(run.server.requests[3])[-1].lower()
        or "No such file" in tool_messages(run.server.requests[3])[-1]
    )


def test_compression_keeps_task_and_recent_turns(iflow, workdir):
    big = "python3 -c \"print('line of output ' * 120)\""
    turns = [call("run_shell_command", command=f"{big} # step {i}") for i in range(8)]

    def responder(body):
        if body["messages"][0]["content"] == SUMMARY_PROMPT:
            return "Task: print lines. Files changed: none. What remains: more steps."
        return turns.pop(0) if turns else "finished all steps"

    run = iflow(responder, "--yolo", "--set", "tokensLimit=6000", prompt="run the eight steps")
    assert run.code == 0, run.err
    summaries = [r for r in run.server.requests if r["messages"][0]["content"] == SUMMARY_PROMPT]
    assert summaries, "compression never asked the model for a state note"
    last = [r for r in run.server.requests if r["messages"][0]["content"] != SUMMARY_PROMPT][-1]
    msgs = last["messages"]
    assert msgs[1] == {"role": "user", "content": "run the eight steps"} and msgs[0]["role"] == "system"
    note = msgs[2]["content"]
    assert note.startswith(NOTE_MARK) and "Task: run the eight steps" in note and "What remains: more steps" in note
    assert "# step 0" in note  # a command that worked, recorded mechanically
    assert "# step 7" in json.dumps(msgs[-2:])  # the most recent turn verbatim
    assert all(e["after"] <= 6000 for e in run.trajectory if e["type"] == "compression")


def test_server_without_tool_support_falls_back_to_text_calls(iflow, workdir):
    def responder(body):
        if "tools" in body:  # what vLLM answers when started without a tool-call parser
            return {
                "status": 400,
                "body": '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
            }
        if body["messages"][-1]["role"] == "user" and "<tool_response" in body["messages"][-1]["content"]:
            return "created t.txt"
        return '<tool_call>{"name": "write_file", "arguments": {"path": "t.txt", "content": "text mode"}}</tool_call>'

    run = iflow(responder, "--yolo")
    assert run.code == 0 and (workdir / "t.txt").read_text() == "text mode"
    assert "rejects OpenAI tools" in run.err and "<tool_call>" in run.server.requests[-1]["messages"][0]["content"]


def test_request_timeout_is_a_model_error_with_its_cause(iflow):
    run = iflow([{"content": "slow", "delay": 3}], "--set", "requestTimeout=0.5", "--set", "maxRetries=0")
    assert run.code == 1 and run.info["termination_reason"] == "model_error" and "timed out" in run.info["error"]


def test_session_timeout_caps_a_long_command(iflow):
    start = time.monotonic()
    run = iflow([call("run_shell_command", command="sleep 20"), "never reached"], "--yolo", "--timeout", "1.5")
    assert run.info["termination_reason"] == "timeout" and time.monotonic() - start < 6


def test_lenient_with_object_arguments_and_content_parts(iflow, workdir):
    # Off-spec but seen in the wild: arguments as an object, content as a list of parts.
    reply = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "ok"}],
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "write_file", "arguments": {"path": "o.txt", "content": "obj"}},
                        }
                    ],
                },
            }
        ]
    }
    run = iflow([{"status": 200, "body": reply}, "done"], "--yolo")
    assert run.code == 0 and (workdir / "o.txt").read_text() == "obj"
    assert run.server.requests[1]["messages"][2]["content"] == "ok"


def test_tool_results_name_every_call_its_round_and_why_it_failed(iflow):
    script = [
        {"tool_calls": [{"name": "run_shell_command", "arguments": "{not json"}]},
        {
            "tool_calls": [
                {"name": "run_shell_command", "arguments": {"command": "echo oops >&2; echo fine; exit 3"}},
                {"name": "delete_everything", "arguments": {"path": "/"}},
                {"name": "write_file", "arguments": {"content": "no path"}},
            ]
        },
        call("run_shell_command", command="sleep 5", timeout=0.5),
        {
            "tool_calls": [
                {"name": "run_shell_command", "arguments": {"command": "false"}},
                *call("read_file", path="nope")["tool_calls"],
            ]
        },
        call("run_shell_command", command="echo ok"),
        "done",
    ]
    run = iflow(script, "--yolo")
    assert run.code == 0, run.err
    results = run.info["tool_results"]
    # The ids the model gave, as the agent echoed them back in the next request's assistant message.
    given = {
        i: [c["id"] for c in run.server.requests[i + 1]["messages"][-1 - n]["tool_calls"]]
        for i, n in ((0, 1), (1, 3), (2, 1), (3, 2), (4, 1))
    }
    assert [(r["round"], r["call_id"]) for r in results] == [(i, cid) for i, ids in given.items() for cid in ids]
    assert all(cid.startswith("call_") for ids in given.values() for cid in ids)
    brief = [(r["tool"], r["parsed"], r["ok"], r["exit_code"]) for r in results]
    assert brief == [
        ("run_shell_command", False, False, None),
        ("run_shell_command", True, False, 3),
        ("delete_everything", False, False, None),
        ("write_file", False, False, None),
        ("run_shell_command", True, False, 137),
        ("run_shell_command", True, False, 1),
        ("read_file", True, False, None),
        ("run_shell_command", True, True, 0),
    ]
    errors = [r["error"] for r in results]
    assert errors[0].startswith("arguments of run_shell_command are not valid JSON")
    assert errors[1] == "oops"  # the first line of stderr, not of stdout
    assert errors[2].startswith("unknown tool 'delete_everything'")
    assert errors[3] == "write_file: missing required argument 'path'"
    assert errors[4:6] == ["timeout", "exit code 1"]
    assert errors[6].startswith("read_file failed") and "nope" in errors[6]
    assert errors[7] == ""


def test_tool_results_without_a_call_id_and_in_text_mode(iflow, workdir):
    reply = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "type": "function",
                            "function": {"name": "write_file", "arguments": '{"path": "a", "content": "1"}'},
                        }
                    ],
                },
            }
        ]
    }
    text_call = '<tool_call>{"name": "run_shell_command", "arguments": {"command": "cat a"}}</tool_call>'
    run = iflow([{"status": 200, "body": reply}, text_call, "<tool_call>[1</tool_call>", "done"], "--yolo")
    assert run.code == 0, run.err
    # No id from the model: the agent names the call for its tool message, but reports no call_id.
    assert run.server.requests[1]["messages"][-1]["tool_call_id"] == "call_0"
    brief = [(r["round"], r["call_id"], r["tool"], r["parsed"], r["ok"]) for r in run.info["tool_results"]]
    assert brief == [
        (0, None, "write_file", True, True),
        (1, None, "run_shell_command", True, True),
        (2, None, "?", False, False),
    ]


def test_tool_result_rounds_count_the_summary_calls(iflow):
    """One chunk per model call: the compressor's calls count, so `round` is the issuing call's position."""
    big = "python3 -c \"print('line of output ' * 120)\""
    turns = [call("run_shell_command", command=f"{big} # step {i}") for i in range(8)]
    seen, issued = [0], []

    def responder(body):
        seen[0] += 1
        if body["messages"][0]["content"] == SUMMARY_PROMPT:
            return "Task: print lines. Files changed: none. What remains: more steps."
        if not turns:
            return "finished all steps"
        issued.append(seen[0] - 1)
        return turns.pop(0)

    run = iflow(responder, "--yolo", "--set", "tokensLimit=6000", prompt="run the eight steps")
    assert run.code == 0, run.err
    rounds = [r["round"] for r in run.info["tool_results"]]
    assert rounds == issued and len(rounds) == 8
    assert rounds[-1] > 7  # summaries came in between: counting only the agent's own turns would give 7
