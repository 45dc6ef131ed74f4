"""Chunk-level importance ratios and per-chunk token means (`.venv/bin/pytest tests/roll/test_algo_ipa.py -k ratio`).

Tokens are laid out [B, T] in any packing: one row per chunk, or several chunks of one trajectory in one
packed row. `chunk_ids[b, t]` names the chunk whose token sits there (global ids 0..C-1, −1 for none) and
`mask[b, t]` is 1 on the tokens that count (the model's own response tokens), so every reduction here is
per chunk whatever the layout.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def chunk_sums(
    values: torch.Tensor, chunk_ids: torch.Tensor, mask: torch.Tensor, num_chunks: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of `values` and count of tokens per chunk, over the masked tokens only.

    values: [B, T] float, chunk_ids: [B, T] long (−1 = no chunk), mask: [B, T] -> (sums [C], counts [C]).
    Differentiable in `values`. C = `num_chunks`, or max id + 1.
    """
    if values.shape != chunk_ids.shape or values.shape != mask.shape:
        raise ValueError(
            f"shapes differ: values {tuple(values.shape)}, chunk_ids {tuple(chunk_ids.shape)}, mask {tuple(mask.shape)}"
        )
    selected = (mask > 0) & (chunk_ids >= 0)  # [B, T]
    ids = chunk_ids[selected]  # [N]
    if num_chunks is None:
        num_chunks = int(ids.max()) + 1 if ids.numel() else 0
    elif ids.numel() and int(ids.max()) >= num_chunks:
        raise ValueError(f"chunk id {int(ids.max())} out of range for num_chunks={num_chunks}")
    sums = values.new_zeros(num_chunks).index_add(0, ids, values[selected])  # [C]
    counts = values.new_zeros(num_chunks).index_add(0, ids, torch.ones_like(values[selected]))  # [C]
    return sums, counts


def chunk_means(
    values: torch.Tensor, chunk_ids: torch.Tensor, mask: torch.Tensor, num_chunks: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of `values` over each chunk's masked tokens -> (means [C], counts [C]); a chunk with no token gets 0."""
    sums, counts = chunk_sums(values, chunk_ids, mask, num_chunks)
    return sums / counts.clamp(min=1), counts


class ChunkRatios(NamedTuple):
    ratio: torch.Tensor  # [C] ρ_k, differentiable in logp_new
    log_ratio: torch.Tensor  # [C] mean_{t∈k}(log πθ − log μ)
    mismatch: torch.Tensor  # [C] bool: ρ_k outside [low, high] (train/inference mismatch: exclude the chunk)
    n_tokens: torch.Tensor  # [C] float: masked tokens per chunk (0 = empty chunk, nothing to train)


def chunk_ratios(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    chunk_ids: torch.Tensor,
    mask: torch.Tensor,
    num_chunks: int | None = None,
    low: float = 0.5,
    high: float = 2.0,
    logp_behaviour: torch.Tensor | None = None,
) -> ChunkRatios:
    """`ρ_k = exp(mean_{t∈k}(log πθ(y_t) − log μ(y_t)))`, the geometric mean of the token ratios of chunk k.

    logp_new (the trainer's πθ), logp_old (the sampler's μ, as recorded), chunk_ids, mask: [B, T].
    The geometric mean damps a single odd token where a product would explode. A chunk whose ratio leaves
    [low, high] is flagged `mismatch`: trainer and sampler disagree about it too much for its gradient to be
    trusted (a different kernel, a tokenisation slip), so the losses leave it out.
    `logp_behaviour` [B, T] (no grad): the trainer's logprobs under the policy version that sampled each chunk.
    Given, the mismatch test compares it with μ instead of πθ, so a stale chunk (sampled some versions ago, its
    ratio moved by the updates since) is masked only for a true train/inference mismatch; ρ is still πθ / μ.
    """
    if not 0.0 <= low <= 1.0 <= high:
        raise ValueError(f"need 0 <= low <= 1 <= high, got low={low}, high={high}")
    log_ratio, n_tokens = chunk_means(logp_new - logp_old, chunk_ids, mask, num_chunks)  # [C], [C]
    ratio = torch.exp(log_ratio)  # [C]
    with torch.no_grad():
        tested = ratio
        if logp_behaviour is not None:
            tested = torch.exp(chunk_means(logp_behaviour - logp_old, chunk_ids, mask, num_chunks)[0])  # [C]
        mismatch = (tested < low) | (tested > high)  # [C]
    return ChunkRatios(ratio=ratio, log_ratio=log_ratio, mismatch=mismatch, n_tokens=n_tokens)
