"""The seam between `SandboxService` and what runs containers: one short ABC and the specs it takes.

    .venv/bin/pytest tests/rock/test_backend_seam.py -q

`rock.backend.docker.DockerBackend` (this machine's daemon) and `rock.cluster.ClusterBackend` (one
DockerBackend per Ray node) implement it. The daemon's own failures surface as
`rock.backend.engine.EngineError` with the daemon's HTTP status (404: no such container or exec,
409: the container is not running), which the service maps to its typed errors by that status;
everything else a method raises is a `rock.errors.RockError` subclass, named in its docstring.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ExecSpec:
    """One command to run in a container: `cmd` as a string runs under `bash -c`, as a list it is the argv."""

    container: str
    cmd: str | list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    stdin: bytes | None = None
    timeout: float | None = None  # seconds; None = no limit


@dataclass
class ContainerSpec:
    image: str
    cpus: float
    memory: int
    pids_limit: int
    nofile: int
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[tuple[str, str, bool]] = field(default_factory=list)  # (source, target, read_only)
    disk: int | None = None  # bytes the container may write on top of its image; None = unbounded


class Backend(ABC):
    """Containers, execs, sessions, archives and images on one or more Docker daemons.

    `node` arguments name a Ray node in a cluster; a single-daemon backend has one node, `None`."""

    @abstractmethod
    def place(self, cpus: float, memory: int, local: bool = False, node: str | None = None) -> str | None:
        """The node a new container of this size goes to. Raises Conflict if `node` is not in the cluster."""

    @abstractmethod
    def node_of(self, container_id: str) -> str | None:
        """The node that owns `container_id` (None on a single daemon or if unknown)."""

    async def disk_quota_problem(self) -> str | None:
        """None when `ContainerSpec.disk` is enforced below the containers; else one line saying why not and how."""
        return "this backend cannot bound a sandbox's disk"

    # ---- containers -----------------------------------------------------------------------------

    @abstractmethod
    async def image_exists(self, image: str, node: str | None = None) -> bool:
        """Whether the image is on the node; a malformed reference is False, not an error."""

    @abstractmethod
    async def run(self, sandbox_id: str, spec: ContainerSpec, node: str | None = None) -> str:
        """Create and start a container; its id. Raises docker's APIError/ImageNotFound when the daemon refuses."""

    @abstractmethod
    async def remove(self, container_id: str) -> None:
        """Force-remove; idempotent (a container already gone is fine). Raises EngineError otherwise."""

    @abstractmethod
    async def state(self, container_id: str) -> str:
        """Docker's state ('running', 'exited', ...) or 'gone'. Raises EngineError on other daemon failures."""

    @abstractmethod
    async def start(self, container_id: str) -> None:
        """Start a stopped container. Raises EngineError (404 gone, 500 will not start)."""

    @abstractmethod
    async def list_ours(self) -> list[dict]:
        """Every container of this manager, running or not: {id, sandbox_id, state, node}."""

    @abstractmethod
    async def commit(self, container_id: str, snapshot_id: str) -> str:
        """Commit the container to an image; its reference. Raises SandboxNotFound if no host owns it (cluster)."""

    @abstractmethod
    async def build_image(self, context: bytes, tag: str) -> None:
        """Build a tar context into `tag`, offline. Raises ImageBuildFailed (with the log's tail) or EngineError."""

    @abstractmethod
    async def remove_image(self, ref: str, node: str | None = None) -> None:
        """Remove an image; one already gone is fine."""

    @abstractmethod
    async def put_archive(self, container_id: str, path: str, data: bytes) -> None:
        """Extract a tar at `path`. Raises FileNotFound (no such directory) or BadRequest (refused)."""

    @abstractmethod
    async def get_archive(self, container_id: str, path: str, max_bytes: int) -> tuple[bytes, dict]:
        """The tar of `path` and docker's stat of it. Raises FileNotFound, PayloadTooLarge or BadRequest."""

    # ---- exec and sessions ----------------------------------------------------------------------

    @abstractmethod
    async def exec(self, spec: ExecSpec, limit: int) -> dict:
        """Run to the end; an ExecResult dict, each stream capped at `limit` bytes. Raises EngineError."""

    @abstractmethod
    def exec_events(self, spec: ExecSpec) -> AsyncIterator[tuple[str, bytes | dict]]:
        """("started", b""), then ("stdout"|"stderr", bytes) as output comes, then ("exit", {...}).
        Raises EngineError (before "started") when the exec cannot be created."""

    @abstractmethod
    async def open_session(self, container_id: str, session_id: str, env: dict[str, str], cwd: str | None) -> None:
        """Start a persistent shell. Raises EngineError, or BackendError if the shell does not come up."""

    @abstractmethod
    async def adopt_session(self, container_id: str, session_id: str) -> None:
        """Attach to a shell that an earlier manager opened. Raises Conflict if it has ended."""

    @abstractmethod
    async def run_session(self, session_id: str, cmd: str, timeout: float | None, limit: int) -> dict:
        """One command in the session's shell; an ExecResult dict. Raises SessionNotFound or Conflict (ended)."""

    @abstractmethod
    async def close_session(self, session_id: str) -> None:
        """End the session's shell (kill it); an unknown id is fine."""

    @abstractmethod
    async def close(self) -> None:
        """Close connections and threads; containers and session shells stay for the next manager."""
