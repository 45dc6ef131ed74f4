"""Per-sandbox disk limits with btrfs simple quotas (squotas), by ioctl; standard library only.

    python3 rock/backend/btrfsquota.py mode /var/lib/rock-docker          # squota | qgroup | disabled | none
    python3 rock/backend/btrfsquota.py enable-simple /var/lib/rock-docker  # (scripts/ensure-docker.sh runs these)
    .venv/bin/pytest tests/rock/test_disk_quota.py -q

Why simple quotas, set by rock and not by `docker --storage-opt size=`: with full qgroups Docker's btrfs driver
runs a whole-filesystem quota rescan on every layer removal (measured here: ~60 s per `docker rm` with a few
sandboxes alive) and a sandbox at its limit stalls the filesystem's transactions. A squota charges each extent
(data and metadata) to the subvolume that wrote it, so a container's subvolume is charged only what the sandbox
writes, not its image's bytes; deleting a subvolume is cheap. Docker's driver must not see quotas on (it would
rescan, which squotas refuse), so scripts/ensure-docker.sh lets the daemon settle its quota state with quotas off
and only then turns squotas on; rock sets each container's limit here, before the container starts.

`loop_direct_io`, `dockerd_exec_root` and `fs_type` check the two host settings that keep a bomb at its quota from stalling
other sandboxes' execs (scripts/ensure-docker.sh says why): the loop under the layers does direct I/O, and
dockerd's exec root (runc's O_SYNC pid files) is on a tmpfs.
"""

from __future__ import annotations

import fcntl
import os
import struct
import sys
import uuid
from pathlib import Path

_QUOTA_CTL = 0xC0109428  # _IOWR(0x94, 40, struct btrfs_ioctl_quota_ctl_args {u64 cmd, status})
_FS_INFO = 0x8400941F  # _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args), 1024 bytes, fsid at 16..32
_QGROUP_LIMIT = 0x8030942B  # _IOR(0x94, 43, {u64 qgroupid; {u64 flags, max_rfer, max_excl, rsv_rfer, rsv_excl}})
_CTL_DISABLE, _CTL_ENABLE_SIMPLE = 2, 4
_LIMIT_MAX_RFER, _LIMIT_MAX_EXCL = 1, 2


def _ioctl(path: str | Path, request: int, buf: bytearray) -> bytearray:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, request, buf)
    finally:
        os.close(fd)
    return buf


def fsid(path: str | Path) -> str:
    """The btrfs filesystem id of `path`; OSError (ENOTTY) when it is not on btrfs."""
    return str(uuid.UUID(bytes=bytes(_ioctl(path, _FS_INFO, bytearray(1024))[16:32])))


def mode(path: str | Path) -> str:
    """'squota', 'qgroup' (full accounting), 'disabled', or 'none' (not btrfs, or not readable here)."""
    try:
        sysfs = Path("/sys/fs/btrfs") / fsid(path) / "qgroups"
    except OSError:
        return "none"
    if not sysfs.is_dir():
        return "disabled"
    try:
        return (sysfs / "mode").read_text().strip()
    except OSError:  # kernels before 6.7 have no simple quotas and no `mode` file
        return "qgroup"


def enable_simple(path: str | Path) -> None:
    _ioctl(path, _QUOTA_CTL, bytearray(struct.pack("=QQ", _CTL_ENABLE_SIMPLE, 0)))


def disable(path: str | Path) -> None:
    _ioctl(path, _QUOTA_CTL, bytearray(struct.pack("=QQ", _CTL_DISABLE, 0)))


def limit(subvolume: str | Path, nbytes: int) -> None:
    """Bound what the subvolume's processes may write (data and metadata) to `nbytes`; past it they get EDQUOT."""
    flags = _LIMIT_MAX_RFER | _LIMIT_MAX_EXCL
    _ioctl(subvolume, _QGROUP_LIMIT, bytearray(struct.pack("=QQQQQQ", 0, flags, nbytes, nbytes, 0, 0)))


def container_subvolume(data_root: str | Path, container_id: str) -> Path:
    """The btrfs subvolume that is a container's writable layer under Docker's btrfs storage driver."""
    root = Path(data_root)
    mount_id = (root / "image/btrfs/layerdb/mounts" / container_id / "mount-id").read_text().strip()
    return root / "btrfs/subvolumes" / mount_id


def loop_direct_io(path: str | Path) -> bool | None:
    """Whether the loop device that `path`'s filesystem is mounted from does direct I/O; None when not a loop."""
    dev = _mount_source(path)
    if dev is None or not dev.startswith("/dev/loop"):
        return None
    try:
        return (Path("/sys/block") / dev.removeprefix("/dev/") / "loop/dio").read_text().strip() == "1"
    except OSError:
        return None


def dockerd_exec_root(default: str = "/var/run/docker") -> str | None:
    """The running dockerd's --exec-root (read from its command line); None when no dockerd runs here."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "comm").read_text().strip() != "dockerd":
                continue
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        for i, a in enumerate(argv):
            if a.startswith("--exec-root="):
                return a.split("=", 1)[1]
            if a == "--exec-root" and i + 1 < len(argv):
                return argv[i + 1]
        return default
    return None


def fs_type(path: str | Path) -> str | None:
    """The type of the filesystem that holds `path` (the longest mount point above it), from /proc/self/mounts."""
    m = _mount_of(path)
    return m[2] if m else None


def _mount_source(path: str | Path) -> str | None:
    m = _mount_of(path)
    return m[0] if m else None


def _mount_of(path: str | Path) -> tuple[str, str, str] | None:
    real, best = os.path.realpath(path), None
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        source, target, kind = line.split()[:3]
        target = target.replace("\\040", " ")
        if (real == target or real.startswith(target.rstrip("/") + "/")) and (
            best is None or len(target) >= len(best[1])
        ):
            best = (source, target, kind)
    return best


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("mode", "enable-simple", "disable"):
        print("usage: btrfsquota.py mode|enable-simple|disable PATH", file=sys.stderr)
        return 2
    cmd, path = argv
    if cmd == "mode":
        print(mode(path))
    elif cmd == "enable-simple":
        enable_simple(path)
    else:
        disable(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
