"""Docker backend: containers with isolation by default, archives, commits.

Container life-cycle calls go through the `docker` SDK on a dedicated thread pool (the SDK is
synchronous); the exec hot path uses `rock.backend.engine` directly on the event loop.

Isolation of every container:
- `network_mode=none` (only `lo`); the model gateway reaches the sandbox through a mounted unix socket.
- all capabilities dropped, then only these added back, each needed by ordinary shell work as root:
  CHOWN (chown, `tar -x`, pip/npm installs keep ownership), DAC_OVERRIDE (root writes files whose mode
  bits would deny it, e.g. 0444 files git creates), FOWNER (chmod/touch on files owned by other users),
  FSETID (keep setgid bits when editing group dirs), KILL (signal processes of other users, e.g. after
  `su`), SETUID/SETGID (`su`, `runuser`, apt dropping to `_apt`), NET_BIND_SERVICE (a task's server on
  port 80 of the sandbox's own loopback). Not added: SYS_ADMIN (mount), NET_RAW, MKNOD, SYS_CHROOT,
  AUDIT_WRITE, SETPCAP, SETFCAP, SYS_PTRACE and everything else.
- `no-new-privileges`, never privileged, a pids limit, memory with swap equal to memory (no swap),
  a CPU quota, a nofile ulimit, and docker's init as PID 1 so orphaned background jobs are reaped.
- Disk: on a btrfs data root with simple quotas (`make docker`) the container's writable layer, a btrfs
  subvolume, gets a quota limit (`ContainerSpec.disk`) before the container starts: past it every write inside,
  data or metadata, fails with EDQUOT. Elsewhere `disk_quota_problem` says why not, and rock refuses `disk`.
  A sandbox at its quota makes btrfs commit and flush on every refused write; `make docker` keeps that off other
  sandboxes' execs (dockerd's exec root on a tmpfs, the loop on direct I/O); `exec_stall_problem` warns where not.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import docker
from docker.errors import APIError, ImageNotFound, NotFound, NullResource
from docker.types import Mount, Ulimit

from rock import errors
from rock.backend import btrfsquota
from rock.backend.base import Backend, ContainerSpec, ExecSpec
from rock.backend.engine import Engine, EngineError
from rock.backend.execs import exec_collect, exec_events
from rock.backend.session import ShellSession

LABEL = "ale.rock"
LABEL_SANDBOX = "ale.rock.sandbox"
LABEL_MANAGER = "ale.rock.manager"
LABEL_SNAPSHOT = "ale.rock.snapshot"
SNAPSHOT_REPO = "rock-snapshot"
LABEL_TASK_IMAGE = "ale.task.image"
BUILD_LOG_TAIL = 25  # lines of the build log an ImageBuildFailed carries
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the daemon colours a RUN step's stderr
CAP_ADD = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETUID", "SETGID", "NET_BIND_SERVICE"]
log = logging.getLogger("rock.backend.docker")
QUOTA_HOW = (
    "run `make docker` as root with no container running (scripts/ensure-docker.sh puts dockerd on a btrfs data "
    "root with simple quotas)"
)


def disk_problem(driver: str | None, data_root: str | None) -> str | None:
    """None when a daemon with this storage driver and data root can bound each container's disk; else why not."""
    if driver != "btrfs" or not data_root:
        return f"the Docker daemon's storage driver {driver} cannot bound a sandbox's disk; {QUOTA_HOW}"
    layers = f"{data_root}/btrfs"
    mode = btrfsquota.mode(layers)
    if mode == "none":
        return f"cannot open the daemon's layers at {layers} (rock serve must run as root on its host); {QUOTA_HOW}"
    if mode != "squota":
        return f"the daemon's btrfs layers at {layers} have quotas {mode}, not simple quotas; {QUOTA_HOW}"
    return None


def exec_stall_problem(data_root: str | None) -> str | None:
    """None when a sandbox at its disk quota cannot stall other sandboxes' execs on this host; else why it can."""
    exec_root = btrfsquota.dockerd_exec_root()
    if exec_root is not None and btrfsquota.fs_type(exec_root) not in ("tmpfs", "ramfs"):
        return f"dockerd's exec root {exec_root} is on disk (runc writes each exec's pid file O_SYNC there)"
    if data_root and btrfsquota.loop_direct_io(f"{data_root}/btrfs") is False:
        return f"the loop device under {data_root}/btrfs does buffered I/O (each btrfs flush fsyncs its whole image)"
    return None


__all__ = ["ContainerSpec", "DockerBackend", "base_images", "file_from_tar", "single_file_tar"]


