"""Disk bounded per sandbox: disk bombs stopped at the sandbox's limit, forks keep their files, bad input 422.

    .venv/bin/pytest tests/rock/test_disk_quota.py -q

The bombs need the quota-capable data root that `make docker` sets up (dockerd on btrfs with simple quotas,
scripts/ensure-docker.sh); without it they skip, saying so. The 422 cases and `disk_problem` run anywhere.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import docker
import pytest

from rock import errors
from rock.backend import btrfsquota
from rock.backend.docker import disk_problem, exec_stall_problem
from rock.config import Limits
from rock.launch import RockProcess
from rock.models import CreateSandbox
from rock.service import SandboxService

MiB = 1 << 20
DISK_MAX = 1 << 30
EDQUOT = "Disk quota exceeded"


def _quota_problem() -> str | None:
    try:
        info = docker.from_env().info()
    except docker.errors.DockerException as e:
        return f"no Docker engine: {e}"
    return disk_problem(info.get("Driver"), info.get("DockerRootDir"))


@pytest.fixture(scope="module")
def quota_server(docker_client):
    problem = _quota_problem()
    if problem:
        pytest.skip(f"no quota-capable data root: {problem}")
    # --disk-default: a sandbox that does not ask is bounded too; the warm pool must carry the bound.
    args = ["--disk-default", "64m", "--disk-max", str(DISK_MAX), "--warm-pool", "1"]
    with RockProcess(extra_args=args) as rock:
        yield rock


@pytest.fixture(scope="module")
def qc(quota_server):
    with quota_server.client() as c:
        yield c


def _used(sb, path: str) -> int:
    """Bytes a file really holds (allocated blocks), not its apparent size."""
    r = sb.exec(f"stat -c '%b %B' {path}")
    blocks, size = map(int, r.stdout.split())
    return blocks * size


@pytest.mark.docker
def test_4gib_dd_stops_at_the_limit_and_the_sandbox_recovers(qc):
    with qc.create_sandbox(disk="128m", memory="256m") as sb:
        assert sb.info.disk == 128 * MiB
        r = sb.exec("dd if=/dev/zero of=/bomb bs=1M count=4096", timeout=120)
        assert r.exit_code != 0 and EDQUOT in r.stderr, r.stderr
        assert 64 * MiB < _used(sb, "/bomb") <= 128 * MiB
        # At the limit the sandbox still runs commands, frees space, and may write again.
        assert sb.exec("rm /bomb && dd if=/dev/zero of=/again bs=1M count=32 && echo ok").stdout.strip() == "ok"


# One python3 process writes files until the first error: forking a shell command per file is far slower.
FILES_BOMB = """
import os, sys
size, d = int(sys.argv[1]), sys.argv[2]
os.makedirs(d)
n = 0
try:
    while n < 1_000_000:
        with open(f"{d}/f{n}", "wb") as f:
            f.write(b"x" * size)
        n += 1
except OSError as e:
    print("stopped", n, os.strerror(e.errno))
