"""The IPA loss, and token-level GRPO and PPO-clip beside it (`.venv/bin/pytest tests/roll/test_algo_ipa.py`).

All three take the same tensors: per-token `logp_new` (trainer, with grad), `logp_old` (the sampler's recorded
logprobs μ), `chunk_ids` and `mask` laid out [B, T] in any packing (see `ratio.py`), plus per-chunk [C]
quantities indexed by chunk id. Each returns (scalar loss, metrics dict of floats).

IPA (Interaction-Perceptive Agentic Policy Optimization), exactly as computed here. For chunk c (one model
call, tokens t ∈ c) write `ℓ_c(θ) = mean_{t∈c} log πθ(y_t)`, `ρ_c = exp(ℓ_c(θ) − ℓ_c(μ))` (`chunk_ratios`),
`G_c` its discounted return and `A_c` its group advantage (`returns.py`). T+ are the chunks of successful trajectories,
T− those of failed ones, V the chunks that have tokens and are not flagged as train/inference mismatch:

    L(θ) = (1/D) · [ Σ_{c∈T+∩V} −G_c · ℓ_c(θ)  +  λ_neg · Σ_{c∈T−∩V} sg(clip(ρ_c, 0, 1)) · |A_c| · ℓ_c(θ) ]

    ∇L   = (1/D) · [ −Σ_{T+} G_c ∇ℓ_c  +  λ_neg · Σ_{T−} min(ρ_c, 1) · |A_c| · ∇ℓ_c ]

D = |V| unless given (give the whole step's count when one step is split into micro-batches).

Why this shape. The (length-normalised) off-policy policy gradient of chunk c sampled by μ is
`E_μ[ρ_c A_c ∇ℓ_c]` (chunk-level importance sampling with the geometric-mean ratio; `sg(ρ)·A·ℓ` and `ρ·A`
have the same gradient, since ∇ρ = ρ∇ℓ). For a failed trajectory A_c < 0 (R = 0 under a non-negative group baseline), so the term pushes the
chunk's likelihood down (a group that failed every attempt has b = 0, A = 0: it teaches nothing, as in
GRPO). Truncating the weight at 1 ("truncated update", as in Retrace / V-trace) bounds its
variance, and as the policy unlearns the failed chunk (ρ → 0) the push fades instead of driving the probability
to zero and flattening the rest of the distribution, the known failure of unbounded negative gradients.
Successful chunks are verified good actions: they are imitated with weight G_c = γ^(K−k)·R, no ratio and no
baseline (whichever policy sampled them, a reference prefix or a teacher included), later chunks more than
earlier ones. λ_neg (`neg_weight`) balances the two sums; 0 gives return-weighted rejection sampling.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from roll.algo.ratio import chunk_means, chunk_ratios


class IPAConfig(BaseModel):
    """The IPA knobs as they appear under `algorithm:` in a training config."""

    model_config = ConfigDict(extra="forbid")
    gamma: float = Field(0.95, gt=0.0, le=1.0, description="per-chunk discount of the terminal reward")
    neg_weight: float = Field(1.0, ge=0.0, description="λ_neg: weight of failed trajectories' truncated term")
    ratio_low: float = Field(0.5, ge=0.0, le=1.0, description="chunks with ρ below this are masked (mismatch)")
    ratio_high: float = Field(2.0, ge=1.0, description="chunks with ρ above this are masked (mismatch)")
    normalize_std: bool = Field(False, description="divide group advantages by the group's std")


def _denominator(default: torch.Tensor, denominator: float | None) -> torch.Tensor:
    return default.clamp(min=1) if denominator is None else torch.as_tensor(float(denominator))


def ipa_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    chunk_ids: torch.Tensor,
    mask: torch.Tensor,
    returns: torch.Tensor,
    advantages: torch.Tensor,
    positive: torch.Tensor,
    *,
    neg_weight: float = 1.0,
    ratio_low: float = 0.5,
    ratio_high: float = 2.0,
    denominator: float | None = None,
    logp_behaviour: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The IPA loss of the module docstring.

    logp_new, logp_old, chunk_ids, mask: [B, T]; returns G, advantages A, positive (bool, the chunk's
    trajectory succeeded): [C] -> (scalar, metrics). `logp_behaviour` [B, T]: see `chunk_ratios` (stale chunks
    are mismatch-tested under the version that sampled them, and weighted by their ratio against their own μ).
    """
    C = returns.shape[0]
    if advantages.shape != (C,) or positive.shape != (C,):
        shapes = (
            f"returns {tuple(returns.shape)}, advantages {tuple(advantages.shape)}, positive {tuple(positive.shape)}"
        )
        raise ValueError(f"{shapes}: must all be [C]")
    ell, _ = chunk_means(logp_new, chunk_ids, mask, C)  # [C] ℓ_c(θ)
    r = chunk_ratios(logp_new, logp_old, chunk_ids, mask, C, ratio_low, ratio_high, logp_behaviour)
    valid = (r.n_tokens > 0) & ~r.mismatch  # [C]
    pos = valid & positive.bool()  # [C]
    neg = valid & ~positive.bool()  # [C]
    weight = r.ratio.detach().clamp(0.0, 1.0)  # [C] sg(clip(ρ, 0, 1))
    zero = torch.zeros_like(ell)
    pos_sum = torch.where(pos, -returns.to(ell.dtype) * ell, zero).sum()
    neg_sum = torch.where(neg, weight * advantages.to(ell.dtype).abs() * ell, zero).sum()
    D = _denominator(valid.sum().to(ell.dtype), denominator)
    loss = (pos_sum + neg_weight * neg_sum) / D
    with torch.no_grad():
        has_tokens = r.n_tokens > 0
        metrics = {
            "loss": loss.item(),
            "pos_term": (pos_sum / D).item(),
            "neg_term": (neg_weight * neg_sum / D).item(),
            "pos_chunks": float(pos.sum()),
            "neg_chunks": float(neg.sum()),
            "mismatch_chunks": float((r.mismatch & has_tokens).sum()),
            "ratio_mean": r.ratio[has_tokens].mean().item() if has_tokens.any() else 1.0,
            "neg_weight_mean": weight[neg].mean().item() if neg.any() else 0.0,
        }
        if logp_behaviour is not None:  # kept although πθ / μ is out of bounds: the policy moved, not the kernel
            drift = ~r.mismatch & has_tokens & ((r.ratio < ratio_low) | (r.ratio > ratio_high))
            metrics["drift_kept_chunks"] = float(drift.sum())
    return loss, metrics


