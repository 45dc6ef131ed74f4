"""Packed chunk training: one sequence per trajectory where prompts extend each other
(`.venv/bin/pytest tests/roll/test_algo_packing.py`).

An agent's model call k+1 usually sends everything call k saw and said, plus the tool result: its prompt
starts with chunk k's prompt + response. Training one row per chunk recomputes that shared prefix for every
chunk (quadratic in the turns); packing trains the whole trajectory as ONE causal sequence with the loss on
the model's own response tokens only. The logprob of every response token is the same either way (same
prefix, same positions), so the loss is identical and only the work differs. Where a prompt does not extend
the sequence (the agent's context compression rewrote history, or the chat template re-rendered the last
answer differently from the sampled tokens) a new sequence starts.

Alignment as in `batch.py`: position j of the logits predicts token j+1, so per-token tensors are [L-1], aligned
to the targets `input_ids[1:]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rock.contracts import Chunk


class PackingError(ValueError):
    """A chunk that cannot be trained: names the trajectory, the chunk and what is wrong."""

    def __init__(self, trajectory_id: str, index: int, message: str):
        self.trajectory_id, self.index = trajectory_id, index
        super().__init__(f"trajectory {trajectory_id} chunk {index}: {message}")


# What one more micro-batch costs beyond its padded tokens, in tokens: ROME-tiny on 2 CPU cores spends ~22 ms on
# a forward and backward of almost nothing, the time of ~120 tokens at its 5,400 tokens/s (measured in session 8).
MICROBATCH_OVERHEAD_TOKENS = 128


@dataclass
class PackedSequence:
    trajectory_id: str
    input_ids: torch.Tensor  # [L] long
    loss_mask: torch.Tensor  # [L-1] bool: the target is one of the model's own response tokens
    chunk_ids: torch.Tensor  # [L-1] long: position in `chunk_indices` of the target's chunk, −1 off-response
    old_logprobs: torch.Tensor  # [L-1] float32: the sampler's logprob of each response target, 0 elsewhere
    chunk_indices: list[int]  # the `Chunk.index` of each local chunk id

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def untrainable_reason(chunk: Chunk) -> str | None:
    """Why a recorded chunk cannot be trained (an aborted call, a model that returned no token ids), or None.

    Callers filter such chunks out before `pack_trajectory`. The chunk after a dropped one still packs where its
    prompt extends the sequence: the dropped call's answer is then context in its prompt, without loss.
    """
    prompt, response, logprobs = chunk.prompt_token_ids, chunk.response_token_ids, chunk.response_logprobs
    if not prompt:
        return "no prompt_token_ids recorded"
    if not response:
        return "no response_token_ids recorded"
    if logprobs is None or len(logprobs) != len(response):
        return f"{'no' if logprobs is None else len(logprobs)} response_logprobs for {len(response)} response tokens"
    return None


def _check(chunk: Chunk) -> None:
    reason = untrainable_reason(chunk)
    if reason:
        raise PackingError(chunk.trajectory_id, chunk.index, reason)


def pack_trajectory(chunks: Sequence[Chunk], pack: bool = True) -> list[PackedSequence]:
    """The chunks of one trajectory (any order; sorted by `index`) as packed sequences.

    Chunk k+1 joins the current sequence when its prompt starts with the whole sequence so far (chunk k's
    prompt + response); its new prompt tokens (tool results, the next user turn) carry no loss, its response
    tokens do. `pack=False` gives one sequence per chunk, the unpacked layout to compare against.
    """
    ordered = sorted(chunks, key=lambda c: c.index)
    if len({c.trajectory_id for c in ordered}) > 1:
        raise ValueError(f"chunks of several trajectories given: {sorted({c.trajectory_id for c in ordered})}")
    sequences: list[PackedSequence] = []
    tokens: list[int] = []
    targets_info: list[tuple[int, float]] = []  # per target position: (local chunk id or −1, old logprob)
    local: list[int] = []
    seen: set[int] = set()

    def close() -> None:
        if tokens:
            ids = torch.tensor([cid for cid, _ in targets_info], dtype=torch.long)
            sequences.append(
                PackedSequence(
                    trajectory_id=ordered[0].trajectory_id,
                    input_ids=torch.tensor(tokens, dtype=torch.long),
                    loss_mask=ids >= 0,
                    chunk_ids=ids,
                    old_logprobs=torch.tensor([lp for _, lp in targets_info], dtype=torch.float32),
                    chunk_indices=list(local),
                )
            )

    for chunk in ordered:
        _check(chunk)
        if chunk.index in seen:
            raise PackingError(chunk.trajectory_id, chunk.index, "index appears twice")
        seen.add(chunk.index)
        prompt, response = chunk.prompt_token_ids, chunk.response_token_ids
        extends = pack and tokens and len(prompt) >= len(tokens) and prompt[: len(tokens)] == tokens
        if not extends:
            close()
            tokens, targets_info, local = [], [], []
            new_prompt = prompt
        else:
            new_prompt = prompt[len(tokens) :]
        # A target at position j is token j+1: the first token of a sequence is never a target.
        targets_info.extend((-1, 0.0) for _ in range(len(new_prompt) - (0 if tokens else 1)))
        cid = len(local)
        local.append(chunk.index)
        targets_info.extend((cid, float(lp)) for lp in chunk.response_logprobs)
        tokens = tokens + list(new_prompt) + list(response)
    close()
    return sequences


def budget_microbatches(
    sequences: Sequence[PackedSequence | int], max_tokens: int, overhead: int = MICROBATCH_OVERHEAD_TOKENS
) -> list[list[int]]:
    """Partition the sequences (or their lengths) into micro-batches of at most `max_tokens` padded tokens.

    A micro-batch is padded to its longest member, so its cost is count × longest, plus `overhead` tokens' worth
    for the forward and backward themselves. With the sequences sorted longest first, the micro-batches are the
    runs of that order of least total cost (an exact dynamic programme over the cut points): short sequences are
    not padded to the longest of the step when a cut is cheaper than the padding, and no cut is made that costs
    more than it saves. A sequence longer than the budget alone is its own micro-batch. Every index appears
    exactly once (one optimizer step = all of them, accumulated: nothing duplicated or dropped to make sizes
    divide). Returns lists of indices into `sequences`, each list in ascending order, longest micro-batch first.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if overhead < 0:
        raise ValueError(f"overhead must be >= 0, got {overhead}")
    lengths = [s if isinstance(s, int) else len(s) for s in sequences]
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    n = len(order)
    # best[i]: (cost, micro-batches) of the first i of `order`; cut[i]: where the last micro-batch starts
    best: list[tuple[int, int]] = [(0, 0)] * (n + 1)
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        candidates = []
        for j in range(i - 1, -1, -1):
            longest = lengths[order[j]]  # sorted: the first of the run is its longest
            if i - j > 1 and (i - j) * longest > max_tokens:
                break  # a longer run starts at a longer sequence: over budget too
            cost, count = best[j]
            candidates.append(((cost + overhead + (i - j) * longest, count + 1), j))
        best[i], cut[i] = min(candidates)
    batches: list[list[int]] = []
    i = n
    while i > 0:
        batches.append(sorted(order[cut[i] : i]))
        i = cut[i]
    return batches[::-1]


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [B, T] long, right-padded
    attention_mask: torch.Tensor  # [B, T] long
    targets: torch.Tensor  # [B, T-1] long = input_ids[:, 1:]
    loss_mask: torch.Tensor  # [B, T-1] float
    chunk_ids: torch.Tensor  # [B, T-1] long, global ids into `chunk_keys`, −1 off-response and on padding
    old_logprobs: torch.Tensor  # [B, T-1] float32
    chunk_keys: list[tuple[str, int]]  # global chunk id -> (trajectory_id, Chunk.index)


