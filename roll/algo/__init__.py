"""The training math, plain torch over tensors (`pytest tests/roll/test_roll_algo.py`): no Ray, vLLM, DeepSpeed or Docker.

`batch` turns recorded chunks into padded tensors, `logprobs` scores tokens, `advantage` baselines rewards
per task group, `loss` is the chunk-level importance-weighted policy-gradient loss.
"""

from roll.algo.advantage import group_advantages
from roll.algo.batch import ChunkBatch, collate_chunks
from roll.algo.logprobs import token_logprobs
from roll.algo.loss import chunk_ratio, policy_gradient_loss

__all__ = [
    "ChunkBatch",
    "chunk_ratio",
    "collate_chunks",
    "group_advantages",
    "policy_gradient_loss",
    "token_logprobs",
]
