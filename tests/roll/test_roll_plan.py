"""`roll plan` arithmetic and verdicts: `.venv/bin/pytest tests/roll/test_roll_plan.py`."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from roll.config import ConfigError
from roll.plan import kv_bytes_per_token, load_plan_config, plan, train_state_bytes

RECIPE = Path(__file__).resolve().parents[2] / "configs/rl/rome-30b-a3b.yaml"


def test_kv_bytes_per_token_of_rome_30b_layout():
    hf = SimpleNamespace(num_hidden_layers=48, num_key_value_heads=4, head_dim=128)
    assert kv_bytes_per_token(hf) == 2 * 48 * 4 * 128 * 2  # K and V, bf16


def test_train_state_partitioning_by_zero_stage():
    p, n = 1000, 10
    assert train_state_bytes(p, 1, n) == {
        "weights (bf16)": 2000,
        "gradients (bf16)": 2000,
        "optimizer (fp32 master+Adam)": 1200,
    }
    assert train_state_bytes(p, 2, n)["gradients (bf16)"] == 200
    assert train_state_bytes(p, 3, n)["weights (bf16)"] == 200


@pytest.mark.slow
def test_recipe_fits_and_a_starved_one_does_not():
    out = plan(load_plan_config(RECIPE))
    assert "params total 30.5" in out and out.endswith("verdict: fits")
    starved = plan(load_plan_config(RECIPE, ["train.gpus=2", "train.zero_stage=1"]))
    assert "DOES NOT FIT" in starved and starved.endswith("verdict: does not fit")


def test_bad_recipe_key_is_named():
    with pytest.raises(ConfigError, match=r"cluster\.gpus: Extra inputs"):
        load_plan_config(RECIPE, ["cluster.gpus=3"])