class DockerBackend(Backend):
    """The Docker daemon of this machine. `node` arguments exist for the Ray cluster backend
    (rock.cluster) that has the same methods; here there is one node, `None`."""

    def __init__(self, manager_id: str, threads: int = 32):
        self.manager_id = manager_id
        self.client = docker.from_env(timeout=300)
        self.engine = Engine()
        self.sessions: dict[str, ShellSession] = {}
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rock-docker")
        self.data_root: str | None = None  # the daemon's, once disk_quota_problem has asked

    def place(self, cpus: float, memory: int, local: bool = False, node: str | None = None) -> str | None:
        return None

    def node_of(self, container_id: str) -> str | None:
        return None

    async def exec(self, spec: ExecSpec, limit: int) -> dict:
        return await exec_collect(self.engine, spec, limit)

    def exec_events(self, spec: ExecSpec):
        return exec_events(self.engine, spec)

    async def open_session(self, container_id: str, session_id: str, env: dict[str, str], cwd: str | None) -> None:
        s = ShellSession(self.engine, container_id, session_id)
        await s.open(env, cwd)
        self.sessions[session_id] = s

    async def adopt_session(self, container_id: str, session_id: str) -> None:
        s = ShellSession(self.engine, container_id, session_id)
        await s.adopt()
        self.sessions[session_id] = s

    async def run_session(self, session_id: str, cmd: str, timeout: float | None, limit: int) -> dict:
        s = self.sessions.get(session_id)
        if s is None:
            raise errors.SessionNotFound(f"no session {session_id}")
        return await s.run(cmd, timeout, limit)

    async def close_session(self, session_id: str) -> None:
        s = self.sessions.pop(session_id, None)
        if s is not None:
            await s.close()

    async def _call(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    async def disk_quota_problem(self) -> str | None:
        info = await self._call(self.client.info)
        self.data_root = info.get("DockerRootDir")
        problem = await self._call(disk_problem, info.get("Driver"), self.data_root)
        stall = None if problem else await self._call(exec_stall_problem, self.data_root)
        if stall:
            log.warning(
                "a sandbox at its disk quota will slow every other sandbox's exec: %s; run `make docker`", stall
            )
        return problem

    async def image_exists(self, image: str, node: str | None = None) -> bool:
        try:
            await self._call(self.client.images.get, image)
            return True
        except (ImageNotFound, NullResource):  # NullResource: an empty reference
            return False
        except APIError as e:  # a malformed reference is also "no such image"
            if e.status_code in (400, 404):
                return False
            raise

    async def run(self, sandbox_id: str, spec: ContainerSpec, node: str | None = None) -> str:
        """Create and start the container; returns its id."""
        return await self._call(self._run_sync, sandbox_id, spec)

    def _run_sync(self, sandbox_id: str, spec: ContainerSpec) -> str:
        mounts = [Mount(target=t, source=s, type="bind", read_only=ro) for s, t, ro in spec.mounts]
        c = self.client.containers.create(
            spec.image,
            command=["sleep", "infinity"],
            name=f"rock-{sandbox_id}",
            hostname="sandbox",
            init=True,
            labels={LABEL: "1", LABEL_SANDBOX: sandbox_id, LABEL_MANAGER: self.manager_id},
            environment=spec.env,
            network_mode="none",
            cap_drop=["ALL"],
            cap_add=CAP_ADD,
            security_opt=["no-new-privileges"],
            privileged=False,
            pids_limit=spec.pids_limit,
            mem_limit=spec.memory,
            memswap_limit=spec.memory,
            nano_cpus=int(spec.cpus * 1e9),
            ulimits=[Ulimit(name="nofile", soft=spec.nofile, hard=spec.nofile)],
            mounts=mounts,
        )
        try:
            if spec.disk is not None:  # before start: no process of the sandbox ever runs unbounded
                self._limit_disk(c.id, spec.disk)
            c.start()
        except (APIError, errors.BackendError):
            c.remove(force=True)
            raise
        return c.id

    def _limit_disk(self, container_id: str, nbytes: int) -> None:
        try:
            btrfsquota.limit(btrfsquota.container_subvolume(self.data_root or "", container_id), nbytes)
        except OSError as e:
            raise errors.BackendError(f"cannot bound the disk of container {container_id[:12]}: {e}") from e

    async def remove(self, container_id: str) -> None:
        try:
            await self.engine.call("DELETE", f"/containers/{container_id}?force=1&v=1")
        except EngineError as e:  # already gone (or being removed) is fine: removal is idempotent
            if e.status not in (404, 409):
                raise

    async def state(self, container_id: str) -> str:
        """Docker's state ('running', 'exited', ...) or 'gone'."""
        try:
            info = await self.engine.call("GET", f"/containers/{container_id}/json")
        except EngineError as e:
            if e.status == 404:
                return "gone"
            raise
        return info["State"]["Status"]

    async def start(self, container_id: str) -> None:
        await self.engine.call("POST", f"/containers/{container_id}/start")

    async def list_ours(self) -> list[dict]:
        """Every container of this manager (running or not): {id, sandbox_id, state}."""
        flt = f'{{"label":["{LABEL_MANAGER}={self.manager_id}"]}}'
        rows = await self.engine.call("GET", f"/containers/json?all=1&filters={quote(flt)}")
        return [
            {"id": r["Id"], "sandbox_id": r["Labels"].get(LABEL_SANDBOX), "state": r["State"], "node": None}
            for r in rows
        ]

    async def commit(self, container_id: str, snapshot_id: str) -> str:
        def commit():
            c = self.client.containers.get(container_id)
            c.commit(repository=SNAPSHOT_REPO, tag=snapshot_id, conf={"Labels": {LABEL_SNAPSHOT: snapshot_id}})
            return f"{SNAPSHOT_REPO}:{snapshot_id}"

        return await self._call(commit)

    async def build_image(self, context: bytes, tag: str) -> None:
        """Build a tar context into `tag` with no network (RUN steps get none, nothing is pulled that is
        not already here); ImageBuildFailed with the log's tail when the Dockerfile fails."""
        params = {"t": tag, "networkmode": "none", "rm": "1", "forcerm": "1", "q": "0"}
        params["labels"] = json.dumps({LABEL_TASK_IMAGE: "1", LABEL_MANAGER: self.manager_id})
        messages = await self.engine.build(context, params)
        failed = next((m for m in messages if m.get("error")), None)
        if failed is not None:
            log = _ANSI.sub("", "".join(m.get("stream", "") for m in messages)).splitlines()
            tail = "\n".join(line for line in log[-BUILD_LOG_TAIL:] if line.strip())
            raise errors.ImageBuildFailed(f"image build failed: {failed['error'].strip()}\n{tail}")

    async def remove_image(self, ref: str, node: str | None = None) -> None:
        try:
            await self._call(self.client.images.remove, ref, force=True)
        except NotFound:
            pass

    async def put_archive(self, container_id: str, path: str, data: bytes) -> None:
        try:
            ok = await self._call(self.client.api.put_archive, container_id, path, data)
        except NotFound as e:
            raise errors.FileNotFound(f"{path}: {e.explanation}") from e
        except APIError as e:
            raise errors.BadRequest(f"cannot write {path}: {e.explanation}") from e
        if not ok:
            raise errors.BadRequest(f"cannot write {path}")

    async def get_archive(self, container_id: str, path: str, max_bytes: int) -> tuple[bytes, dict]:
        """The tar of `path` and docker's stat of it; PayloadTooLarge past `max_bytes`."""

        def get():
            stream, stat = self.client.api.get_archive(container_id, path, chunk_size=1 << 20)
            buf = bytearray()
            for chunk in stream:
                buf += chunk
                if len(buf) > max_bytes + (1 << 20):  # tar headers and padding on top of the payload
                    stream.close()
                    raise errors.PayloadTooLarge(f"{path} is larger than the download limit of {max_bytes} bytes")
            return bytes(buf), stat

        try:
            return await self._call(get)
        except NotFound as e:
            raise errors.FileNotFound(f"no such file in the sandbox: {path}") from e
        except APIError as e:
            raise errors.BadRequest(f"cannot read {path}: {e.explanation}") from e

    async def close(self) -> None:
        for s in list(self.sessions.values()):
            await s.close(end_shell=False)  # the shells live on for the next manager to adopt
        await self.engine.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


_FROM = re.compile(r"^\s*FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", re.IGNORECASE | re.MULTILINE)


def base_images(dockerfile: str) -> list[str]:
    """The images a Dockerfile's FROM lines name: not its own stage names, `scratch` or `${ARG}` forms."""
    stages, out = set(), []
    for ref, stage in _FROM.findall(dockerfile):
        if ref.lower() not in stages and ref != "scratch" and "$" not in ref and ref not in out:
            out.append(ref)
        if stage:
            stages.add(stage.lower())
    return out


def single_file_tar(name: str, data: bytes, mode: int) -> bytes:
    """A tar holding one regular file at `name` (relative to /); docker creates missing parents."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name.lstrip("/"))
        info.size, info.mode, info.mtime = len(data), mode, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def file_from_tar(tar_bytes: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar:
            if member.isfile():
                f = tar.extractfile(member)
                return f.read() if f else b""
    raise errors.BadRequest("not a regular file")
