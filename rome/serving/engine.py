"""The engine seam: what the OpenAI service needs from vLLM or transformers.

An engine takes prompt token ids and yields generated tokens as they come, each with the
logprob of the sampled token under the model's raw distribution (what vLLM reports by default,
and what a float32 forward pass over the same tokens gives, so training and serving agree).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rome.errors import ModelDirError

EngineKind = Literal["vllm", "hf"]


@dataclass
class SamplingSpec:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    top_logprobs: int = 0  # alternatives to report per token besides the sampled one
    stop_token_ids: list[int] = field(default_factory=list)


@dataclass
class Delta:
    """Tokens generated since the previous delta of the same request."""

    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[dict[int, float]]
    finish_reason: str | None = None  # "stop" (a stop token) or "length" on the last delta


class Engine(ABC):
    max_model_len: int

    @abstractmethod
    async def start(self) -> None:
        """Load the model; called on the event loop that will serve requests."""

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    def generate(self, prompt_ids: list[int], spec: SamplingSpec) -> AsyncIterator[Delta]:
        """Stream deltas until a stop token or max_tokens; closing the iterator aborts the request."""

    @abstractmethod
    async def load_weights(self, model_dir: Path) -> None:
        """Replace the weights by those of model_dir (same architecture); no request is running."""

    @abstractmethod
    async def update_weights_from_bytes(self, buckets: Iterable[bytes]) -> int:
        """Load safetensors buckets of whole layers (rome.serving.weights), one at a time; no request is running.

        Returns the number of tensors loaded; WeightSyncError for a bucket that is not safetensors,
        names an unknown tensor, or splits a layer.
        """


ARCH_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "moe_intermediate_size",
    "num_local_experts",
    "num_experts_per_tok",
)


def check_model_dir(path: str | Path) -> Path:
    """The path if it holds config.json and safetensors weights; a one-line ModelDirError otherwise."""
    p = Path(path)
    if not p.is_dir():
        raise ModelDirError(f"model dir not found: {p}")
    if not (p / "config.json").is_file():
        raise ModelDirError(f"{p}: missing config.json")
    if not any(p.glob("*.safetensors")):
        raise ModelDirError(f"{p}: missing *.safetensors weights")
    try:
        json.loads((p / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{p}/config.json: not valid JSON ({e})") from e
    return p


def check_same_architecture(current: Path, new: Path) -> None:
    a = json.loads((current / "config.json").read_text())
    b = json.loads((new / "config.json").read_text())
    diff = [k for k in ARCH_KEYS if a.get(k) != b.get(k)]
    if diff:
        raise ModelDirError(f"{new}: architecture differs from the served model in {', '.join(diff)}")


def make_engine(kind: EngineKind, model_dir: Path) -> Engine:
    # Lazy imports: the hf engine must work where vLLM is not installed, and vice versa.
    if kind == "vllm":
        from rome.serving.vllm_engine import VLLMEngine

        return VLLMEngine(model_dir)
    if kind == "hf":
        from rome.serving.hf_engine import HFEngine

        return HFEngine(model_dir)
    raise ValueError(f"unknown engine {kind!r}; known: vllm, hf")
