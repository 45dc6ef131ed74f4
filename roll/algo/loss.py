"""The chunk-level importance-weighted policy-gradient loss (`pytest tests/roll/test_roll_algo.py -k loss`).

A chunk is one model call of the agent. The sampler (vLLM) and the trainer (DeepSpeed over transformers)
never compute exactly the same probabilities, and later the policy will be a few versions stale, so each
chunk carries an importance ratio trainer/sampler. Token-level ratios are noisy; IPA weighs the whole
chunk by the geometric mean of its token ratios, clipped PPO-style.
"""

from __future__ import annotations

import torch


def chunk_ratio(new_logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Geometric mean over the response tokens of exp(new - old), per chunk.

    new_logp, old_logp: [B, T] float, mask: [B, T] (1 on response tokens) -> [B].
    """
    mask = mask.to(new_logp.dtype)
    n_tokens = mask.sum(-1).clamp(min=1)  # [B]
    return torch.exp(((new_logp - old_logp) * mask).sum(-1) / n_tokens)  # [B]


def policy_gradient_loss(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate with chunk-level ratios, averaged over chunks.

    new_logp, old_logp, mask: [B, T]; advantages: [B] -> (scalar loss, stats).
    While the ratio is inside the clip range the gradient is ratio * A * mean_t grad log p(token),
    i.e. REINFORCE with the group baseline, importance-corrected per chunk.
    """
    ratio = chunk_ratio(new_logp, old_logp, mask)  # [B]
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high)  # [B]
    surrogate = torch.minimum(ratio * advantages, clipped * advantages)  # [B]
    loss = -surrogate.mean()
    with torch.no_grad():
        stats = {
            "ratio_mean": ratio.mean().item(),
            "clip_frac": (ratio != clipped).float().mean().item(),
        }
    return loss, stats
