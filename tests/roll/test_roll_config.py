"""Config layering and its errors: `.venv/bin/pytest tests/roll/test_roll_config.py`."""

from pathlib import Path

import pytest

from roll.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs/rl/tiny-cpu.yaml"


def test_embedded_default_loads():
    cfg = load_config(TINY)
    assert cfg.train.iterations == 2
    assert cfg.rollout.tasks_per_iteration * cfg.rollout.group_size == 4  # the skeleton's 4 sandboxes
    assert 64 <= cfg.agent.max_tokens <= 128


def test_dotted_overrides_are_typed_and_win_over_the_file():
    cfg = load_config(TINY, ["train.iterations=1", "train.lr=1e-5", "inference.engine=hf", "name=x"])
    assert cfg.train.iterations == 1
    assert cfg.train.lr == 1e-5
    assert cfg.inference.engine == "hf"
    assert cfg.run_dir == Path("runs/x")


def test_missing_file_is_named():
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.iteratons: Extra inputs are not permitted"):
        load_config(TINY, ["train.iteratons=1"])


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"train\.iterations: Input should be greater than or equal to 1"):
        load_config(TINY, ["train.iterations=0"])


def test_malformed_override():
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(TINY, ["train.iterations"])


def test_invalid_yaml_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "invalid YAML" in str(e.value) and "\n" not in str(e.value)
