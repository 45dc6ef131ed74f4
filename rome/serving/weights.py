"""Weights in flight: safetensors buckets of whole layers, for syncing an engine without disk.

Tested by `.venv/bin/pytest tests/rome/test_weight_sync.py -m "not slow"`.

A bucket is the bytes of one safetensors file (`safetensors.torch.save`). Buckets carry whole
layers: every tensor under `model.layers.N.` travels together, and a tensor outside the decoder
layers (embeddings, final norm, lm_head) is its own group. vLLM reloads a layer only once all its
parameters have arrived and re-packs it then; a layer split across two reloads would be packed
half-empty. Bytes rather than tensors, because tensors do not survive vLLM's `collective_rpc`
arguments into the engine process.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from rome.errors import WeightSyncError

_LAYER = re.compile(r"^((?:[\w]+\.)*layers\.\d+)\.")


def layer_key(name: str) -> str:
    """The group a tensor travels in: `model.layers.3` for `model.layers.3.mlp.gate.weight`, else the name."""
    m = _LAYER.match(name)
    return m.group(1) if m else name


def state_dict_buckets(tensors: Mapping[str, object], bucket_bytes: int = 64 << 20) -> Iterator[bytes]:
    """Yield safetensors buckets of whole layers, each up to bucket_bytes (a bigger layer goes alone).

    tensors are in checkpoint format (the names and layout a model dir's safetensors hold). A
    generator: each bucket is serialised only when asked for, so the sync needs one bucket of
    extra memory at a time.
    """
    groups: dict[str, list[str]] = {}
    for name in tensors:
        groups.setdefault(layer_key(name), []).append(name)
    return _buckets(([(n, tensors[n]) for n in names] for names in groups.values()), bucket_bytes)


def model_buckets(model, bucket_bytes: int = 64 << 20, state: Mapping[str, object] | None = None) -> Iterator[bytes]:
    """Buckets of a transformers model's weights in checkpoint format, converted one layer at a time.

    transformers 5 holds some weights in another layout than it saves them (Qwen3-MoE's experts
    fused into one tensor per layer; the checkpoint and vLLM have one per expert), so each layer
    goes through the same reverse conversion as `save_pretrained`. `state`: the model's state dict
    given whole (ZeRO-3 leaves the model's own parameters partitioned); default `model.state_dict()`.
    """
    from transformers.core_model_loading import revert_weight_conversion

    state = model.state_dict() if state is None else state
    groups: dict[str, list[str]] = {}
    for name in state:
        groups.setdefault(layer_key(name), []).append(name)

    def converted() -> Iterator[list[tuple[str, object]]]:
        for names in groups.values():
            yield list(revert_weight_conversion(model, {n: state[n] for n in names}).items())

    return _buckets(converted(), bucket_bytes)


def _buckets(groups: Iterable[list[tuple[str, object]]], bucket_bytes: int) -> Iterator[bytes]:
    from safetensors.torch import save

    bucket: dict[str, object] = {}
    size = 0
    for group in groups:
        group_size = sum(_nbytes(t) for _, t in group)
        if bucket and size + group_size > bucket_bytes:
            yield save(bucket)
            bucket, size = {}, 0
        for name, t in group:
            # contiguous: safetensors refuses strided views (a transposed or sliced parameter).
            bucket[name] = t.detach().contiguous()
        size += group_size
    if bucket:
        yield save(bucket)


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


def bucket_names(blob: bytes) -> list[str]:
    """The tensor names in a safetensors bucket, read from its header only; WeightSyncError if it is not one."""
    if not isinstance(blob, bytes | bytearray | memoryview) or len(blob) < 8:
        raise WeightSyncError(f"a weight bucket must be safetensors bytes, got {type(blob).__name__}")
    (n,) = struct.unpack("<Q", bytes(blob[:8]))
    try:
        header = json.loads(bytes(blob[8 : 8 + n]))
    except (ValueError, UnicodeDecodeError) as e:
        raise WeightSyncError(f"a weight bucket is not safetensors bytes (bad header: {e})") from e
    if not isinstance(header, dict):
        raise WeightSyncError("a weight bucket is not safetensors bytes (header is not a JSON object)")
    return [k for k in header if k != "__metadata__"]


def model_dir_names(model_dir: str | Path) -> dict[str, list[str]]:
    """The checkpoint's tensor names of a model dir, grouped by layer_key (safetensors headers only)."""
    groups: dict[str, list[str]] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name in header:
            if name != "__metadata__":
                groups.setdefault(layer_key(name), []).append(name)
    return groups


def check_bucket(names: Iterable[str], expected: Mapping[str, list[str]]) -> None:
    """WeightSyncError unless names are known tensors and cover every layer they touch whole."""
    names = set(names)
    if not names:
        raise WeightSyncError("a weight bucket holds no tensors")
    unknown = sorted(n for n in names if n not in expected.get(layer_key(n), ()))
    if unknown:
        raise WeightSyncError(f"weight bucket names tensors the served model does not have: {_few(unknown)}")
    missing = sorted(n for key in {layer_key(n) for n in names} for n in expected[key] if n not in names)
    if missing:
        raise WeightSyncError(f"weight bucket splits a layer (send each layer whole); missing {_few(missing)}")


def _few(names: list[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")
