"""Recorded chunks -> padded training tensors (`pytest tests/roll/test_roll_algo.py -k collate`).

A chunk (`rock.contracts.Chunk`, or anything with the same attributes) holds `prompt_token_ids`,
`response_token_ids` and `response_logprobs` (the sampler's). The
model sees prompt+response; position t of the logits predicts token t+1, so everything below is
aligned to the shifted targets `input_ids[:, 1:]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the math imports only torch at run time
    from rock.contracts import Chunk


@dataclass
class ChunkBatch:
    input_ids: torch.Tensor  # [B, T] long, right-padded
    attention_mask: torch.Tensor  # [B, T] long
    targets: torch.Tensor  # [B, T-1] long, = input_ids[:, 1:]
    response_mask: torch.Tensor  # [B, T-1] float, 1 where the target is a response token
    old_logprobs: torch.Tensor  # [B, T-1] float, the sampler's logprob of each response target
    advantages: torch.Tensor  # [B] float


def collate_chunks(chunks: list[Chunk], advantages: list[float], pad_id: int = 0) -> ChunkBatch:
    """One row per chunk; `advantages[i]` is the advantage of the trajectory chunk i belongs to."""
    if len(chunks) != len(advantages):
        raise ValueError(f"{len(chunks)} chunks but {len(advantages)} advantages")
    for c in chunks:
        if not c.response_token_ids or len(c.response_token_ids) != len(c.response_logprobs or []):
            raise ValueError(f"chunk {c.index} has no response tokens or mismatched logprobs")
        if not c.prompt_token_ids:
            raise ValueError(f"chunk {c.index} has no prompt token ids")
    lengths = [len(c.prompt_token_ids) + len(c.response_token_ids) for c in chunks]
    B, T = len(chunks), max(lengths)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(B, T, dtype=torch.long)
    response_mask = torch.zeros(B, T - 1)
    old_logprobs = torch.zeros(B, T - 1)
    for b, c in enumerate(chunks):
        p, r = len(c.prompt_token_ids), len(c.response_token_ids)
        input_ids[b, : p + r] = torch.tensor(c.prompt_token_ids + c.response_token_ids)
        attention_mask[b, : p + r] = 1
        # target index j predicts token j+1, so the response tokens p..p+r-1 sit at j = p-1..p+r-2
        response_mask[b, p - 1 : p + r - 1] = 1
        old_logprobs[b, p - 1 : p + r - 1] = torch.tensor(c.response_logprobs, dtype=torch.float32)
    return ChunkBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        targets=input_ids[:, 1:],
        response_mask=response_mask,
        old_logprobs=old_logprobs,
        advantages=torch.tensor(advantages, dtype=torch.float32),
    )
