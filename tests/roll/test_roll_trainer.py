"""The DeepSpeed step on a tiny random Qwen3-MoE with synthetic chunks: `.venv/bin/pytest tests/roll/test_roll_trainer.py`."""

import pytest
import torch

from rock.contracts import Chunk

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    config = Qwen3MoeConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        head_dim=16, intermediate_size=64, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2,
        max_position_embeddings=128, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny")
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    (out / "tokenizer_config.json").write_text("{}")  # stands for the tokenizer files copied along
    return out


def synthetic_chunks():
    g = torch.Generator().manual_seed(1)
    chunks = []
    for p_len, r_len in ((5, 3), (7, 4), (4, 2), (6, 5)):
        ids = torch.randint(1, 64, (p_len + r_len,), generator=g).tolist()
        chunks.append(
            Chunk(trajectory_id="t", sandbox_id="s", index=len(chunks), prompt_token_ids=ids[:p_len],
                  response_token_ids=ids[p_len:], response_logprobs=[-4.0] * r_len, latency_s=0.0, created_at=0.0)
        )  # fmt: skip
    return chunks


def test_step_changes_weights_and_saved_dir_loads(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from roll.workers.trainer import Trainer

    trainer = Trainer(str(tiny_model_dir), lr=1e-2, zero_stage=2)
    before = {k: v.detach().clone() for k, v in trainer.engine.module.state_dict().items()}
    stats = trainer.step(synthetic_chunks(), [1.0, -1.0, 0.5, -0.5])
    assert stats["grad_norm"] > 0
    assert 0 <= stats["clip_frac"] <= 1
    after = trainer.engine.module.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "lm_head.weight" in changed and len(changed) > len(before) // 2

    saved = trainer.save(str(tmp_path / "policy" / "v1"))
    assert not list((tmp_path / "policy").glob(".*tmp"))
    assert (tmp_path / "policy/v1/tokenizer_config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).state_dict()
    for k in ("lm_head.weight", "model.embed_tokens.weight"):
        assert torch.equal(loaded[k], after[k])

    # zero advantages carry no signal: the loss is exactly 0
    trainer2_stats = trainer.step(synthetic_chunks(), [0.0, 0.0, 0.0, 0.0])
    assert trainer2_stats["loss"] == 0.0
