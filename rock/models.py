"""Wire models of ROCK REST v1, shared by the server (`rock.server`) and the SDK (`rock.sdk`).

Every request model forbids unknown fields, so a typo in a client is a 422 rather than a
silently ignored option.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from rock.contracts import Chunk

DEFAULT_IMAGE = "rock/base:bookworm"

_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
MIN_MEMORY = 6 << 20  # docker refuses a smaller memory limit
MIN_DISK = 1 << 20  # below this a sandbox cannot even write its shell history
_MEM_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_memory(value: object, what: str = "memory") -> int:
    """Bytes from `512m`, `2g`, `1.5GiB` or a plain integer; ValueError (naming `what`) on anything else.

    Any type is accepted and checked here: this runs as a `mode="before"` validator, so a JSON
    object or list reaches it unvalidated, and a TypeError would escape pydantic as a 5xx."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON writers may send 1073741824.0
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{what} must be a size like '512m', '2g' or a byte count")
    if isinstance(value, int):
        n = value
    else:
        m = _MEM_RE.match(value)
        if not m:
            raise ValueError(f"{what} {value!r} is not a size like '512m', '2g' or a byte count")
        n = int(float(m.group(1)) * _MEM_UNITS[m.group(2).lower()])
    if n <= 0:
        raise ValueError(f"{what} must be positive")
    return n


# What reaches the daemon as a C string (argv, environment, paths) cannot hold NUL, and an environment
# name cannot be empty or hold "=": said here as a 422 rather than by the daemon as a 500.
Text = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$")]
EnvName = Annotated[str, StringConstraints(pattern=r"^[^=\x00]+$")]
Env = dict[EnvName, Text]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Mount(Strict):
    """A host directory bind-mounted into the sandbox; `source` must lie under an --allow-mount root."""

    source: Text
    target: Text
    read_only: bool = True


class CreateSandbox(Strict):
    """Body of `POST /v1/sandboxes`. Unset resources take the server's defaults."""

    image: str = Field(default=DEFAULT_IMAGE, min_length=1)
    cpus: float | None = Field(default=None, ge=0.01, description="CPU quota in cores (the daemon's least: 0.01)")
    memory: int | None = Field(default=None, description="bytes; accepts '512m', '2g', ...")
    pids_limit: int | None = Field(default=None, gt=0)
    disk: int | None = Field(
        default=None,
        description="bytes the sandbox may write on top of its image (or snapshot); accepts '512m', '2g', ...; "
        "past it writes fail with EDQUOT. Needs a quota-capable data root (`make docker`)",
    )
    network: Literal["none", "model"] = "none"
    model_upstream: str | None = None
    env: Env = Field(default_factory=dict)
    ttl_seconds: float | None = Field(default=None, gt=0)
    labels: dict[str, str] = Field(default_factory=dict)
    snapshot: str | None = Field(default=None, description="snapshot id to fork from (replaces image)")
    mounts: list[Mount] = Field(default_factory=list)
    trajectory_id: str | None = None
    replay_from: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description='sandbox id whose recorded model calls answer this one\'s, in order (needs "network": "model")',
    )

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v):
        if v is None:
            return None
        n = parse_memory(v)
        if n < MIN_MEMORY:
            raise ValueError(f"memory must be at least {MIN_MEMORY} bytes (6 MiB, the daemon's least)")
        return n

    @field_validator("disk", mode="before")
    @classmethod
    def _disk(cls, v):
        if v is None:
            return None
        n = parse_memory(v, "disk")
        if n < MIN_DISK:
            raise ValueError(f"disk must be at least {MIN_DISK} bytes (1 MiB)")
        return n

    @field_validator("cpus", mode="before")
    @classmethod
    def _cpus(cls, v):
        # Plain floats only: "abc" or booleans are malformed, not coerced.
        if isinstance(v, bool):
            raise ValueError("cpus must be a number")
        return v


class Sandbox(Strict):
    id: str
    status: str
    image: str
    cpus: float
    memory: int
    pids_limit: int
    disk: int | None = Field(default=None, description="bytes it may write on top of its image; null: unbounded")
    network: str
    env: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    mounts: list[Mount] = Field(default_factory=list)
    ttl_seconds: float | None = None
    created_at: float
    expires_at: float | None = None
    trajectory_id: str
    snapshot: str | None = None
    model_upstream: str | None = None
    replay_from: str | None = None
    container_id: str
    node: str | None = Field(default=None, description="Ray node id of the owning host (cluster mode)")
    warm: bool = False


class SandboxList(Strict):
    sandboxes: list[Sandbox]


class ExecRequest(Strict):
    """`cmd` as a string runs under `bash -c`; as a list it is the argv."""

    cmd: Text | list[Text]
    cwd: Text | None = None
    env: Env = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0, description="seconds; none = no limit")
    stdin: str | None = None

    @field_validator("cmd")
    @classmethod
    def _cmd(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("cmd must not be an empty list")
        if isinstance(v, str) and not v.strip():
            raise ValueError("cmd must not be empty")
        return v


class ExecResult(Strict):
    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False
    truncated: bool = False


class ExecChunk(Strict):
    """One NDJSON line of a streamed exec: output as it comes, then one `exit` line."""

    type: Literal["stdout", "stderr", "exit"]
    data: str = ""
    exit_code: int | None = None
    duration_s: float | None = None
    timed_out: bool | None = None
    truncated: bool | None = None


class ChunkEvent(BaseModel):
    """One NDJSON line of `GET /v1/chunks/stream`: `open` once the subscription is live, then a `chunk` per
    recorded model call (`rock.contracts.Chunk`), a `keepalive` after `keepalive_s` without one, `end` when the
    gateway stops. `t` is the server's wall clock when the line was written."""

    type: Literal["open", "chunk", "keepalive", "end"]
    t: float
    chunk: Chunk | None = None


class ChunkCount(Strict):
    """`GET /v1/chunks/count`: how many chunks the gateway recorded for a trajectory of a sandbox."""

    sandbox_id: str
    trajectory_id: str
    count: int


class CreateSession(Strict):
    cwd: Text | None = None
    env: Env = Field(default_factory=dict)


class SessionInfo(Strict):
    id: str
    sandbox_id: str


class SessionRun(Strict):
    cmd: str
    timeout: float | None = Field(default=None, gt=0)

    @field_validator("cmd")
    @classmethod
    def _cmd(cls, v):
        if not v.strip():
            raise ValueError("cmd must not be empty")
        return v


class Snapshot(Strict):
    snapshot_id: str
    sandbox_id: str
    image: str
    created_at: float
    node: str | None = None


class SnapshotList(Strict):
    snapshots: list[Snapshot]


class ImageBuilt(Strict):
    """Answer of `POST /v1/images` (body: a tar build context with `Dockerfile` at its root)."""

    image: str = Field(description="ale-task:<first 16 hex of the sha256 of the context's files>")
    cached: bool = Field(description="the tag existed already, nothing was built")
    seconds: float


class ErrorDetail(Strict):
    code: str
    message: str


class ErrorBody(Strict):
    error: ErrorDetail
