"""The supervised loss of one micro-batch over any HF causal LM, with a shared prefix computed once
(`.venv/bin/pytest tests/roll/test_trainer_sft.py -k prefix`).

Every trajectory iflow records starts with the same ~976-token system prompt and tool schemas. When the
sequences of a micro-batch share a prefix, the prefix runs once (batch 1) with grad, its KV cache is repeated
to the batch and the suffixes attend to it; backward flows through the cache into the prefix, so the gradients
are those of separate rows (tested to float64 precision) at a fraction of the work. The RL trainer does the same
through `hidden_at` and plans its micro-batches of whole trajectories with `plan_units`. Logprobs are taken only at
loss-bearing targets, through `sliced_token_logprobs`, so [tokens x vocab] logits never exist at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from roll.algo.logprobs import sliced_token_logprobs
from roll.algo.packing import MICROBATCH_OVERHEAD_TOKENS, PackedSequence, budget_microbatches


@dataclass
class MicroBatch:
    """Sequences trained in one forward/backward; `prefix_len` > 0: their first `prefix_len` tokens are equal."""

    indices: list[int]  # into the step's sequences
    sequences: list[PackedSequence]
    prefix_len: int = 0

    @property
    def cost(self) -> int:  # padded tokens through the model
        longest = max(len(s) for s in self.sequences)
        return self.prefix_len + len(self.sequences) * (longest - self.prefix_len)


def common_prefix_len(sequences: Sequence[PackedSequence]) -> int:
    """Length of the longest common prefix of the sequences' input_ids, leaving each at least one token after it."""
    shortest = min(len(s) for s in sequences)
    first = sequences[0].input_ids[: shortest - 1]
    n = first.shape[0]
    for s in sequences[1:]:
        diff = (s.input_ids[:n] != first[:n]).nonzero()
        if diff.numel():
            n = int(diff[0, 0])
    return n


def plan_units(
    units: Sequence[Sequence[PackedSequence]], max_tokens: int, shared_prefix: bool = False, min_prefix: int = 64
) -> list[tuple[list[int], int]]:
    """Split one optimizer step's units (sequences trained in the same micro-batch: one, or a trajectory's packed
    sequences) into micro-batches of at most `max_tokens` padded tokens; (unit indices, shared prefix length) each.

    Every unit lands in exactly one micro-batch; a unit costs its sequences x its longest. With `shared_prefix`,
    units whose sequences' first `min_prefix` tokens agree are budgeted together by their suffix lengths (the prefix
    is paid once per micro-batch), and a micro-batch's prefix length is that of all its sequences (0 if under
    `min_prefix`).
    """
    cost = [len(u) * max(len(s) for s in u) for u in units]
    if not shared_prefix:
        return [(ix, 0) for ix in budget_microbatches(cost, max_tokens)]
    groups: dict[tuple, list[int]] = {}
    for i, u in enumerate(units):
        keys = {tuple(s.input_ids[:min_prefix].tolist()) if len(s) > min_prefix else None for s in u}
        key = keys.pop() if len(keys) == 1 and None not in keys else ("alone", i)
        groups.setdefault(key, []).append(i)
    out: list[tuple[list[int], int]] = []
    for members in groups.values():
        seqs = [s for i in members for s in units[i]]
        p = common_prefix_len(seqs) if len(seqs) > 1 else 0
        suffix_costs = [len(units[i]) * (max(len(s) for s in units[i]) - p) for i in members]
        # each micro-batch runs the prefix again: a cut costs that on top of the forward's own overhead
        for local in budget_microbatches(suffix_costs, max(1, max_tokens - p), MICROBATCH_OVERHEAD_TOKENS + p):
            ix = [members[j] for j in local]
            mb = [s for i in ix for s in units[i]]
            prefix = common_prefix_len(mb) if len(mb) > 1 else 0
            out.append((ix, prefix if prefix >= min_prefix else 0))
    return out


def plan_microbatches(
    sequences: Sequence[PackedSequence], max_tokens: int, shared_prefix: bool = False, min_prefix: int = 64
) -> list[MicroBatch]:
    """Split one optimizer step's sequences into micro-batches of at most `max_tokens` padded tokens (`plan_units`
    with one sequence a unit)."""
    plan = plan_units([[s] for s in sequences], max_tokens, shared_prefix, min_prefix)
    return [MicroBatch(ix, [sequences[i] for i in ix], p) for ix, p in plan]


def _pad(rows: list[torch.Tensor], pad_id: int) -> torch.Tensor:
    # Right padding needs no attention mask in a causal model: a real token only attends to earlier positions,
    # never to the pads after it, and the pads' own outputs are never read. Passing the 2-D mask anyway made
    # transformers build a [B, 1, S, P+S] mask on the cached-prefix path: 3.8 s instead of 1.0 s a forward here.
    longest = max(r.shape[0] for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : r.shape[0]] = r
    return ids


def hidden_at(backbone, input_ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, prefix_len: int = 0):
    """[N, H]: the decoder's last hidden state at (rows[i], cols[i]) of the right-padded batch `input_ids` [B, T].

    With `prefix_len` P > 0 (every row's first P tokens are equal and each row is longer) the prefix runs once
    (batch 1, with grad), its KV cache is repeated to the batch and the rows' tokens from P on attend to it: the
    states and gradients of separate rows, the prefix's work paid once (roll/workers/trainer.py's RL step).
    """
    if not prefix_len:
        return backbone(input_ids=input_ids).last_hidden_state[rows, cols]
    P, (B, T) = prefix_len, input_ids.shape
    pre = backbone(input_ids=input_ids[:1, :P], use_cache=True)
    cache = pre.past_key_values
    cache.batch_repeat_interleave(B)
    positions = torch.arange(P, T, device=input_ids.device)[None].expand(B, -1)
    rest = backbone(input_ids=input_ids[:, P:], past_key_values=cache, position_ids=positions).last_hidden_state
    inside = (cols < P)[:, None]  # [N, 1]: a target predicted from inside the prefix (the same for every row)
    return torch.where(inside, pre.last_hidden_state[0, cols.clamp(max=P - 1)], rest[rows, (cols - P).clamp(min=0)])