def _token_surrogate(
    logp_new: torch.Tensor, logp_old: torch.Tensor, chunk_ids: torch.Tensor, advantages: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO surrogate min(r·A, clip(r, 1−ε, 1+ε)·A) and whether it was clipped, both [B, T]."""
    ratio = torch.exp(logp_new - logp_old)  # [B, T]
    adv = advantages.to(ratio.dtype)[chunk_ids.clamp(min=0)]  # [B, T] the token's chunk advantage
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)  # [B, T]
    surrogate = torch.minimum(ratio * adv, clipped * adv)  # [B, T]
    return surrogate, (ratio * adv != surrogate)


def grpo_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    chunk_ids: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    denominator: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-level GRPO (DeepSeekMath, without the KL term):
    `L = −(1/D) Σ_i (1/|o_i|) Σ_{t∈o_i} min(r_t A_i, clip(r_t, 1−ε, 1+ε) A_i)`, token ratio `r_t = exp(log πθ − log μ)`.

    A sample o_i is what `chunk_ids` names: pass a trajectory's id on all its chunks' tokens for the
    textbook per-response GRPO, or chunk ids for per-chunk samples. advantages: [C] (usually R − group mean
    reward) -> (scalar, metrics). D = number of samples with tokens unless given.
    """
    C = advantages.shape[0]
    surrogate, was_clipped = _token_surrogate(logp_new, logp_old, chunk_ids, advantages, clip_eps)
    per_sample, counts = chunk_means(surrogate, chunk_ids, mask, C)  # [C], [C]
    D = _denominator((counts > 0).sum().to(per_sample.dtype), denominator)
    loss = -per_sample.sum() / D
    with torch.no_grad():
        selected = (mask > 0) & (chunk_ids >= 0)
        metrics = {
            "loss": loss.item(),
            "clip_frac": was_clipped[selected].float().mean().item() if selected.any() else 0.0,
        }
    return loss, metrics


def ppo_clip_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    chunk_ids: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    denominator: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-level PPO-clip (Schulman et al. 2017), token-mean:
    `L = −(1/D) Σ_t min(r_t A_t, clip(r_t, 1−ε, 1+ε) A_t)` over the masked tokens, A_t = advantages[chunk of t].

    advantages: [C] -> (scalar, metrics). D = number of masked tokens unless given.
    """
    surrogate, was_clipped = _token_surrogate(logp_new, logp_old, chunk_ids, advantages, clip_eps)
    selected = (mask > 0) & (chunk_ids >= 0)  # [B, T]
    D = _denominator(selected.sum().to(surrogate.dtype), denominator)
    loss = -surrogate[selected].sum() / D
    with torch.no_grad():
        metrics = {
            "loss": loss.item(),
            "clip_frac": was_clipped[selected].float().mean().item() if selected.any() else 0.0,
        }
    return loss, metrics
