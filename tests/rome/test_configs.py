"""Configs and `rome info`: .venv/bin/pytest tests/rome/test_configs.py"""

from __future__ import annotations

import pytest

from rome.cli import main
from rome.configs import known_configs, load_config
from rome.errors import UnknownConfigError
from rome.info import model_info


def test_30b_a3b_counts_match_the_published_sizes():
    info = model_info("rome-30b-a3b")
    assert abs(info.total_params - 30.5e9) / 30.5e9 <= 0.02
    assert abs(info.active_params - 3.3e9) / 3.3e9 <= 0.05
    assert info.bf16_bytes == 2 * info.total_params


def test_30b_a3b_layout():
    cfg = load_config("ROME-30B-A3B").to_hf()
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_experts, cfg.num_experts_per_tok) == (48, 2048, 128, 8)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size) == (32, 4, 128, 151936)
    assert cfg.moe_intermediate_size == 768


def test_tiny_is_small_and_has_a_long_context():
    info = model_info("tiny")
    assert 5e6 < info.total_params < 10e6
    assert info.active_params < info.total_params
    assert load_config("rome-tiny").max_position_embeddings == 8192


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownConfigError) as e:
        load_config("rome-999b")
    for name in known_configs():
        assert name in str(e.value)


def test_config_rejects_unknown_fields(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(load_config("tiny").model_dump_json().replace('"name"', '"nme"'))
    with pytest.raises(ValueError):
        load_config(str(bad))


def test_cli_info_and_bad_name(capsys):
    assert main(["info", "rome-30b-a3b"]) == 0
    assert "30.53B" in capsys.readouterr().out
    assert main(["info", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rome-tiny" in err and "rome-30b-a3b" in err


def test_cli_info_on_a_saved_model_dir(tiny_dir, capsys):
    assert main(["info", str(tiny_dir)]) == 0
    assert f"{model_info('tiny').total_params:,}" in capsys.readouterr().out
