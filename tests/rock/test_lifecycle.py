"""Life cycle of the manager: SIGKILL and restart, orphans, --on-exit keep, ttl reaper, warm pool.

.venv/bin/pytest tests/rock/test_lifecycle.py -q
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from rock import errors
from rock.launch import RockProcess

pytestmark = pytest.mark.docker


def ours(docker_client, state_dir) -> list:
    manager = (state_dir / "manager_id").read_text().strip()
    return docker_client.containers.list(all=True, filters={"label": f"ale.rock.manager={manager}"})


@pytest.mark.slow
def test_sigkill_and_restart_keeps_sandboxes_usable_and_removes_orphans(tmp_path, docker_client, base_image):
    state = tmp_path / "state"
    first = RockProcess(state_dir=state).start()
    with first.client() as c:
        a, b = c.create_sandbox(), c.create_sandbox()
        a.exec("echo kept > /root/mark")
    first.kill()
    manager = (state / "manager_id").read_text().strip()
    orphan = docker_client.containers.run(
        base_image,
        ["sleep", "infinity"],
        detach=True,
        network_mode="none",
        labels={"ale.rock": "1", "ale.rock.sandbox": "sb-orphan", "ale.rock.manager": manager},
    )
    with RockProcess(state_dir=state, token=first.token) as second, second.client() as c:
        assert {s.id for s in c.list_sandboxes()} == {a.id, b.id}
        assert c.sandbox(a.id).exec("cat /root/mark").stdout == "kept\n"
        assert c.sandbox(b.id).exec("echo ok").exit_code == 0
        assert orphan.id not in {x.id for x in ours(docker_client, state)}
    assert ours(docker_client, state) == []  # --on-exit remove (the default)


@pytest.mark.slow
def test_on_exit_keep_leaves_sandboxes_for_the_next_start(tmp_path, docker_client):
    state = tmp_path / "state"
    with RockProcess(state_dir=state, on_exit="keep") as first, first.client() as c:
        sid = c.create_sandbox().id
        token = first.token
    assert len(ours(docker_client, state)) == 1
    with RockProcess(state_dir=state, token=token) as second, second.client() as c:
        assert c.sandbox(sid).exec("true").exit_code == 0
    assert ours(docker_client, state) == []


@pytest.mark.slow
def test_ttl_expiry_removes_the_sandbox(tmp_path, docker_client):
    with RockProcess(state_dir=tmp_path / "s", extra_args=["--reap-interval", "0.5"]) as rock, rock.client() as c:
        sb = c.create_sandbox(ttl_seconds=1)
        assert sb.info.expires_at is not None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                c.sandbox(sb.id)
            except errors.SandboxNotFound:
                break
            time.sleep(0.25)
        else:
            pytest.fail("sandbox outlived its ttl")
        assert ours(docker_client, tmp_path / "s") == []


@pytest.mark.slow
def test_warm_pool_serves_matching_creates(tmp_path, docker_client):
    with RockProcess(state_dir=tmp_path / "s", warm_pool=2) as rock, rock.client() as c:
        cold = c.create_sandbox(memory="256m")
        assert not cold.info.warm
        deadline = time.monotonic() + 20
        while len(ours(docker_client, tmp_path / "s")) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        t = time.monotonic()
        warm = c.create_sandbox(memory="256m", env={"WHO": "warm"})
        took = time.monotonic() - t
        assert warm.info.warm and took < 0.2
        assert warm.exec("echo $WHO").stdout == "warm\n"
        other = c.create_sandbox(memory="300m")
        assert not other.info.warm
        hc = docker_client.containers.get(warm.info.container_id).attrs["HostConfig"]
        assert hc["Memory"] == 256 << 20 and hc["NetworkMode"] == "none"
    assert ours(docker_client, tmp_path / "s") == []  # the pool is drained on exit


@pytest.mark.slow
def test_server_of_a_dead_driver_removes_its_sandboxes(tmp_path, docker_client):
    state = tmp_path / "state"
    driver = (
        "import sys, time\n"
        "from rock.launch import RockProcess\n"
        f"rock = RockProcess(state_dir={str(state)!r}).start()\n"
        "rock.client().create_sandbox()\n"
        "print(rock.proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, text=True)
    server_pid = int(proc.stdout.readline())
    assert len(ours(docker_client, state)) == 1
    proc.kill()  # the driver dies without any cleanup
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (ours(docker_client, state) or running(server_pid)):
        time.sleep(0.2)
    assert ours(docker_client, state) == []
    assert not running(server_pid)


def running(pid: int) -> bool:
    """Alive and not a zombie (the orphaned server is reaped by whoever adopted it, maybe late)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
