"""Configuration of one `rock serve` process (flags of `rock serve --help` map onto these fields)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


def default_state_dir() -> Path:
    return Path(os.environ.get("ROCK_STATE_DIR", Path.home() / ".rock"))


class Limits(BaseModel):
    """Defaults applied to a create that leaves a resource unset, and the maxima a create may ask for."""

    model_config = ConfigDict(extra="forbid")

    cpus: float = 1.0
    memory: int = 1 << 30
    pids_limit: int = 512
    max_cpus: float = Field(default_factory=lambda: float(os.cpu_count() or 1))
    max_memory: int = 8 << 30
    max_pids_limit: int = 4096
    # Disk: what a sandbox may write on top of its image, enforced by btrfs simple quotas (rock/backend/btrfsquota.py).
    # The default applies only where the data root can enforce it (elsewhere sandboxes are unbounded); None: none.
    disk: int | None = 10 << 30
    max_disk: int = 100 << 30
    max_ttl_seconds: float = 7 * 24 * 3600
    nofile: int = 4096
    max_output_bytes: int = 1 << 20  # per stream of one exec; the rest is drained and `truncated` set
    max_upload_bytes: int = 256 << 20
    max_download_bytes: int = 256 << 20


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = 8080
    token: str
    model_upstream: str | None = None
    state_dir: Path = Field(default_factory=default_state_dir)
    db: Path | None = Field(default=None, description="SQLite records; default <state_dir>/rock.db")
    allow_mounts: list[Path] = Field(default_factory=list)
    on_exit: Literal["remove", "keep"] = "remove"
    warm_pool: int = Field(default=0, ge=0, description="containers kept started per pooled spec; 0 disables")
    pool_specs: list[str] = Field(default_factory=list, description="images pooled from start-up")
    reap_interval_s: float = 5.0
    ray_address: str | None = Field(default=None, description="place sandboxes on the nodes of this Ray cluster")
    limits: Limits = Field(default_factory=Limits)
