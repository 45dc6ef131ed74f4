"""The inference worker: rome's OpenAI-compatible server (vLLM engine) inside a Ray actor.

Started by `roll train CONFIG`, `inference.engines` of them, held by roll/workers/pool.py's InferencePool (with
several, its router in the driver is what the gateway calls). vLLM runs in the actor's process, the HTTP server in
a background thread of it (rome.serving.server.start_server), so the ROCK gateway reaches the policy at `url()`
and the driver swaps weights in memory with `update_weights` (or from a dir with `load_weights`) without
restarting the engine.
"""

from __future__ import annotations

import os
import secrets


class InferenceServer:
    """One engine serving one policy; methods run synchronously (under Ray, call `.remote`)."""

    def __init__(self, model_dir: str, engine: str = "vllm", kvcache_gb: int = 1):
        # The CPU build of vLLM reserves this many GiB of KV cache up front; keep it small beside the trainer.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kvcache_gb))
        from rome.serving.server import start_server

        self._handle = start_server(
            model_dir, engine=engine, host="127.0.0.1", port=0, admin_token=secrets.token_hex(16)
        )

    def url(self) -> str:
        """The OpenAI-compatible base URL (ends in /v1)."""
        return self._handle.url

    def policy_version(self) -> int:
        return self._handle.policy_version

    def update_weights(self, buckets: list[bytes], policy_version: int) -> dict:
        """Swap in weights sent as safetensors buckets (`rome.serving.weights`), in memory: no restart, no disk.
        Responses from now on carry `policy_version`; in-flight requests finish on the old weights first."""
        return self._handle.update_weights_from_bytes(iter(buckets), policy_version)

    def load_weights(self, path: str, policy_version: int) -> int:
        """Swap in the HF weights at `path`; responses from now on carry `policy_version`."""
        self._handle.load_weights(path, policy_version)
        return policy_version

    def stop(self) -> None:
        self._handle.stop()
