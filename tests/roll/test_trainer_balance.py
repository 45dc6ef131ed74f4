"""The MoE routers' load-balancing loss in the supervised trainer (`.venv/bin/pytest tests/roll/test_trainer_balance.py`):
the loss is transformers' Switch-Transformer formula taken per layer, the router logits it sees are every token the
sequences hold (no padding; a shared prefix counted once per sequence, as in separate rows), and the trainer adds it with the configured weight, so that a
router that a few experts took over is pulled back towards even shares.
"""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import make_sequences, small_model_dir

from roll.trainer import SupervisedTrainer, TrainerConfig
from roll.trainer.forward import MicroBatch, common_prefix_len, load_balancing_loss, microbatch_nll
from roll.trainer.trainer import router_aux_coef


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return small_model_dir(tmp_path_factory.mktemp("models"))


def test_one_layer_is_transformers_formula_and_layers_are_not_pooled():
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    g = torch.Generator().manual_seed(0)
    layer = torch.randn(50, 8, generator=g)
    ours = load_balancing_loss([(layer,)], top_k=2)
    assert torch.allclose(ours, load_balancing_loss_func((layer,), num_experts=8, top_k=2), atol=1e-6)
    even = torch.zeros(64, 4).scatter_(1, torch.arange(64)[:, None] % 4, 5.0)  # tokens spread over 4 experts
    assert load_balancing_loss([(even,)], top_k=1).item() == pytest.approx(1.0, abs=1e-3)  # k when even
    # Two layers lopsided towards different experts: pooled they look even, per layer they are not.
    a = torch.tensor([[9.0, 0, 0, 0]]).repeat(32, 1)
    b = torch.tensor([[0, 9.0, 0, 0]]).repeat(32, 1)
    pooled = load_balancing_loss_func((a, b), num_experts=4, top_k=1)
    per_layer = load_balancing_loss([(a, b)], top_k=1)
    assert per_layer.item() > 3.9 and pooled.item() < per_layer.item() - 1.5


def _routers_alone(model, seqs) -> list[tuple[torch.Tensor, ...]]:
    """Each sequence alone, unpadded, all its tokens routed."""
    return [model.get_decoder()(input_ids=s.input_ids[None], output_router_logits=True).router_logits for s in seqs]


@pytest.mark.parametrize("shared", [False, True])
def test_router_logits_are_those_of_separate_rows(model_dir, shared):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64, experts_implementation="eager")
    seqs = make_sequences(4, prefix_len=40, seed=5)  # different lengths: the shorter ones are padded
    P = common_prefix_len(seqs) if shared else 0
    routers: list = []
    with torch.no_grad():
        microbatch_nll(model, MicroBatch(list(range(4)), seqs, P), slice_len=7, router_logits=routers)
        alone = _routers_alone(model, seqs)
    assert len({len(s) for s in seqs}) > 1 and P == (40 if shared else 0)
    rows = sum(r[0].shape[0] for r in routers)
    assert rows == sum(len(s) for s in seqs)  # no pads; the prefix, computed once, counted once per sequence
    got, want = load_balancing_loss(routers, 2), load_balancing_loss(alone, 2)
    assert torch.allclose(got, want, atol=1e-9)


def test_coefficient_follows_the_model_config_unless_set():
    class Moe:
        num_experts, num_experts_per_tok, router_aux_loss_coef = 8, 2, 0.001

    class Dense:
        router_aux_loss_coef = 0.5

    assert router_aux_coef(TrainerConfig(), Moe()) == 0.001
    assert router_aux_coef(TrainerConfig(router_aux_coef=0.02), Moe()) == 0.02
    assert router_aux_coef(TrainerConfig(router_aux_coef=0.0), Moe()) == 0.0
    assert router_aux_coef(TrainerConfig(router_aux_coef=0.02), Dense()) == 0.0


@pytest.mark.slow
def test_trainer_pulls_a_lopsided_router_towards_even_shares(model_dir, tmp_path):
    seqs = make_sequences(8, prefix_len=40)
    base = dict(batch_sequences=4, lr=1e-2, schedule="constant", min_shared_prefix=16, progress=False)
    rows: dict[float, list[dict]] = {}
    for coef in (0.0, 1.0):
        trainer = SupervisedTrainer(model_dir, TrainerConfig(router_aux_coef=coef, **base), tmp_path / f"run-{coef}")
        with torch.no_grad():  # every router sends every token to experts 0 and 1: a feature that is always on
            trainer.model.model.embed_tokens.weight[:, 0] = 3.0
            for layer in trainer.model.model.layers:
                layer.mlp.gate.weight.zero_()
                layer.mlp.gate.weight[:2, 0] = 0.3
        rows[coef] = []
        trainer.fit(seqs, steps=30, on_step=rows[coef].append)
    assert all("router_balance" not in r for r in rows[0.0])
    first, last = rows[1.0][0]["router_balance"], rows[1.0][-1]["router_balance"]
    assert first > 3.0  # two of four experts take everything: near E = 4
    assert last < 2.5 and last < first - 1.0  # k = 2 is even
