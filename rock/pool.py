"""Warm pool: per (image, cpus, memory, pids_limit, disk) spec, keep `size` containers started.

A create whose spec matches takes one (the sandbox id was fixed when the container was made,
since labels cannot change later) and a background task starts a replacement. Sandboxes with
mounts, a model socket or a snapshot are never pooled. Specs are learnt from creates (at most
`max_specs` of them) or given at start-up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NamedTuple

log = logging.getLogger("rock.pool")


class PoolKey(NamedTuple):
    """The spec a warm container was made for; a create takes one only on an exact match."""

    image: str
    cpus: float
    memory: int  # bytes
    pids_limit: int
    disk: int | None = None  # bytes; None = unbounded


class WarmPool:
    def __init__(
        self,
        size: int,
        spawn: Callable[[PoolKey], Awaitable[tuple[str, str]]],
        remove: Callable[[str], Awaitable[None]],
        max_specs: int = 4,
    ):
        self.size, self._spawn, self._remove, self.max_specs = size, spawn, remove, max_specs
        self.ready: dict[PoolKey, list[tuple[str, str]]] = {}
        self._tasks: dict[PoolKey, asyncio.Task] = {}

    def count(self) -> int:
        return sum(len(v) for v in self.ready.values())

    def want(self, key: PoolKey) -> None:
        """Start keeping `key` warm (if the pool is on and has room for another spec)."""
        if self.size <= 0 or (key not in self.ready and len(self.ready) >= self.max_specs):
            return
        self.ready.setdefault(key, [])
        self._refill(key)

    def take(self, key: PoolKey) -> tuple[str, str] | None:
        """(sandbox_id, container_id) of a started container for `key`, or None."""
        items = self.ready.get(key)
        if items is None:  # not a pooled spec (yet): the cold create registers it once it worked
            return None
        got = items.pop(0) if items else None
        self._refill(key)
        return got

    def _refill(self, key: PoolKey) -> None:
        task = self._tasks.get(key)
        if task is None or task.done():
            self._tasks[key] = asyncio.create_task(self._fill(key))

    async def _fill(self, key: PoolKey) -> None:
        while key in self.ready and len(self.ready[key]) < self.size:
            try:
                self.ready[key].append(await self._spawn(key))
            except Exception:  # an image removed meanwhile, a daemon hiccup: stop keeping this spec
                log.exception("warm pool: cannot start a container for %s", key)
                self.ready.pop(key, None)
                return

    def owns(self, container_id: str) -> bool:
        return any(cid == container_id for items in self.ready.values() for _, cid in items)

    async def drain(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        items = [cid for v in self.ready.values() for _, cid in v]
        self.ready.clear()
        await asyncio.gather(*(self._remove(cid) for cid in items), return_exceptions=True)
