"""Scale-out on Ray: one sandbox-host actor per node owns that node's Docker daemon.

    ray start --head --port 6379          # then `ray start --address HEAD:6379` on every other node
    rock serve --ray auto                 # the manager, on the head node

`ClusterBackend` implements `rock.backend.base.Backend`, as `rock.backend.docker.DockerBackend`
does, so `SandboxService` does not know which one it drives. It places each new sandbox on the node with the most free
memory and CPU (by what it has placed there against the node's Ray resources) and routes every
call about a container to the host that owns it. Sandboxes that mount host paths or a model
socket stay on the manager's own node.
"""

from __future__ import annotations

import asyncio

import ray
from ray.exceptions import RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rock import errors
from rock.backend.base import Backend, ContainerSpec, ExecSpec
from rock.backend.docker import DockerBackend


class SandboxHost:
    """Ray actor (async): a DockerBackend on the node it is pinned to."""

    def __init__(self, manager_id: str):
        self.backend = DockerBackend(manager_id)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    async def call(self, method: str, *args):
        return await getattr(self.backend, method)(*args)

    async def exec_events(self, spec: ExecSpec):
        async for event in self.backend.exec_events(spec):
            yield event


async def _await(ref):
    """The result of a host call, re-raising the host's own exception (NotFound, EngineError, ...)."""
    try:
        return await ref
    except RayTaskError as e:
        cause = e.cause
        raise (cause if isinstance(cause, Exception) else errors.BackendError(str(e))) from None


