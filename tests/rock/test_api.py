"""REST v1 behaviour of a real `rock serve`: create/list/get/delete, exec, streaming, sessions, files.

.venv/bin/pytest tests/rock/test_api.py -q
"""

from __future__ import annotations

import io
import tarfile
import time

import httpx
import pytest

from rock import errors

pytestmark = pytest.mark.docker


def test_healthz_is_open_and_openapi_lists_routes(rock_server):
    assert httpx.get(f"{rock_server.url}/healthz").json() == {"ok": True}
    spec = httpx.get(f"{rock_server.url}/openapi.json", headers={"Authorization": f"Bearer {rock_server.token}"})
    assert "/v1/sandboxes/{sandbox_id}/exec" in spec.json()["paths"]


def test_create_carries_labels_and_isolation(client, sandbox, docker_client):
    c = docker_client.containers.get(sandbox.info.container_id)
    assert c.labels["ale.rock"] == "1" and c.labels["ale.rock.sandbox"] == sandbox.id
    hc = c.attrs["HostConfig"]
    assert hc["NetworkMode"] == "none" and hc["Privileged"] is False
    assert hc["CapDrop"] == ["ALL"] and "SYS_ADMIN" not in hc["CapAdd"]
    assert "no-new-privileges" in hc["SecurityOpt"]
    assert hc["PidsLimit"] == 128 and hc["Memory"] == 256 << 20 and hc["MemorySwap"] == 256 << 20
    assert hc["NanoCpus"] == 10**9 and hc["Ulimits"][0]["Name"] == "nofile"
    assert sandbox.id in [s.id for s in client.list_sandboxes()]
    assert client.sandbox(sandbox.id).info.status == "running"


def test_delete_removes_the_container(client, docker_client):
    sb = client.create_sandbox()
    sb.delete()
    assert not docker_client.containers.list(all=True, filters={"label": f"ale.rock.sandbox={sb.id}"})
    with pytest.raises(errors.SandboxNotFound):
        client.sandbox(sb.id)


def test_exec_string_argv_stdin_env_cwd(sandbox):
    r = sandbox.exec("echo out; echo err >&2; exit 3")
    assert (r.exit_code, r.stdout, r.stderr, r.timed_out, r.truncated) == (3, "out\n", "err\n", False, False)
    assert sandbox.exec(["printf", "%s|", "a b", "c"]).stdout == "a b|c|"
    assert sandbox.exec(["cat"], stdin="piped\x00in").stdout == "piped\x00in"
    assert sandbox.exec("echo $FOO; pwd", env={"FOO": "bar"}, cwd="/tmp").stdout == "bar\n/tmp\n"


def test_exec_timeout_kills_the_process_tree(sandbox):
    r = sandbox.exec("sleep 60 & sleep 61; echo never", timeout=1)
    assert r.timed_out and r.stdout == "" and r.duration_s < 10
    assert "sleep 6" not in sandbox.exec("ps -eo args").stdout


def test_exec_output_is_capped_and_flagged(sandbox):
    r = sandbox.exec("head -c 3000000 /dev/zero | tr '\\0' x")
    assert r.truncated and len(r.stdout) == 1 << 20 and r.exit_code == 0


def test_background_process_survives_between_execs(sandbox):
    assert sandbox.exec("nohup sleep 300 >/dev/null 2>&1 &").exit_code == 0
    assert "sleep 300" in sandbox.exec("ps -eo args").stdout


def test_stream_yields_chunks_then_exit(sandbox):
    chunks = list(sandbox.exec_stream("for i in 1 2 3; do echo $i; sleep 0.3; done; echo e >&2; exit 7"))
    out = [c for c in chunks if c.type == "stdout"]
    assert len(out) >= 2, "output should arrive in pieces, not at the end"
    assert "".join(c.data for c in out) == "1\n2\n3\n"
    assert chunks[-1].type == "exit" and chunks[-1].exit_code == 7
    assert any(c.type == "stderr" and c.data == "e\n" for c in chunks)


