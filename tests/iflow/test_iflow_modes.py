"""pytest tests/iflow/test_iflow_modes.py — streaming, text tool calls, memory files, the REPL and `python3 -m iflow_cli`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from iflow_helpers import call, tool_messages

from iflow_cli.testing.scripted_server import ScriptedServer

ROOT = Path(__file__).resolve().parents[2]


def test_streaming_replies_are_reassembled(iflow, workdir):
    script = [
        {
            "content": "Writing the file now.",
            "tool_calls": [{"name": "write_file", "arguments": {"path": "s.txt", "content": "streamed"}}],
        },
        "The file s.txt holds 'streamed'.",
    ]
    run = iflow(script, "--yolo", "--set", "stream=true")
    assert run.code == 0 and run.out.strip() == "The file s.txt holds 'streamed'."
    assert (workdir / "s.txt").read_text() == "streamed" and run.server.requests[0]["stream"] is True
    assert run.info["usage"]["completion_tokens"] > 0


def test_text_tool_call_mode_sends_no_tools(iflow, workdir):
    script = [
        '<tool_call>{"name": "run_shell_command", "arguments": {"command": "echo $((6*7))"}}</tool_call>',
        "It is 42.",
    ]
    run = iflow(script, "--yolo", "--set", "toolCallMode=text")
    assert run.code == 0 and run.out.strip() == "It is 42."
    first, second = run.server.requests
    assert (
        "tools" not in first
        and "<tool_call>" in first["messages"][0]["content"]
        and "run_shell_command" in first["messages"][0]["content"]
    )
    assert (
        '<tool_response name="run_shell_command">' in second["messages"][-1]["content"]
        and "42" in second["messages"][-1]["content"]
    )


def test_memory_files_from_home_root_and_cwd(iflow, workdir):
    home = Path(os.environ["HOME"])
    (home / ".iflow").mkdir()
    (home / ".iflow" / "IFLOW.md").write_text("Always answer briefly.")
    (workdir / ".git").mkdir()
    (workdir / "IFLOW.md").write_text("Tests run with `make check`.")
    run = iflow(["ok"])
    system = run.server.requests[0]["messages"][0]["content"]
    assert "Always answer briefly." in system and system.count("Tests run with `make check`.") == 1


def test_scripted_provider_from_settings(workdir, capsys):
    from iflow_cli.cli import main

    (workdir / "script.json").write_text(json.dumps([call("glob", pattern="*.json"), "found script.json"]))
    (workdir / ".iflow").mkdir()
    (workdir / ".iflow" / "settings.json").write_text(
        json.dumps({"modelProvider": "scripted", "scriptFile": "script.json"})
    )
    assert main(["-p", "find json files", "--yolo"]) == 0
    assert capsys.readouterr().out.strip() == "found script.json"


def env_for(base_url: str, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IFLOW_", "OPENAI_"))}
    return {**env, "PYTHONPATH": str(ROOT), "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "k", "HOME": str(home)}


def test_repl_session_over_stdin(tmp_path):
    # Without a terminal the REPL reads plain lines; approvals are asked on the same input.
    script = [
        call("run_shell_command", command="echo approved > a.txt"),
        "first done",
        call("write_file", path="b.txt", content="x"),
        "second done",
    ]
    with ScriptedServer(script) as s:
        proc = subprocess.run(
            [sys.executable, "-m", "iflow_cli"],
            input="make a\ny\nmake b\nn\n/exit\n",
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env_for(s.url, tmp_path),
            timeout=60,
        )
        requests = s.requests
    assert proc.returncode == 0, proc.stderr
    assert "first done" in proc.stdout and "second done" in proc.stdout
    assert (tmp_path / "a.txt").read_text() == "approved\n" and not (tmp_path / "b.txt").exists()
    assert "refused by the user" in tool_messages(requests[3])[-1]
    assert [m["content"] for m in requests[2]["messages"] if m["role"] == "user"] == ["make a", "make b"]


def test_python_m_iflow_cli_batch(tmp_path):
    with ScriptedServer([call("write_file", path="out.txt", content="hi"), "wrote out.txt"]) as s:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "iflow_cli",
                "-p",
                "write hi to out.txt",
                "--yolo",
                "--max-turns",
                "4",
                "-o",
                "info.json",
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env_for(s.url, tmp_path),
            timeout=60,
        )
    assert proc.returncode == 0 and proc.stdout == "wrote out.txt\n"
    assert json.loads((tmp_path / "info.json").read_text())["termination_reason"] == "finished"


def test_sigterm_ends_the_run_kills_tools_and_writes_info(tmp_path):
    import signal
    import time

    cmd = "touch started; (sleep 4; touch survived) & sleep 60"
    with ScriptedServer([call("run_shell_command", command=cmd)]) as s:
        proc = subprocess.Popen(
            [sys.executable, "-m", "iflow_cli", "-p", "wait", "--yolo", "-o", "info.json"],
            cwd=tmp_path,
            env=env_for(s.url, tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "started").exists(), "the command never started"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 1
    assert json.loads((tmp_path / "info.json").read_text())["termination_reason"] == "interrupted"
    time.sleep(4)
    assert not (tmp_path / "survived").exists()


def test_core_imports_only_the_standard_library():
    # -S drops site-packages: any third-party import (or rock/roll/rome) in the core would fail here.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import iflow_cli.cli, iflow_cli.repl, iflow_cli.executors.local, iflow_cli.executors.rock, iflow_cli.testing.scripted_server;"
        "bad = {m.split('.')[0] for m in sys.modules} & {'rock', 'roll', 'rome', 'rich', 'prompt_toolkit', 'httpx', 'pydantic'};"
        "sys.exit(f'non-stdlib imports: {bad}' if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-S", "-c", code, str(ROOT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