"""


@pytest.mark.docker
@pytest.mark.slow  # near the limit each file's reservation makes btrfs flush and commit: 0.5 to 5 minutes here
def test_many_small_files_stop_at_the_limit(qc):
    with qc.create_sandbox(disk="16m", memory="256m") as sb:
        sb.write_file("/tmp/bomb.py", FILES_BOMB.encode())
        # 4 KiB files (a data extent each), then empty files (metadata only): both are charged.
        out = sb.exec("python3 /tmp/bomb.py 4096 /small", timeout=300).stdout
        assert out.startswith("stopped") and EDQUOT in out, out
        assert int(out.split()[1]) < 4096, out  # 16 MiB / 4 KiB, less what their metadata took
        sb.exec("rm -rf /small", timeout=120)
        out = sb.exec("python3 /tmp/bomb.py 0 /empty", timeout=300).stdout
        assert out.startswith("stopped") and EDQUOT in out, out
        assert int(out.split()[1]) < 1_000_000, out


@pytest.mark.docker
def test_sparse_file_is_free_until_written_then_stops_at_the_limit(qc):
    with qc.create_sandbox(disk="64m", memory="256m") as sb:
        assert sb.exec("truncate -s 100G /sparse && stat -c %s /sparse").stdout.strip() == str(100 << 30)
        r = sb.exec("dd if=/dev/zero of=/sparse bs=1M count=1024 conv=notrunc", timeout=120)
        assert r.exit_code != 0 and EDQUOT in r.stderr, r.stderr
        assert _used(sb, "/sparse") <= 64 * MiB
        r = sb.exec("command -v fallocate >/dev/null || exit 77; fallocate -l 1G /prealloc")
        if r.exit_code != 77:
            assert r.exit_code != 0 and EDQUOT in r.stderr, r.stderr


@pytest.mark.docker
def test_default_bound_and_warm_pool_carry_the_limit(qc):
    warm = False
    for _ in range(4):  # a cold create makes the pool keep this spec; a later one is served from it
        with qc.create_sandbox(memory="256m") as sb:
            assert sb.info.disk == 64 * MiB
            r = sb.exec("dd if=/dev/zero of=/bomb bs=1M count=1024", timeout=120)
            assert r.exit_code != 0 and EDQUOT in r.stderr, r.stderr
            warm = sb.info.warm
        if warm:
            break
        time.sleep(2)
    assert warm, "no create was served by the warm pool"


@pytest.mark.docker
def test_a_bomb_at_its_quota_cannot_stall_other_execs(quota_server):
    # At its quota a sandbox makes btrfs commit (and flush) on every refused write; the loop device turns each
    # flush into an fsync of its image on the host's disk. runc writes every exec's pid file with O_SYNC under
    # dockerd's exec root: on that disk each exec waited ~1 s (bench/bench_rock_disk.py). make docker's fix:
    exec_root = btrfsquota.dockerd_exec_root()
    if exec_root is None:
        pytest.skip("the Docker daemon does not run on this host")
    assert btrfsquota.fs_type(exec_root) == "tmpfs", f"dockerd's exec root {exec_root} is on disk: run make docker"
    data_root = docker.from_env().info()["DockerRootDir"]
    assert btrfsquota.loop_direct_io(f"{data_root}/btrfs") in (True, None), "the loop does buffered I/O"
    assert exec_stall_problem(data_root) is None


def test_mount_lookup_finds_the_longest_mount_point():
    assert btrfsquota.fs_type("/proc/self") == "proc"
    assert btrfsquota.fs_type("/") is not None
    assert btrfsquota.loop_direct_io("/proc") is None  # not on a loop device


@pytest.mark.docker
def test_another_sandbox_keeps_working_during_a_bomb(qc):
    with qc.create_sandbox(disk="512m", memory="256m") as bomb, qc.create_sandbox(memory="256m") as other:
        done, said = threading.Event(), []

        def attack():
            cmd = "for i in 1 2 3; do dd if=/dev/zero of=/b bs=1M count=4096; rm -f /b; done"
            said.append(bomb.exec(cmd, timeout=300).stderr)
            done.set()

        t = threading.Thread(target=attack)
        t.start()
        oks, slowest = 0, 0.0
        while not done.is_set():
            t0 = time.perf_counter()
            r = other.exec("echo x > /tmp/ok && cat /tmp/ok")
            slowest = max(slowest, time.perf_counter() - t0)
            oks += r.exit_code == 0 and r.stdout == "x\n"
        t.join()
        assert EDQUOT in said[0], said  # the execs below ran while the bomb kept hitting its limit
        assert oks >= 3 and slowest < 10.0, (oks, slowest)
        assert other.exec("dd if=/dev/zero of=/after bs=1M count=32 && echo ok").stdout.strip() == "ok"


@pytest.mark.docker
def test_fork_keeps_its_files_and_gets_its_own_budget(qc):
    with qc.create_sandbox(disk="64m", memory="256m") as sb:
        sb.exec("mkdir -p /work && head -c 40000000 /dev/urandom > /work/data && sha256sum /work/data > /work/sum")
        snap = sb.snapshot()
    with qc.create_sandbox(snapshot=snap.snapshot_id, disk="64m", memory="256m") as fork:
        assert fork.info.disk == 64 * MiB
        assert fork.exec("sha256sum -c /work/sum").exit_code == 0
        # The 40 MB inherited are the image's bytes: the fork may write its full 64 MiB, and no more.
        assert fork.exec("dd if=/dev/zero of=/new bs=1M count=48 && echo ok").stdout.strip() == "ok"
        r = fork.exec("dd if=/dev/zero of=/more bs=1M count=1024")
        assert EDQUOT in r.stderr, r.stderr
    qc.delete_snapshot(snap.snapshot_id)


@pytest.mark.docker
def test_disk_over_the_maximum_is_422_naming_it(qc):
    with pytest.raises(errors.ValidationFailed, match=r"disk .* is over the maximum 1073741824 \(1\.00 GiB\)"):
        qc.create_sandbox(disk="2g")


@pytest.mark.parametrize("bad", ["abc", {}, [], -1, 0, "0", True, 1.5, "512"])
def test_malformed_or_tiny_disk_is_rejected(bad):
    with pytest.raises(ValueError, match="disk"):
        CreateSandbox(disk=bad)


def test_sizes_parse_like_memory():
    assert CreateSandbox(disk="2g").disk == 2 << 30
    assert CreateSandbox(disk="1.5GiB").disk == 3 << 29
    assert CreateSandbox(disk=64 << 20).disk == 64 << 20
    assert CreateSandbox().disk is None


def test_a_root_without_quotas_says_how(tmp_path):
    assert "make docker" in disk_problem("overlay2", "/var/lib/docker")
    assert "storage driver overlay2" in disk_problem("overlay2", "/var/lib/docker")
    # btrfs named but the root is not a btrfs filesystem this process can open
    assert "make docker" in disk_problem("btrfs", str(tmp_path))
    assert btrfsquota.mode(tmp_path) == "none"


def _validate(problem: str | None, **body):
    fake = SimpleNamespace(limits=Limits(max_disk=DISK_MAX), disk_problem=problem, config=SimpleNamespace())
    SandboxService._validate(fake, CreateSandbox(**body))


def test_disk_is_refused_where_it_cannot_be_enforced():
    problem = disk_problem("overlay2", "/var/lib/docker")
    with pytest.raises(errors.ValidationFailed, match="disk cannot be enforced here: .*make docker"):
        _validate(problem, disk="1g")
    _validate(problem)  # not asking for disk is fine: the sandbox is unbounded (the startup log said so)
    _validate(None, disk="1g")
    with pytest.raises(errors.ValidationFailed, match="over the maximum"):
        _validate(None, disk="2g")
