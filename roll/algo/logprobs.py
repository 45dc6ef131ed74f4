"""Token log-probabilities from logits (`pytest tests/roll/test_roll_algo.py -k logprobs`,
`pytest tests/roll/test_algo_packing.py -k sliced`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets[b, t] | logits[b, t]) for every position.

    logits: [B, T, V] (any float dtype; computed in float32 so that it is comparable with the
    sampler's logprobs), targets: [B, T] long -> [B, T] float32.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V]
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T]


def sliced_token_logprobs(
    lm_head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor, slice_len: int
) -> torch.Tensor:
    """`token_logprobs(lm_head(hidden), targets)` computed `slice_len` tokens at a time.

    hidden: [..., T, H], targets: [..., T] long -> [..., T] float32. Each slice's [slice_len × V] logits are
    made, reduced to one logprob per token and dropped; under autograd the slice is checkpointed (only its
    hidden states are kept and its logits are recomputed in backward), so neither pass ever holds the whole
    [tokens × vocab] logits: with a 150k vocabulary those are 0.6 MB per token in float32, more than the model.
    """
    if slice_len < 1:
        raise ValueError(f"slice_len must be >= 1, got {slice_len}")
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree on the token dims")
    flat_h = hidden.reshape(-1, hidden.shape[-1])  # [N, H]
    flat_t = targets.reshape(-1)  # [N]

    def one_slice(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(lm_head(h).float(), dim=-1)  # [S, V]
        return logp.gather(-1, t.unsqueeze(-1)).squeeze(-1)  # [S]

    out = []
    for start in range(0, flat_h.shape[0], slice_len):
        h, t = flat_h[start : start + slice_len], flat_t[start : start + slice_len]
        if torch.is_grad_enabled():
            out.append(checkpoint(one_slice, h, t, use_reentrant=False))
        else:
            out.append(one_slice(h, t))
    if not out:
        return torch.zeros(targets.shape, dtype=torch.float32)
    return torch.cat(out).reshape(targets.shape)  # [..., T]