def load_balancing_loss(router_logits: Sequence[Sequence[torch.Tensor]], top_k: int) -> torch.Tensor:
    """The Switch-Transformer load-balancing loss, E * sum_e f_e * p_e, of each MoE layer, averaged over the layers:
    f_e the picks of expert e per token (they sum to k), p_e its mean router probability; k when the experts share
    evenly, up to E when k of them take every token. Per layer, not pooled as transformers' Qwen3-MoE does: pooled,
    layers lopsided towards different experts look balanced. `router_logits`: per forward, one [tokens, E] tensor
    per layer, padding already left out. Only p_e carries a gradient."""
    losses = []
    for layer in zip(*router_logits, strict=True):
        probs = torch.softmax(torch.cat(layer).float(), dim=-1)  # [N, E]
        n, n_experts = probs.shape
        picks = torch.zeros(n_experts, device=probs.device).index_add_(
            0, probs.topk(top_k, dim=-1).indices.reshape(-1), torch.ones(n * top_k, device=probs.device)
        )
        losses.append(n_experts * torch.sum(picks / n * probs.mean(0)))
    return torch.stack(losses).mean()


def microbatch_nll(
    model, mb: MicroBatch, slice_len: int, pad_id: int = 0, router_logits: list[tuple[torch.Tensor, ...]] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed NLL [B] and loss-token counts [B] of a micro-batch under an HF causal LM `model`.

    Targets follow `PackedSequence`: position j predicts input_ids[j+1] and counts where loss_mask[j]. With a
    `router_logits` list (a MoE model), each forward appends the router logits of the sequences' tokens, one
    [tokens, E] tensor per layer, for `load_balancing_loss`: no padding, and the shared prefix's once per sequence, so
    the balancing loss too is that of separate rows.
    """
    device = next(model.parameters()).device
    seqs, P = mb.sequences, mb.prefix_len
    B = len(seqs)
    counts = torch.tensor([int(s.loss_mask.sum()) for s in seqs], dtype=torch.float32, device=device)
    per_seq = torch.zeros(B, dtype=torch.float32, device=device)
    backbone, lm_head = model.get_decoder(), model.get_output_embeddings()
    routed = {"output_router_logits": True} if router_logits is not None else {}
    cache = None
    if P:
        # The prefix once, with grad; its hidden states serve targets 0..P-1 and its KV cache every suffix.
        pre = backbone(input_ids=seqs[0].input_ids[None, :P].to(device), use_cache=True, **routed)
        prefix_hidden, cache = pre.last_hidden_state[0], pre.past_key_values  # [P, H]
        if routed:
            router_logits.append(tuple(r.repeat(B, 1) for r in pre.router_logits))  # as in B separate rows
        # Targets inside the prefix (j < P-1) are the same tokens for all: one logprob, weighted per sequence.
        inner = torch.stack([s.loss_mask[: P - 1] for s in seqs]).to(device)  # [B, P-1]
        used = inner.any(0).nonzero().squeeze(-1)
        if used.numel():
            targets = seqs[0].input_ids[1:P].to(device)[used]
            logp = sliced_token_logprobs(lm_head, prefix_hidden[used], targets, slice_len)  # [n]
            per_seq = per_seq - inner[:, used].float() @ logp
        cache.batch_repeat_interleave(B)
    ids = _pad([s.input_ids[P:] for s in seqs], pad_id).to(device)
    if P:
        positions = torch.arange(P, P + ids.shape[1], device=device)[None].expand(B, -1)
        out = backbone(input_ids=ids, past_key_values=cache, position_ids=positions, **routed)
    else:
        out = backbone(input_ids=ids, **routed)
    if routed:
        lengths = torch.tensor([len(s) - P for s in seqs], device=device)
        real = (torch.arange(ids.shape[1], device=device)[None] < lengths[:, None]).reshape(-1)  # [B*S], pads out
        router_logits.append(tuple(r[real] for r in out.router_logits))
    hidden = out.last_hidden_state  # [B, S, H]: position P+k of each sequence
    rows_h, rows_t, rows_b = [], [], []
    for b, s in enumerate(seqs):
        js = s.loss_mask.nonzero().squeeze(-1)
        js = js[js >= max(P - 1, 0)]  # targets from P-1 on are per-sequence (P-1 predicts the first suffix token)
        if not js.numel():
            continue
        js_dev = js.to(device)
        if P:
            boundary = js_dev == P - 1
            h = torch.where(boundary[:, None], prefix_hidden[P - 1], hidden[b, (js_dev - P).clamp(min=0)])
        else:
            h = hidden[b, js_dev]
        rows_h.append(h)
        rows_t.append(s.input_ids[js + 1].to(device))
        rows_b.append(torch.full((js.numel(),), b, dtype=torch.long, device=device))
    if rows_h:
        logp = sliced_token_logprobs(lm_head, torch.cat(rows_h), torch.cat(rows_t), slice_len)  # [N]
        per_seq = per_seq - torch.zeros_like(per_seq).index_add(0, torch.cat(rows_b), logp)
    return per_seq, counts