class ClusterBackend(Backend):
    def __init__(self, manager_id: str, address: str):
        ray.init(address=address, namespace="rock", log_to_driver=False, ignore_reinit_error=True)
        self.manager_id = manager_id
        self.local_node = ray.get_runtime_context().get_node_id()
        self.hosts: dict[str, ray.actor.ActorHandle] = {}
        self.capacity: dict[str, tuple[float, float]] = {}  # node -> (cpus, memory bytes)
        self.used: dict[str, list[float]] = {}
        self.where: dict[str, str] = {}  # container id -> node
        self.alloc: dict[str, tuple[float, int]] = {}  # container id -> (cpus, memory)
        self.session_node: dict[str, str] = {}
        host_cls = ray.remote(num_cpus=0)(SandboxHost)
        for n in ray.nodes():
            if not n["Alive"]:
                continue
            node = n["NodeID"]
            strategy = NodeAffinitySchedulingStrategy(node, soft=False)
            self.hosts[node] = host_cls.options(scheduling_strategy=strategy).remote(manager_id)
            res = n["Resources"]
            self.capacity[node] = (float(res.get("CPU", 1.0)) or 1.0, float(res.get("memory", 1 << 30)))
            self.used[node] = [0.0, 0.0]
        if self.local_node not in self.hosts:
            raise RuntimeError("the manager's own Ray node is not alive")

    # ---- placement --------------------------------------------------------------------------

    def place(self, cpus: float, memory: int, local: bool = False, node: str | None = None) -> str:
        if node is not None:
            if node not in self.hosts:
                raise errors.Conflict(f"node {node} that holds this snapshot is not in the cluster")
            return node
        if local:
            return self.local_node

        def free(n: str) -> float:
            (cap_cpu, cap_mem), (u_cpu, u_mem) = self.capacity[n], self.used[n]
            return (cap_mem - u_mem - memory) / cap_mem + (cap_cpu - u_cpu - cpus) / cap_cpu

        return max(self.hosts, key=free)

    def node_of(self, container_id: str) -> str | None:
        return self.where.get(container_id)

    def _host(self, container_id: str):
        node = self.where.get(container_id)
        if node is None:
            raise errors.SandboxNotFound(f"no host owns container {container_id[:12]}")
        return self.hosts[node]

    # ---- containers -------------------------------------------------------------------------

    async def image_exists(self, image: str, node: str | None = None) -> bool:
        return await _await(self.hosts[node or self.local_node].call.remote("image_exists", image))

    async def run(self, sandbox_id: str, spec: ContainerSpec, node: str | None = None) -> str:
        node = node or self.place(spec.cpus, spec.memory)
        cid = await _await(self.hosts[node].call.remote("run", sandbox_id, spec))
        self.where[cid], self.alloc[cid] = node, (spec.cpus, spec.memory)
        self.used[node][0] += spec.cpus
        self.used[node][1] += spec.memory
        return cid

    async def remove(self, container_id: str) -> None:
        node = self.where.pop(container_id, None)
        if node is None:
            return
        await _await(self.hosts[node].call.remote("remove", container_id))
        cpus, mem = self.alloc.pop(container_id, (0.0, 0))
        self.used[node][0] -= cpus
        self.used[node][1] -= mem

    async def state(self, container_id: str) -> str:
        if container_id not in self.where:
            return "gone"
        return await _await(self._host(container_id).call.remote("state", container_id))

    async def start(self, container_id: str) -> None:
        await _await(self._host(container_id).call.remote("start", container_id))

    async def list_ours(self) -> list[dict]:
        nodes = list(self.hosts)
        per_node = await asyncio.gather(*(_await(self.hosts[n].call.remote("list_ours")) for n in nodes))
        out = []
        for node, rows in zip(nodes, per_node, strict=True):
            for r in rows:
                self.where.setdefault(r["id"], node)  # re-adopted after a restart
                out.append({**r, "node": node})
        return out

    async def commit(self, container_id: str, snapshot_id: str) -> str:
        return await _await(self._host(container_id).call.remote("commit", container_id, snapshot_id))

    async def build_image(self, context: bytes, tag: str) -> None:
        # Every node builds it: a sandbox of the image may be placed on any of them.
        await asyncio.gather(*(_await(h.call.remote("build_image", context, tag)) for h in self.hosts.values()))

    async def remove_image(self, ref: str, node: str | None = None) -> None:
        await _await(self.hosts[node or self.local_node].call.remote("remove_image", ref))

    async def put_archive(self, container_id: str, path: str, data: bytes) -> None:
        await _await(self._host(container_id).call.remote("put_archive", container_id, path, data))

    async def get_archive(self, container_id: str, path: str, max_bytes: int) -> tuple[bytes, dict]:
        return await _await(self._host(container_id).call.remote("get_archive", container_id, path, max_bytes))

    # ---- exec and sessions ------------------------------------------------------------------

    async def exec(self, spec: ExecSpec, limit: int) -> dict:
        return await _await(self._host(spec.container).call.remote("exec", spec, limit))

    async def exec_events(self, spec: ExecSpec):
        host = self._host(spec.container)
        gen = host.exec_events.options(num_returns="streaming").remote(spec)
        async for ref in gen:
            yield await _await(ref)

    async def open_session(self, container_id: str, session_id: str, env: dict[str, str], cwd: str | None) -> None:
        node = self.where.get(container_id)
        await _await(self._host(container_id).call.remote("open_session", container_id, session_id, env, cwd))
        self.session_node[session_id] = node

    async def adopt_session(self, container_id: str, session_id: str) -> None:
        node = self.where.get(container_id)
        await _await(self._host(container_id).call.remote("adopt_session", container_id, session_id))
        self.session_node[session_id] = node

    async def run_session(self, session_id: str, cmd: str, timeout: float | None, limit: int) -> dict:
        node = self.session_node.get(session_id)
        if node is None:
            raise errors.SessionNotFound(f"no session {session_id}")
        return await _await(self.hosts[node].call.remote("run_session", session_id, cmd, timeout, limit))

    async def close_session(self, session_id: str) -> None:
        node = self.session_node.pop(session_id, None)
        if node is not None:
            await _await(self.hosts[node].call.remote("close_session", session_id))

    async def close(self) -> None:
        await asyncio.gather(*(_await(h.call.remote("close")) for h in self.hosts.values()), return_exceptions=True)
        for h in self.hosts.values():
            ray.kill(h)
        ray.shutdown()
