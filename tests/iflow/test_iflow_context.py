"""pytest tests/iflow/test_iflow_context.py — the compressor and token counter on hand-built histories."""

from __future__ import annotations

import json

from iflow_cli.context import NOTE_MARK, Compressor, TokenCounter, split_turns


def tool_turn(i: int, size: int = 3000) -> list[dict]:
    args = json.dumps({"command": f"make step{i}"})
    call = {"id": f"c{i}", "type": "function", "function": {"name": "run_shell_command", "arguments": args}}
    out = f"Command: make step{i}\nExit code: 0\nStdout:\n" + "x" * size
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"c{i}", "content": out},
    ]


def session(*tasks_and_turns) -> list[dict]:
    msgs = [{"role": "system", "content": "sys"}]
    for item in tasks_and_turns:
        msgs += [item] if isinstance(item, dict) else item
    return msgs


def test_counter_calibrates_on_server_counts():
    counter, msgs = TokenCounter(), [{"role": "user", "content": "a" * 1000}]
    counter.calibrate(msgs, None, 500)
    assert 495 <= counter.count(msgs) <= 505


def test_compression_pins_current_task_and_keeps_tool_pairs():
    task2 = {"role": "user", "content": "second task"}
    first = {"role": "user", "content": "first task"}
    msgs = session(
        first,
        *[tool_turn(i) for i in range(4)],
        {"role": "assistant", "content": "done 1"},
        task2,
        *[tool_turn(i) for i in range(4, 8)],
    )
    requests = []
    comp = Compressor(20000, 0.8, TokenCounter(1.0), lambda req: requests.append(req) or "what remains: step 8")
    new, note = comp.compress(msgs, pinned=task2)
    assert new[:2] == msgs[:2] and new[2]["content"] == note and note.startswith(NOTE_MARK)
    assert new[3] is task2 and new[4]["role"] == "assistant"
    assert all(m["role"] != "tool" or new[i - 1].get("tool_calls") for i, m in enumerate(new))
    assert "`make step0`" in note and "what remains: step 8" in note and "Task: first task" in note
    assert "second task" in requests[0][1]["content"]  # the summariser saw the folded history
    head, turns = split_turns(new)
    assert len(turns) < len(split_turns(msgs)[1])


def test_failed_summary_still_gives_the_mechanical_note():
    msgs = session({"role": "user", "content": "t"}, *[tool_turn(i) for i in range(5)])

    def broken(request):
        raise TimeoutError("model timed out")

    new, note = Compressor(12000, 0.8, TokenCounter(1.0), broken).compress(msgs)
    assert "could not summarise: model timed out" in note and "`make step1`" in note


def test_shrink_cuts_long_outputs_not_the_task():
    msgs = session({"role": "user", "content": "T" * 5000}, *tool_turn(0, 9000))
    out = Compressor(1000, 0.8, TokenCounter(1.0), lambda r: "").shrink(msgs, 300)
    assert (
        out[1]["content"] == "T" * 5000 and "characters elided" in out[-1]["content"] and len(out[-1]["content"]) < 400
    )
