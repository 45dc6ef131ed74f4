"""pytest tests/iflow/test_iflow_docker.py -m docker — iflow on the bare python3 of rock/base:bookworm, and through ROCK.

1. `python3 -m iflow_cli -p ...` inside a `rock/base:bookworm` container with no network and only
   the iflow_cli source mounted read-only; the scripted model server runs in the same container
   (it is standard library too), reached over the container's loopback.
2. The ROCK executor (`--sandbox URL#ID`) against a real `rock serve`: the same tools give the
   same results as on the local executor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from iflow_helpers import call

from iflow_cli.executors.local import LocalExecutor
from iflow_cli.executors.rock import RockExecutor
from iflow_cli.tools import Toolbox

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = [
    call("write_file", path="hello.py", content="print('hello from the sandbox')\n"),
    call("run_shell_command", command="python3 hello.py > out.txt && cat out.txt"),
    call("search_file_content", pattern="hello", include="*.txt"),
    "out.txt says hello from the sandbox",
]

IN_CONTAINER = r"""
set -e
mkdir -p /tmp/work && cd /tmp/work
printf '%s' "$SCRIPT" > /tmp/script.json
python3 -m iflow_cli.testing.scripted_server --script /tmp/script.json --port 8765 > /tmp/server.log 2>&1 &
for i in $(seq 100); do grep -q listening /tmp/server.log && break; sleep 0.1; done
set +e
python3 -m iflow_cli -p "write and run hello.py" --yolo --max-turns 8 -o /tmp/info.json --trajectory /tmp/t.jsonl
echo "EXIT=$?"
echo "INFO=$(tr -d '\n' < /tmp/info.json)"
echo "OUT=$(cat /tmp/work/out.txt)"
echo "PY=$(python3 -c 'import sys; print(sys.version.split()[0])')"
"""


@pytest.mark.docker
def test_batch_run_inside_bare_base_image(docker_client, base_image):
    container = docker_client.containers.run(
        base_image,
        ["bash", "-c", IN_CONTAINER],
        detach=True,
        network_mode="none",
        volumes={str(ROOT / "iflow_cli"): {"bind": "/opt/ale/iflow_cli", "mode": "ro"}},
        environment={
            "PYTHONPATH": "/opt/ale",
            "PYTHONDONTWRITEBYTECODE": "1",
            "SCRIPT": json.dumps(SCRIPT),
            "OPENAI_BASE_URL": "http://127.0.0.1:8765/v1",
            "OPENAI_API_KEY": "none",
        },
        labels={"ale.rock": "1", "ale.test": "iflow"},
    )
    try:
        status = container.wait(timeout=120)
        logs = container.logs().decode()
    finally:
        container.remove(force=True)
    lines = dict(line.split("=", 1) for line in logs.splitlines() if line[:3] in ("EXI", "INF", "OUT", "PY="))
    assert status["StatusCode"] == 0 and lines.get("EXIT") == "0", logs
    info = json.loads(lines["INFO"])
    assert info["termination_reason"] == "finished" and info["rounds"] == 4 and info["answer"] == SCRIPT[-1]
    assert lines["OUT"] == "hello from the sandbox" and lines["PY"].startswith("3.")


@pytest.fixture(scope="module")
def rock():
    from rock.launch import RockProcess

    with RockProcess() as proc:
        yield proc


@pytest.fixture
def sandbox(rock, docker_client):
    with rock.client() as c:
        sb = c.create_sandbox(memory="256m", pids_limit=128, labels={"ale.test": "iflow"})
        try:
            yield sb
        finally:
            sb.delete()


TREE = {"src/a.py": "x = 1\nprint('hi')\n", "src/b.txt": "hi there\n", "notes.md": "# notes\nhi\n"}
CALLS = [
    ("list_directory", {"path": "."}),
    ("glob", {"pattern": "**/*.py"}),
    ("search_file_content", {"pattern": "hi", "include": "*.py"}),
    ("read_file", {"path": "src/a.py", "offset": 1}),
    ("replace", {"path": "notes.md", "old_string": "hi", "new_string": "bye"}),
    ("replace", {"path": "notes.md", "old_string": "absent", "new_string": "x"}),
    ("write_file", {"path": "new/dir/c.txt", "content": "made"}),
    ("run_shell_command", {"command": "cat new/dir/c.txt; ls src; exit 4"}),
    ("run_shell_command", {"command": "sleep 10", "timeout": 1}),
]


@pytest.mark.docker
def test_rock_executor_gives_the_same_results(rock, sandbox, tmp_path, monkeypatch):
    work = tmp_path / "w"
    for rel, text in TREE.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    remote = RockExecutor(rock.url, sandbox.id, rock.token, cwd=str(work))
    remote.run(f"mkdir -p {work}/src", 30)
    for rel, text in TREE.items():
        remote.write_bytes(rel, text.encode())
    local_box, remote_box = Toolbox(LocalExecutor(str(work)), "yolo"), Toolbox(remote, "yolo")
    for name, args in CALLS:
        here, there = local_box.call(name, args), remote_box.call(name, args)
        assert (here.output, here.ok, here.exit_code) == (there.output, there.ok, there.exit_code), (name, here, there)


@pytest.mark.docker
def test_iflow_with_sandbox_flag(rock, sandbox, iflow, monkeypatch):
    monkeypatch.setenv("ROCK_API_TOKEN", rock.token)
    script = [
        call("write_file", path="/tmp/made.txt", content="in the sandbox"),
        call("run_shell_command", command="cat /tmp/made.txt"),
        "done",
    ]
    run = iflow(script, "--yolo", "--sandbox", f"{rock.url}#{sandbox.id}")
    assert run.code == 0, run.err
    assert sandbox.exec("cat /tmp/made.txt").stdout == "in the sandbox"
    assert not Path("/tmp/made.txt").exists() or Path("/tmp/made.txt").read_text() != "in the sandbox"
    assert "Stdout:\nin the sandbox" in run.server.requests[2]["messages"][-1]["content"]


TRAINING_SCRIPT = [
    call("write_file", path="answer.txt", content="42\n"),
    call("run_shell_command", command="cat answer.txt"),
    "answer.txt holds 42",
]


@pytest.mark.docker
def test_training_path_agent_in_model_sandbox_records_one_chunk_per_call(tmp_path_factory, base_image):
    """As roll runs it: iflow mounted read-only in a network=model sandbox, its calls recorded as chunks."""
    from iflow_cli.testing.scripted_server import ScriptedServer, render_prompt
    from rock.launch import RockProcess

    with (
        ScriptedServer(TRAINING_SCRIPT) as upstream,
        RockProcess(
            model_upstream=upstream.url, allow_mounts=[ROOT], state_dir=tmp_path_factory.mktemp("rock")
        ) as rock,
        rock.client() as client,
    ):
        mount = {"source": str(ROOT / "iflow_cli"), "target": "/opt/ale/iflow_cli", "read_only": True}
        with client.create_sandbox(
            image=base_image, network="model", mounts=[mount], labels={"ale.test": "iflow"}
        ) as sb:
            argv = [
                "python3",
                "-m",
                "iflow_cli",
                "-p",
                "write 42 to answer.txt",
                "--yolo",
                "--max-turns",
                "5",
                "-o",
                "/tmp/i.json",
            ]
            run = sb.exec(argv, timeout=120, cwd="/root", env={"PYTHONPATH": "/opt/ale", "IFLOW_MAX_TOKENS": "64"})
            info = json.loads(sb.exec("cat /tmp/i.json").stdout)
            answer = sb.exec("cat /root/answer.txt").stdout
            chunks = sb.trajectory()
        requests = upstream.requests
    assert run.exit_code == 0 and run.stdout.strip() == "answer.txt holds 42", run.stderr
    assert info["rounds"] == 3 and answer == "42\n" and all(r["max_tokens"] == 64 for r in requests)
    assert len(chunks) == 3 and [c.index for c in chunks] == [0, 1, 2]
    for chunk, request in zip(chunks, requests, strict=True):
        assert bytes(chunk.prompt_token_ids).decode() == render_prompt(request["messages"], request.get("tools"))


@pytest.mark.docker
def test_sandbox_errors_become_observations(rock, sandbox):
    box = Toolbox(RockExecutor(rock.url, sandbox.id, rock.token, cwd="/tmp"), "yolo")
    missing = box.call("read_file", {"path": "/nonexistent/file.txt"})
    directory = box.call("read_file", {"path": "/tmp"})
    assert not missing.ok and "no such file" in missing.output.lower()
    assert not directory.ok and directory.output.startswith("read_file failed")
