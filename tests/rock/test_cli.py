"""`rock sandbox ...` against a real server, as a user types it.

.venv/bin/pytest tests/rock/test_cli.py -q
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def rock(rock_server, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    env = {**os.environ, "ROCK_URL": rock_server.url, "ROCK_API_TOKEN": rock_server.token, "HOME": str(home)}

    def run(*args, check=True):
        p = subprocess.run([sys.executable, "-m", "rock", *args], env=env, capture_output=True, text=True, timeout=120)
        if check:
            assert p.returncode == 0, p.stderr
        return p

    return run


def test_help_explains_the_subcommands(rock):
    out = rock("--help").stdout
    assert all(word in out for word in ("serve", "sandbox", "image"))
    out = rock("sandbox", "--help").stdout
    assert all(w in out for w in ("create", "ls", "exec", "cp", "rm", "snapshot", "trajectory"))
    assert "--on-exit" in rock("serve", "--help").stdout


def test_create_exec_cp_snapshot_ls_rm(rock, tmp_path, client):
    sid = rock("sandbox", "create", "--memory", "256m", "--env", "GREETING=hi").stdout.strip()
    assert sid.startswith("sb-")
    try:
        p = rock("sandbox", "exec", sid, "--", "echo $GREETING; echo oops >&2; exit 5", check=False)
        assert (p.returncode, p.stdout, p.stderr) == (5, "hi\n", "oops\n")
        assert rock("sandbox", "exec", sid, "--", "ls", "/").stdout.split().count("tmp") == 1
        (tmp_path / "in.bin").write_bytes(b"\x00\x01binary")
        rock("sandbox", "cp", str(tmp_path / "in.bin"), f"{sid}:/work/in.bin")
        rock("sandbox", "cp", f"{sid}:/work/in.bin", str(tmp_path / "out.bin"))
        assert (tmp_path / "out.bin").read_bytes() == b"\x00\x01binary"
        rock("sandbox", "cp", f"{sid}:/work", str(tmp_path / "dir"))
        assert (tmp_path / "dir" / "work" / "in.bin").exists()
        snap = rock("sandbox", "snapshot", sid).stdout.strip()
        assert snap.startswith("snap-")
        client.delete_snapshot(snap)
        assert sid in rock("sandbox", "ls").stdout
        assert rock("sandbox", "trajectory", sid).stdout == ""
    finally:
        rock("sandbox", "rm", sid)
    assert sid not in rock("sandbox", "ls").stdout


def test_bad_input_is_one_line(rock):
    for args in (
        ("sandbox", "exec", "sb-nope", "--", "true"),
        ("sandbox", "create", "--memory", "lots"),
        ("sandbox", "create", "--image", "nosuch:1"),
        ("sandbox", "cp", "a", "b"),
    ):
        p = rock(*args, check=False)
        assert p.returncode != 0 and p.stderr.startswith("error:") and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_serve_without_a_token_generates_one_for_local_clients(tmp_path, docker_client):
    from rock.launch import free_port

    port, state = free_port(), tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k not in ("ROCK_API_TOKEN", "ROCK_URL")}
    env["ROCK_STATE_DIR"] = str(state)
    server = subprocess.Popen([sys.executable, "-m", "rock", "serve", "--port", str(port)], env=env,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert "generated API token" in server.stderr.readline()
        token = (state / "token").read_text().strip()
        assert len(token) > 20 and oct((state / "token").stat().st_mode)[-3:] == "600"
        for _ in range(100):
            p = subprocess.run([sys.executable, "-m", "rock", "sandbox", "ls"], env=env, capture_output=True, text=True)
            if p.returncode == 0 or "cannot reach" not in p.stderr:
                break
        assert p.returncode == 0 and p.stdout.startswith("ID"), p.stderr
    finally:
        server.terminate()
        server.wait(30)


def test_rock_process_quotes_the_server_error_when_it_cannot_start():
    from rock.launch import RockProcess

    with pytest.raises(RuntimeError, match="--max-memory: memory 'lots' is not a size"):
        RockProcess(extra_args=["--max-memory", "lots"]).start()
