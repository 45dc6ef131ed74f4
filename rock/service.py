"""SandboxService: everything `rock serve` does, behind the one-line FastAPI endpoints of `rock.server`.

It validates requests against the server's limits, keeps the SQLite records, drives the Docker
backend, the warm pool, sessions, the ttl reaper and (for `network: model`) the model gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import tarfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from rock import errors
from rock.backend.base import Backend, ContainerSpec, ExecSpec
from rock.backend.docker import DockerBackend, base_images, file_from_tar, single_file_tar
from rock.backend.engine import EngineError
from rock.backend.execs import Utf8Stream
from rock.config import ServerConfig
from rock.metrics import Metrics
from rock.modelproxy import EXIT_CANNOT_LISTEN
from rock.models import (
    ChunkCount,
    CreateSandbox,
    CreateSession,
    ExecChunk,
    ExecRequest,
    ExecResult,
    ImageBuilt,
    Sandbox,
    SessionInfo,
    SessionRun,
    Snapshot,
)
from rock.pool import PoolKey, WarmPool
from rock.store import Store

log = logging.getLogger("rock.service")
TASK_IMAGE_REPO = "ale-task"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def check_path(path: str) -> str:
    """Absolute, no `..` component, no NUL: else InvalidPath (400)."""
    if not path or not path.startswith("/"):
        raise errors.InvalidPath(f"path must be absolute: {path!r}")
    if "\x00" in path or ".." in path.split("/"):
        raise errors.InvalidPath(f"path must not contain '..' or NUL: {path!r}")
    return path


def _manager_id(state_dir: Path) -> str:
    """A stable id per state dir: containers of other managers on the same daemon are never touched."""
    f = state_dir / "manager_id"
    if not f.exists():
        f.write_text(uuid.uuid4().hex[:16])
    return f.read_text().strip()


def _engine_errors(e: EngineError, sandbox_id: str) -> errors.RockError:
    if e.status == 404:
        return errors.SandboxNotFound(f"sandbox {sandbox_id} has no container any more")
    if e.status == 409:
        return errors.Conflict(f"sandbox {sandbox_id} is not running: {e.message}")
    return errors.BackendError(e.message)


def _backend(config: ServerConfig) -> Backend:
    if config.ray_address:
        from rock.cluster import ClusterBackend  # Ray is only imported for a cluster

        return ClusterBackend(_manager_id(config.state_dir), config.ray_address)
    return DockerBackend(_manager_id(config.state_dir))


class SandboxService:
    def __init__(self, config: ServerConfig):
        self.config, self.limits = config, config.limits
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.db or config.state_dir / "rock.db")
        self.backend = _backend(config)
        self.metrics = Metrics()
        self.pool = WarmPool(config.warm_pool, self._spawn_pooled, self.backend.remove)
        self.metrics.pool_ready.set_function(self.pool.count)
        self.sessions: dict[str, set[str]] = {}  # sandbox id -> its session ids
        # Sessions a previous manager opened: adopted on first use (their shells outlive the manager),
        # or, if that fails, answered with why they ended until they are deleted.
        self._unadopted: set[str] = set()
        self._ended: dict[str, str] = {}
        self._adopting: dict[str, asyncio.Lock] = {}
        self.gateway = None
        self._gateway_lock = asyncio.Lock()
        self._reaper: asyncio.Task | None = None
        self._builds: dict[str, asyncio.Lock] = {}  # image tag -> lock: one build per content at a time
        self.disk_problem: str | None = "not checked yet"  # None once the backend can bound each sandbox's disk

    # ---- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.disk_problem = await self.backend.disk_quota_problem()
        if self.disk_problem:
            log.warning("disk quotas: %s; a create asking for `disk` gets 422, others are unbounded", self.disk_problem)
        else:
            log.info("disk quotas: on; a sandbox may write %s bytes by default", self.limits.disk)
        await self.reconcile()
        for ssid, sandbox_id in self.store.list_sessions():
            self.sessions.setdefault(sandbox_id, set()).add(ssid)
            self._unadopted.add(ssid)
        model = [sb for sb in self.store.list_sandboxes() if sb.network == "model"]
        if model:
            # Eagerly: an agent inside a re-adopted sandbox must get answers without waiting for
            # the next create. The gateway re-opens the persisted sockets; drop those whose sandbox
            # did not survive, then make sure each container's proxy listens again.
            gw = await self._gateway()
            await gw.reconcile({sb.id for sb in self.store.list_sandboxes()})
            await asyncio.gather(*(self._revive_proxy(sb) for sb in model))
        for image in self.config.pool_specs:
            self.pool.want(self._pool_key(image, None, None, None))
        self._reaper = asyncio.create_task(self._reap_loop())

    async def stop(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        await self.pool.drain()
        if self.config.on_exit == "remove":
            await asyncio.gather(*(self.delete(sb.id) for sb in self.store.list_sandboxes()), return_exceptions=True)
        await self._remove_orphans()
        if self.gateway is not None:
            await self.gateway.stop()
        await self.backend.close()
        self.store.close()

    async def reconcile(self) -> None:
        """Re-adopt our running containers, restart stopped ones, drop records without a container."""
        containers = {c["sandbox_id"]: c for c in await self.backend.list_ours()}
        for sb in self.store.list_sandboxes():
            c = containers.get(sb.id)
            if c is None or c["id"] != sb.container_id:
                self.store.delete_sandbox(sb.id)
                self.store.delete_sessions_of(sb.id)
            elif c["state"] != "running":
                try:
                    await self.backend.start(sb.container_id)
                except EngineError:
                    log.warning("sandbox %s: container will not start again; removing it", sb.id)
                    await self.backend.remove(sb.container_id)
                    self.store.delete_sandbox(sb.id)
                    self.store.delete_sessions_of(sb.id)
        await self._remove_orphans()
        self.metrics.active.set(len(self.store.list_sandboxes()))

    async def _revive_proxy(self, sb: Sandbox) -> None:
        """Re-run the proxy's start command in a re-adopted container unless the proxy still listens."""
        att = self.gateway.attachment(sb.id) if self.gateway is not None else None
        if att is None:
            log.warning("sandbox %s: no model attachment survived the restart; its model calls will fail", sb.id)
            return
        try:
            spec = ExecSpec(sb.container_id, list(att.command), {**sb.env, **att.env}, timeout=30.0)
            out = await self.backend.exec(spec, 4096)
        except Exception:
            log.exception("sandbox %s: cannot re-run the model proxy", sb.id)
            return
        if out["exit_code"] == 0:
            log.info("sandbox %s: model proxy started again", sb.id)
        elif out["exit_code"] == EXIT_CANNOT_LISTEN:
            pass  # the proxy survived (only the manager died): its port is taken by itself
        else:
            log.warning("sandbox %s: model proxy did not start (exit %s): %s", sb.id, out["exit_code"], out["stderr"])

    async def _remove_orphans(self) -> None:
        known = {sb.container_id for sb in self.store.list_sandboxes()}
        for c in await self.backend.list_ours():
            if c["id"] not in known and not self.pool.owns(c["id"]):
                await self.backend.remove(c["id"])

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.reap_interval_s)
            now = time.time()
            for sb in self.store.list_sandboxes():
                if sb.expires_at is not None and sb.expires_at <= now:
                    log.info("sandbox %s: ttl expired", sb.id)
                    try:
                        await self.delete(sb.id)
                    except Exception:
                        log.exception("reaper: cannot remove %s", sb.id)

    # ---- sandboxes --------------------------------------------------------------------------

    def _pool_key(self, image: str, cpus, memory, pids, disk=None) -> PoolKey:
        lim = self.limits
        disk = disk or (lim.disk if self.disk_problem is None else None)  # the default only where it is enforced
        return PoolKey(image, cpus or lim.cpus, memory or lim.memory, pids or lim.pids_limit, disk)

    async def _spawn_pooled(self, key: PoolKey) -> tuple[str, str]:
        sid = new_id("sb")
        spec = ContainerSpec(key.image, key.cpus, key.memory, key.pids_limit, self.limits.nofile, disk=key.disk)
        return sid, await self.backend.run(sid, spec, self.backend.place(key.cpus, key.memory))

    def _validate(self, req: CreateSandbox) -> None:
        lim = self.limits
        if req.disk is not None and self.disk_problem:
            raise errors.ValidationFailed(f"disk cannot be enforced here: {self.disk_problem}")
        for name, value, top in (
            ("cpus", req.cpus, lim.max_cpus),
            ("memory", req.memory, lim.max_memory),
            ("disk", req.disk, lim.max_disk),
            ("pids_limit", req.pids_limit, lim.max_pids_limit),
            ("ttl_seconds", req.ttl_seconds, lim.max_ttl_seconds),
        ):
            if value is not None and value > top:
                if name in ("memory", "disk"):
                    value, top = f"{value} ({value / (1 << 30):.2f} GiB)", f"{top} ({top / (1 << 30):.2f} GiB)"
                raise errors.ValidationFailed(f"{name} {value} is over the maximum {top}")
        if req.model_upstream and req.network != "model":
            raise errors.ValidationFailed('model_upstream needs "network": "model"')
        if req.replay_from and req.network != "model":
            raise errors.ValidationFailed('replay_from needs "network": "model"')
        if req.network == "model" and not (req.model_upstream or self.config.model_upstream or req.replay_from):
            raise errors.ValidationFailed('"network": "model" needs model_upstream (no --model-upstream default)')
        for m in req.mounts:
            self._check_mount(m.source, m.target)

    def _check_mount(self, source: str, target: str) -> None:
        check_path(target)
        real = Path(os.path.realpath(source))
        roots = [Path(os.path.realpath(r)) for r in self.config.allow_mounts]
        if not source.startswith("/") or not any(real == r or r in real.parents for r in roots):
            allowed = ", ".join(map(str, roots)) or "none (start rock serve with --allow-mount DIR)"
            raise errors.ValidationFailed(f"mount source {source} is not under an allowed root: {allowed}")
        if not real.exists():
            raise errors.ValidationFailed(f"mount source {source} does not exist")

    async def create(self, req: CreateSandbox) -> Sandbox:
        t0 = time.monotonic()
        self._validate(req)
        if req.replay_from:
            await self._check_replay_source(req.replay_from)
        image, snap = req.image, None
        if req.snapshot:
            snap = self.store.get_snapshot(req.snapshot)
            if snap is None:
                raise errors.SnapshotNotFound(f"no snapshot {req.snapshot}")
            image = snap.image
        key = self._pool_key(image, req.cpus, req.memory, req.pids_limit, req.disk)
        pooled = not (req.snapshot or req.mounts or req.network == "model")
        taken = self.pool.take(key) if pooled else None
        if taken:
            sid, cid = taken
        else:
            # Mounts and model sockets are paths of this machine; a fork needs its snapshot's daemon.
            local = bool(req.mounts) or req.network == "model"
            node = self.backend.place(key.cpus, key.memory, local=local, node=snap.node if snap else None)
            if not snap and not await self.backend.image_exists(image, node):
                raise errors.ImageNotFound(
                    f"image {image} not found (rock never pulls; build it with `rock image build`)"
                )
            sid = new_id("sb")
            cid = await self._run_cold(sid, req, image, key, node)
        now = time.time()
        sb = Sandbox(
            id=sid,
            status="running",
            image=image,
            cpus=key.cpus,
            memory=key.memory,
            pids_limit=key.pids_limit,
            disk=key.disk,
            network=req.network,
            env=req.env,
            labels=req.labels,
            mounts=req.mounts,
            ttl_seconds=req.ttl_seconds,
            created_at=now,
            expires_at=now + req.ttl_seconds if req.ttl_seconds else None,
            trajectory_id=req.trajectory_id or sid,
            snapshot=req.snapshot,
            replay_from=req.replay_from,
            model_upstream=req.model_upstream or (self.config.model_upstream if req.network == "model" else None),
            container_id=cid,
            node=self.backend.node_of(cid),
            warm=bool(taken),
        )
        self.store.put_sandbox(sb)
        kind = "warm" if taken else "fork" if req.snapshot else "cold"
        self.metrics.create_seconds.labels(kind).observe(time.monotonic() - t0)
        self.metrics.active.inc()
        return sb

    async def _check_replay_source(self, source: str) -> None:
        """404 unless `source` is a sandbox we know or one whose calls the gateway recorded (also after
        it was removed); 422 (from the gateway's attach) when it is known but recorded nothing."""
        gw = await self._gateway()
        if self.store.get_sandbox(source) is None and not gw.trajectory(source):
            raise errors.SandboxNotFound(f"replay_from: no sandbox {source} (and no trajectory recorded for it)")

    async def _run_cold(self, sid: str, req: CreateSandbox, image: str, key: PoolKey, node: str | None) -> str:
        spec = ContainerSpec(
            image,
            key.cpus,
            key.memory,
            key.pids_limit,
            self.limits.nofile,
            dict(req.env),
            [(m.source, m.target, m.read_only) for m in req.mounts],
            disk=key.disk,
        )
        if req.network != "model":
            if not (req.snapshot or req.mounts):
                self.pool.want(key)
            return await self.backend.run(sid, spec, node)
        from rock.gateway import GatewayError

        gw = await self._gateway()
        try:
            att = await gw.attach(
                sid, upstream=req.model_upstream, trajectory_id=req.trajectory_id or sid, replay=req.replay_from
            )
        except GatewayError as e:  # a bad upstream URL, nothing recorded to replay and the like
            raise errors.ValidationFailed(str(e)) from e
        spec.mounts += [tuple(m) for m in att.mounts]
        spec.env.update(att.env)
        cid = None
        try:
            cid = await self.backend.run(sid, spec, node)
            await self._start_proxy(cid, list(att.command), spec.env)
        except BaseException:
            await gw.detach(sid)
            if cid:
                await self.backend.remove(cid)
            raise
        return cid

    async def _start_proxy(self, container_id: str, argv: list[str], env: dict[str, str]) -> None:
        """Run the gateway's start command; it forks the proxy and returns once the proxy listens."""
        out = await self.backend.exec(ExecSpec(container_id, argv, env, timeout=30.0), 4096)
        if out["exit_code"] != 0:
            raise errors.BackendError(f"model proxy did not start (exit {out['exit_code']}): {out['stderr'].strip()}")

    async def _gateway(self):
        # Imported on first use: the gateway is its own module and only model sandboxes need it.
        async with self._gateway_lock:
            if self.gateway is None:
                await self._start_gateway()
        return self.gateway

    async def _start_gateway(self) -> None:
        from rock.gateway import ModelGateway

        gw = ModelGateway(self.config.state_dir, self.config.model_upstream)
        await gw.start()
        # The gateway re-opens every attachment it persisted; those whose sandbox did not
        # survive a restart must not get their socket back.
        for sid in gw.attachments():
            if self.store.get_sandbox(sid) is None:
                await gw.detach(sid)
        self.gateway = gw

    def record(self, sandbox_id: str) -> Sandbox:
        sb = self.store.get_sandbox(sandbox_id)
        if sb is None:
            raise errors.SandboxNotFound(f"no sandbox {sandbox_id}")
        return sb

    async def get(self, sandbox_id: str) -> Sandbox:
        sb = self.record(sandbox_id)
        return sb.model_copy(update={"status": await self.backend.state(sb.container_id)})

    async def list(self) -> list[Sandbox]:
        return self.store.list_sandboxes()

    async def delete(self, sandbox_id: str) -> None:
        sb = self.record(sandbox_id)
        # Container first, record last: a failed removal leaves the record, so nothing leaks.
        await self.backend.remove(sb.container_id)
        for ssid in self.sessions.pop(sandbox_id, set()):
            await self.backend.close_session(ssid)  # the shell went with the container: this closes our end
            self._forget_session(ssid)
        if self.store.get_sandbox(sandbox_id) is None:
            return  # a concurrent delete (the reaper, another client) finished first
        self.store.delete_sandbox(sandbox_id)
        self.store.delete_sessions_of(sandbox_id)
        if sb.network == "model" and self.gateway is not None:
            await self.gateway.detach(sandbox_id)
        self.metrics.active.dec()

    # ---- exec -------------------------------------------------------------------------------

    def _exec_spec(self, sb: Sandbox, req: ExecRequest) -> ExecSpec:
        if req.cwd:
            check_path(req.cwd)
        stdin = req.stdin.encode() if req.stdin is not None else None
        return ExecSpec(sb.container_id, req.cmd, {**sb.env, **req.env}, req.cwd, stdin, req.timeout)

    async def exec(self, sandbox_id: str, req: ExecRequest) -> ExecResult:
        sb = self.record(sandbox_id)
        try:
            out = await self.backend.exec(self._exec_spec(sb, req), self.limits.max_output_bytes)
        except EngineError as e:
            raise _engine_errors(e, sandbox_id) from e
        self.metrics.exec_total.labels("oneshot").inc()
        self.metrics.exec_seconds.labels("oneshot").observe(out["duration_s"])
        return ExecResult(**out)

    async def exec_stream(self, sandbox_id: str, req: ExecRequest) -> AsyncIterator[bytes]:
        """NDJSON lines of ExecChunk; validation errors surface before the first byte is sent."""
        sb = self.record(sandbox_id)
        events = self.backend.exec_events(self._exec_spec(sb, req))
        try:
            await anext(events)  # "started": the exec exists and runs
        except EngineError as e:
            raise _engine_errors(e, sandbox_id) from e
        return self._ndjson(events)

    async def _ndjson(self, events) -> AsyncIterator[bytes]:
        dec = Utf8Stream()
        async for kind, data in events:
            if kind == "exit":
                chunk = ExecChunk(type="exit", truncated=False, **data)
                self.metrics.exec_total.labels("stream").inc()
                self.metrics.exec_seconds.labels("stream").observe(data["duration_s"])
            else:
                chunk = ExecChunk(type=kind, data=dec.decode(kind, data))
            yield chunk.model_dump_json(exclude_none=True).encode() + b"\n"

    # ---- sessions ---------------------------------------------------------------------------

    async def create_session(self, sandbox_id: str, req: CreateSession) -> SessionInfo:
        sb = self.record(sandbox_id)
        if req.cwd:
            check_path(req.cwd)
        ssid = new_id("ss")
        try:
            await self.backend.open_session(sb.container_id, ssid, {**sb.env, **req.env}, req.cwd)
        except EngineError as e:
            raise _engine_errors(e, sandbox_id) from e
        self.sessions.setdefault(sandbox_id, set()).add(ssid)
        self.store.put_session(ssid, sandbox_id)
        return SessionInfo(id=ssid, sandbox_id=sandbox_id)

    async def _session(self, sandbox_id: str, session_id: str) -> str:
        """The session's id once this manager holds its shell: adopted now if an earlier manager opened
        it; Conflict (naming the session and why) if it has ended."""
        sb = self.record(sandbox_id)
        if session_id not in self.sessions.get(sandbox_id, set()):
            raise errors.SessionNotFound(f"no session {session_id} in sandbox {sandbox_id}")
        if session_id in self._unadopted:
            async with self._adopting.setdefault(session_id, asyncio.Lock()):
                if session_id in self._unadopted:
                    try:
                        await self.backend.adopt_session(sb.container_id, session_id)
                    except errors.Conflict as e:
                        self._ended[session_id] = f"{e.message} (sandbox {sandbox_id})"
                    except EngineError as e:
                        raise _engine_errors(e, sandbox_id) from e
                    self._unadopted.discard(session_id)
            self._adopting.pop(session_id, None)
        if session_id in self._ended:
            raise errors.Conflict(self._ended[session_id])
        return session_id

    def _forget_session(self, session_id: str) -> None:
        self.store.delete_session(session_id)
        self._unadopted.discard(session_id)
        self._ended.pop(session_id, None)

    async def run_session(self, sandbox_id: str, session_id: str, req: SessionRun) -> ExecResult:
        ssid = await self._session(sandbox_id, session_id)
        out = await self.backend.run_session(ssid, req.cmd, req.timeout, self.limits.max_output_bytes)
        self.metrics.exec_total.labels("session").inc()
        self.metrics.exec_seconds.labels("session").observe(out["duration_s"])
        return ExecResult(**out)

    async def delete_session(self, sandbox_id: str, session_id: str) -> None:
        try:
            await self._session(sandbox_id, session_id)  # an earlier manager's shell is adopted, to end it
        except errors.Conflict:
            pass  # it has ended already
        await self.backend.close_session(session_id)
        self.sessions[sandbox_id].discard(session_id)
        self._forget_session(session_id)

    # ---- files ------------------------------------------------------------------------------

    async def put_file(self, sandbox_id: str, path: str, data: bytes, mode: int = 0o644) -> None:
        sb = self.record(sandbox_id)
        check_path(path)
        if path.endswith("/"):
            raise errors.InvalidPath(f"path names a directory, not a file: {path}")
        await self.backend.put_archive(sb.container_id, "/", single_file_tar(path, data, mode))

    async def get_file(self, sandbox_id: str, path: str) -> bytes:
        sb = self.record(sandbox_id)
        check_path(path)
        tar_bytes, stat = await self.backend.get_archive(sb.container_id, path, self.limits.max_download_bytes)
        if stat.get("mode", 0) & (1 << 31):  # Go's os.ModeDir
            raise errors.IsADirectory(f"{path} is a directory; download it with GET .../archive?path={path}")
        return file_from_tar(tar_bytes)

    async def put_archive(self, sandbox_id: str, path: str, data: bytes) -> None:
        sb = self.record(sandbox_id)
        check_path(path)
        _check_tar(data)
        await self.exec(sandbox_id, ExecRequest(cmd=["mkdir", "-p", path]))
        await self.backend.put_archive(sb.container_id, path, data)

    async def get_archive(self, sandbox_id: str, path: str) -> bytes:
        sb = self.record(sandbox_id)
        check_path(path)
        tar_bytes, _ = await self.backend.get_archive(sb.container_id, path, self.limits.max_download_bytes)
        return tar_bytes

    # ---- snapshots --------------------------------------------------------------------------

    async def snapshot(self, sandbox_id: str) -> Snapshot:
        sb = self.record(sandbox_id)
        sid = new_id("snap")
        image = await self.backend.commit(sb.container_id, sid)
        snap = Snapshot(snapshot_id=sid, sandbox_id=sandbox_id, image=image, created_at=time.time(), node=sb.node)
        self.store.put_snapshot(snap)
        return snap

    async def list_snapshots(self) -> list[Snapshot]:
        return self.store.list_snapshots()

    async def delete_snapshot(self, snapshot_id: str) -> None:
        snap = self.store.get_snapshot(snapshot_id)
        if snap is None:
            raise errors.SnapshotNotFound(f"no snapshot {snapshot_id}")
        await self.backend.remove_image(snap.image, snap.node)
        self.store.delete_snapshot(snapshot_id)

    # ---- task images ------------------------------------------------------------------------

    async def build_image(self, context: bytes) -> ImageBuilt:
        """Build a tar context (Dockerfile at its root) into `ale-task:<content hash>`; at once if that exists."""
        t0 = time.monotonic()
        dockerfile, digest = _read_context(context)
        tag = f"{TASK_IMAGE_REPO}:{digest[:16]}"
        async with self._builds.setdefault(tag, asyncio.Lock()):
            if await self.backend.image_exists(tag):
                return ImageBuilt(image=tag, cached=True, seconds=time.monotonic() - t0)
            for ref in base_images(dockerfile):
                if not await self.backend.image_exists(ref):
                    raise errors.ImageNotFound(
                        f"base image {ref} not found (rock never pulls: build or map it locally)"
                    )
            try:
                await self.backend.build_image(context, tag)
            except EngineError as e:
                raise errors.BackendError(f"image build: {e.message}") from e
        return ImageBuilt(image=tag, cached=False, seconds=time.monotonic() - t0)

    # ---- model calls ------------------------------------------------------------------------

    async def trajectory(self, sandbox_id: str) -> list[dict]:
        sb = self.record(sandbox_id)
        if sb.network != "model":
            return []
        gw = await self._gateway()
        return list(gw.trajectory(sandbox_id))

    def trajectory_lines(self, chunks: list[dict]) -> bytes:
        return b"".join(json.dumps(c).encode() + b"\n" for c in chunks)

    async def chunk_count(self, sandbox_id: str, trajectory_id: str) -> ChunkCount:
        sb = self.record(sandbox_id)
        n = (await self._gateway()).store.count(sandbox_id, trajectory_id) if sb.network == "model" else 0
        return ChunkCount(sandbox_id=sandbox_id, trajectory_id=trajectory_id, count=n)

    async def chunk_stream(self, sandbox_id: str | None, trajectory_id: str | None,
                           keepalive_s: float) -> AsyncIterator[bytes]:  # fmt: skip
        """NDJSON lines of ChunkEvent from the gateway's subscription (GET /v1/chunks/stream). The subscription
        is live before the first byte; an unknown sandbox is a 404 before it."""
        if sandbox_id is not None and self.record(sandbox_id).network != "model":
            raise errors.BadRequest(f"sandbox {sandbox_id} is not on the model network: it records no chunks")
        return self._chunk_lines((await self._gateway()).subscribe(sandbox_id, trajectory_id), keepalive_s)

    async def _chunk_lines(self, sub, keepalive_s: float) -> AsyncIterator[bytes]:
        def line(kind: str, chunk: dict | None = None) -> bytes:
            return json.dumps({"type": kind, "t": time.time(), "chunk": chunk}).encode() + b"\n"

        # One pending get across keep-alives: cancelling a get on timeout could drop the chunk it was taking.
        # A keep-alive line is a write, so a client gone away ends the stream (and the subscription) within
        # keepalive_s; the client, reading with a timeout above keepalive_s, notices a dead server the same way.
        pending = None
        self.metrics.chunk_streams.inc()
        try:
            yield line("open")
            while True:
                pending = pending or asyncio.ensure_future(anext(sub, None))
                done, _ = await asyncio.wait({pending}, timeout=keepalive_s)
                if not done:
                    yield line("keepalive")
                    continue
                chunk, pending = pending.result(), None
                if chunk is None:
                    yield line("end")
                    return
                yield line("chunk", chunk)
        finally:
            if pending is not None:
                pending.cancel()
            sub.close()
            self.metrics.chunk_streams.dec()


def _read_context(data: bytes) -> tuple[str, str]:
    """(Dockerfile text, sha256 hex of every file's name, mode and bytes) of a build context tar.
    Tar metadata such as mtimes and owners is left out, so equal content gives an equal hash."""
    _check_tar(data)
    h, dockerfile = hashlib.sha256(), None
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        files = sorted((m.name.removeprefix("./"), m) for m in tar if m.isfile())
        for name, member in files:
            body = tar.extractfile(member).read()
            h.update(f"{name}\0{member.mode & 0o777:o}\0{len(body)}\0".encode() + body)
            if name == "Dockerfile":
                dockerfile = body.decode(errors="replace")
    if dockerfile is None:
        raise errors.BadRequest("build context has no Dockerfile at its root")
    return dockerfile, h.hexdigest()


def _check_tar(data: bytes) -> None:
    """Reject archives with absolute or `..` member names before docker sees them."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for m in tar:
                if m.name.startswith("/") or ".." in m.name.split("/"):
                    raise errors.InvalidPath(f"archive member {m.name!r} is absolute or contains '..'")
    except tarfile.TarError as e:
        raise errors.BadRequest(f"body is not a tar archive: {e}") from e