def pad_sequences(sequences: Sequence[PackedSequence], pad_id: int = 0) -> PackedBatch:
    """Right-pad sequences into one batch; local chunk ids become global ids, one per (trajectory, index)."""
    if not sequences:
        raise ValueError("no sequences to pad")
    B, T = len(sequences), max(len(s) for s in sequences)
    batch = PackedBatch(
        input_ids=torch.full((B, T), pad_id, dtype=torch.long),
        attention_mask=torch.zeros(B, T, dtype=torch.long),
        targets=torch.empty(0),
        loss_mask=torch.zeros(B, T - 1),
        chunk_ids=torch.full((B, T - 1), -1, dtype=torch.long),
        old_logprobs=torch.zeros(B, T - 1),
        chunk_keys=[],
    )
    key_to_id: dict[tuple[str, int], int] = {}
    for b, s in enumerate(sequences):
        L = len(s)
        batch.input_ids[b, :L] = s.input_ids
        batch.attention_mask[b, :L] = 1
        batch.loss_mask[b, : L - 1] = s.loss_mask.float()
        batch.old_logprobs[b, : L - 1] = s.old_logprobs
        global_ids = []
        for index in s.chunk_indices:
            key = (s.trajectory_id, index)
            if key in key_to_id:
                raise PackingError(s.trajectory_id, index, "is in two sequences of the batch (would count twice)")
            key_to_id[key] = len(batch.chunk_keys)
            batch.chunk_keys.append(key)
            global_ids.append(key_to_id[key])
        if global_ids:
            mapping = torch.tensor(global_ids, dtype=torch.long)
            batch.chunk_ids[b, : L - 1] = torch.where(s.chunk_ids >= 0, mapping[s.chunk_ids.clamp(min=0)], -1)
    batch.targets = batch.input_ids[:, 1:]
    return batch
