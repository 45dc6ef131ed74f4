"""Shared by the trainer tests: a small ROME-layout model dir with rome's real tokenizer and chat template,
and synthetic packed sequences that share a long prefix (as every iflow trajectory does)."""

from __future__ import annotations

from pathlib import Path

import torch

from roll.algo.packing import PackedSequence


def small_model_dir(root: Path, hidden: int = 32, seed: int = 0) -> Path:
    """rome init's tokenizer + chat template around a 2-layer Qwen3-MoE small enough for a test's step."""
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    from rome.checkpoint import write_model_dir
    from rome.init import init_model

    rome_dir = root / "rome-tiny"
    if not rome_dir.exists():
        init_model(rome_dir, "tiny")
    config = Qwen3MoeConfig.from_pretrained(rome_dir)
    small = dict(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                 intermediate_size=64, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2)  # fmt: skip
    for key, value in small.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return write_model_dir(root / f"small-{hidden}-{seed}", model, copy_from=rome_dir)


def micro_moe_dir(out: Path, seed: int = 0) -> Path:
    """A 64-token-vocabulary, 2-layer Qwen3-MoE saved to `out` (no tokenizer): for tests of the RL trainer's math."""
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    config = Qwen3MoeConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        head_dim=16, intermediate_size=64, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2,
        max_position_embeddings=128, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return out


def make_sequences(n: int, prefix_len: int = 80, seed: int = 0, vocab: int = 1000) -> list[PackedSequence]:
    """n sequences: a shared `prefix_len`-token prefix, then 8-30 tokens of their own with the loss on them
    (and on a few prefix positions of every second one, so prefix targets are weighted per sequence)."""
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(3, vocab, (prefix_len,), generator=g)
    out = []
    for i in range(n):
        suffix = torch.randint(3, vocab, (int(torch.randint(8, 31, (1,), generator=g)),), generator=g)
        ids = torch.cat([prefix, suffix])
        mask = torch.zeros(len(ids) - 1, dtype=torch.bool)
        mask[prefix_len - 1 + int(i % 3 == 0) :] = True  # some start at the first suffix token, some one later
        if i % 2:
            mask[10:14] = True
        chunk_ids = torch.where(mask, 0, -1)
        out.append(PackedSequence(f"t{i}", ids, mask, chunk_ids, torch.zeros(len(ids) - 1), [0]))
    return out
