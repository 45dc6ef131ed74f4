"""Fixtures for the gateway tests: `.venv/bin/pytest tests/gateway`.

The gateway runs on its own event loop in a background thread (as it does inside `rock serve`),
so the tests can talk to it with ordinary blocking clients: the real ModelProxy (run in-process
on a free loopback port) or a raw connection to the unix socket.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from rock import modelproxy
from rock.gateway import GatewayConfig, ModelAttachment, ModelGateway


class Harness:
    """A started ModelGateway on a loop thread, plus in-process proxies for its attachments."""

    def __init__(self, state_dir: Path, upstream: str | None, config: GatewayConfig | None = None):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gw = ModelGateway(state_dir, upstream, config)
        self.proxies: list = []
        self.run(self.gw.start())

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def attach(self, sandbox_id: str, **kw) -> ModelAttachment:
        return self.run(self.gw.attach(sandbox_id, **kw))

    def proxy(self, att: ModelAttachment) -> str:
        """Serve the ModelProxy for `att` on a free loopback port; its OPENAI_BASE_URL."""
        server = modelproxy.serve(att.socket_path, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self.proxies.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    def restart(self) -> None:
        self.run(self.gw.stop())
        self.gw = ModelGateway(self.gw.state_dir, self.gw.default_upstream, self.gw.config)
        self.run(self.gw.start())

    def close(self) -> None:
        for server in self.proxies:
            server.shutdown()
            server.server_close()
        self.run(self.gw.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def harness(tmp_path):
    made: list[Harness] = []

    def make(upstream: str | None, **config) -> Harness:
        h = Harness(tmp_path / "state", upstream, GatewayConfig(**config) if config else None)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()