def test_session_keeps_cwd_env_and_vars_and_survives_timeout(sandbox):
    s = sandbox.session(env={"START": "1"})
    assert s.run("cd /tmp && export A=1 && B=2").exit_code == 0
    r = s.run("pwd; echo $A $B $START; false")
    assert (r.stdout, r.exit_code) == ("/tmp\n1 2 1\n", 1)
    slow = s.run("sleep 30; echo nope", timeout=1)
    assert slow.timed_out and "nope" not in slow.stdout
    assert s.run("echo $B; pwd").stdout == "2\n/tmp\n"
    other = sandbox.session()
    assert other.run("pwd").stdout == "/root\n"
    s.close()
    with pytest.raises(errors.SessionNotFound):
        s.run("true")


def test_files_binary_roundtrip_and_dirs(sandbox, tmp_path):
    blob = bytes(range(256)) * 1000
    sandbox.write_file("/work/deep/blob.bin", blob)
    assert sandbox.read_file("/work/deep/blob.bin") == blob
    sandbox.write_file("/work/run.sh", "#!/bin/sh\necho ran\n", mode=0o755)
    assert sandbox.exec("/work/run.sh").stdout == "ran\n"
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.txt").write_text("tree")
    sandbox.upload_dir(src, "/data/in")
    assert sandbox.exec("cat /data/in/sub/f.txt").stdout == "tree"
    sandbox.download_dir("/data/in", tmp_path / "out")
    assert (tmp_path / "out" / "in" / "sub" / "f.txt").read_text() == "tree"


def test_snapshot_and_fork(client, sandbox):
    sandbox.exec("echo state > /root/progress")
    snap = sandbox.snapshot()
    assert snap.snapshot_id in [s.snapshot_id for s in client.list_snapshots()]
    try:
        with client.create_sandbox(snapshot=snap.snapshot_id) as fork:
            assert fork.exec("cat /root/progress").stdout == "state\n"
            fork.exec("echo changed > /root/progress")
            assert sandbox.exec("cat /root/progress").stdout == "state\n"
    finally:
        client.delete_snapshot(snap.snapshot_id)


def test_mount_under_allowed_root_is_read_only(client, rock_server):
    with client.create_sandbox(mounts=[{"source": str(rock_server.allowed_dir), "target": "/host"}]) as sb:
        assert sb.exec("cat /host/hello.txt").stdout == "from the host\n"
        assert sb.exec("touch /host/x").exit_code != 0


def test_metrics_count_creates_execs_and_errors(rock_server, client, sandbox):
    sandbox.exec("true")
    with pytest.raises(errors.ImageNotFound):
        client.create_sandbox(image="nosuch/image:2")
    text = httpx.get(f"{rock_server.url}/metrics", headers={"Authorization": f"Bearer {rock_server.token}"}).text
    assert 'rock_create_seconds_count{kind="cold"}' in text
    assert 'rock_exec_total{mode="oneshot"}' in text and "rock_active_sandboxes" in text
    assert 'rock_errors_total{code="image_not_found"}' in text


def test_trajectory_of_a_plain_sandbox_is_empty(sandbox):
    assert sandbox.trajectory() == []


def tar_with(name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()


def test_archive_with_escaping_member_is_refused(rock_server, sandbox):
    r = httpx.put(
        f"{rock_server.url}/v1/sandboxes/{sandbox.id}/archive",
        params={"path": "/tmp"},
        content=tar_with("../escape"),
        headers={"Authorization": f"Bearer {rock_server.token}"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_path"


def test_stream_client_disconnect_stops_the_command(sandbox):
    stream = sandbox.exec_stream("echo started; sleep 120")
    assert next(stream).data == "started\n"
    stream.close()  # leaves the `with` block of the HTTP stream: the connection is closed
    for _ in range(50):
        if "sleep 120" not in sandbox.exec("ps -eo args").stdout:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the command outlived its streaming client")


def test_command_that_cannot_start_reports_on_stderr(sandbox):
    for r in (sandbox.exec(["no-such-binary"]), sandbox.exec("true", cwd="/no/such/dir")):
        assert r.exit_code in (126, 127) and r.stdout == "" and "OCI runtime exec failed" in r.stderr
