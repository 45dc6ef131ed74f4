"""The transformers engine: the reference for tests and the fallback where vLLM is missing.

One request at a time on a worker thread (no batching: that is what vLLM is for). Each step is
a forward with the KV cache in float32; the logprob reported is log_softmax of the raw logits,
sampling then applies temperature and top-p.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rome.serving.engine import Delta, Engine, SamplingSpec
from rome.serving.weights import bucket_names, check_bucket, model_dir_names


class HFEngine(Engine):
    def __init__(self, model_dir: Path):
        self.model_dir = Path(model_dir)
        self.model = None
        # A single worker thread serialises generation and weight loads.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rome-hf")

    async def start(self) -> None:
        self.model = await asyncio.get_running_loop().run_in_executor(self._pool, self._load, self.model_dir)
        self.max_model_len = self.model.config.max_position_embeddings
        self._names = model_dir_names(self.model_dir)

    async def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _load(model_dir: Path):
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        return model.eval()

    async def load_weights(self, model_dir: Path) -> None:
        self.model = await asyncio.get_running_loop().run_in_executor(self._pool, self._load, Path(model_dir))

    async def update_weights_from_bytes(self, buckets: Iterable[bytes]) -> int:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._update, buckets)

    def _update(self, buckets: Iterable[bytes]) -> int:
        # transformers 5 keeps Qwen3-MoE's experts fused in memory but buckets hold the checkpoint
        # layout (one tensor per expert), so the buckets are applied to a checkpoint-format copy and
        # the model is rebuilt from it through the same conversion as from_pretrained. This engine
        # is the reference, not the scale path: that copy is one whole model of extra memory.
        import torch
        from safetensors.torch import load
        from transformers.core_model_loading import revert_weight_conversion

        state = revert_weight_conversion(self.model, dict(self.model.state_dict()))
        loaded = 0
        for blob in buckets:
            check_bucket(bucket_names(blob), self._names)
            tensors = load(bytes(blob))
            state.update(tensors)
            loaded += len(tensors)
        model = type(self.model).from_pretrained(None, config=self.model.config, state_dict=state, dtype=torch.float32)
        self.model = model.eval()
        return loaded

    async def generate(self, prompt_ids: list[int], spec: SamplingSpec) -> AsyncIterator[Delta]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        future = loop.run_in_executor(self._pool, self._run, prompt_ids, spec, emit, cancelled)
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()
            await asyncio.shield(future)

    def _run(self, prompt_ids, spec, emit, cancelled) -> None:
        try:
            self._generate_sync(prompt_ids, spec, emit, cancelled)
        except BaseException as e:  # surfaced to the awaiting request, not lost in the thread
            emit(e)
        emit(None)

    def _generate_sync(self, prompt_ids, spec: SamplingSpec, emit, cancelled: threading.Event) -> None:
        import torch
        from transformers import DynamicCache

        gen = torch.Generator().manual_seed(spec.seed) if spec.seed is not None else None
        cache = DynamicCache()
        inputs = torch.tensor([prompt_ids])
        with torch.inference_mode():
            for step in range(spec.max_tokens):
                logits = self.model(input_ids=inputs, past_key_values=cache, use_cache=True).logits[0, -1].float()
                logprobs = torch.log_softmax(logits, dim=-1)
                token = _sample(logits, spec, gen)
                top = {}
                if spec.top_logprobs:
                    values, ids = logprobs.topk(spec.top_logprobs)
                    top = dict(zip(ids.tolist(), values.tolist(), strict=True))
                stop = token in spec.stop_token_ids
                finish = "stop" if stop else ("length" if step == spec.max_tokens - 1 else None)
                emit(Delta([token], [logprobs[token].item()], [top], finish))
                if stop or cancelled.is_set():
                    return
                inputs = torch.tensor([[token]])


def _sample(logits, spec: SamplingSpec, gen) -> int:
    import torch

    # A temperature this small is greedy in effect, and dividing by it overflows to inf/NaN probabilities.
    if spec.temperature < 1e-5:
        return int(logits.argmax())
    probs = torch.softmax(logits / spec.temperature, dim=-1)
    if spec.top_p < 1.0:
        # Keep the smallest set of most likely tokens whose mass reaches top_p.
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < spec.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=gen))
