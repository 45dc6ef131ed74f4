"""Token log-probabilities from logits (`pytest tests/roll/test_roll_algo.py -k logprobs`)."""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets[b, t] | logits[b, t]) for every position.

    logits: [B, T, V] (any float dtype; computed in float32 so that it is comparable with the
    sampler's logprobs), targets: [B, T] long -> [B, T] float32.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V]
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T]
