"""Config layering and its errors: `.venv/bin/pytest tests/roll/test_roll_config.py`."""

from pathlib import Path

import pytest
from pydantic import BaseModel

from roll.config import ConfigError, RunConfig, load_config

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs/rl/tiny-cpu.yaml"
RECIPE = REPO / "configs/rl/rome-30b-a3b.yaml"


def test_embedded_default_loads():
    cfg = load_config(TINY)
    assert cfg.device == "cpu" and cfg.train.iterations >= 1
    assert cfg.rollout.tasks_per_iteration * cfg.rollout.group_size <= 16  # sandboxes a 2-core iteration can hold


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
    with pytest.raises(ConfigError, match=r"train\.iteratons: unknown key"):
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


def test_unknown_keys_name_the_allowed_ones():
    with pytest.raises(ConfigError) as e:
        load_config(TINY, ["train.iteratons=1", "cluster.gpus=3", "inference.tp=2", "bogus=1"])
    msg = str(e.value)
    assert "train.iteratons: unknown key (allowed: iterations," in msg and "zero_stage" in msg
    assert (
        "cluster.gpus: unknown key (allowed: nodes, gpus_per_node, gpu_memory_gib, host_memory_gib, ray_address)" in msg
    )
    assert "inference.tp: unknown key (allowed: engine, engines, tensor_parallel," in msg
    assert "bogus: unknown key (allowed: name, runs_dir, device, cluster, model," in msg
    assert "\n" not in msg


def _models(model: type[BaseModel], seen: set) -> set:
    from roll.config import _model_in

    if model in seen:
        return seen
    seen.add(model)
    for field in model.model_fields.values():
        if sub := _model_in(field.annotation):
            _models(sub, seen)
    return seen


def test_every_section_of_the_run_schema_forbids_unknown_keys():
    models = _models(RunConfig, set())
    assert {"ClusterConfig", "InferenceConfig", "TrainConfig", "ModelConfig"} <= {m.__name__ for m in models}
    loose = [m.__name__ for m in models if m.model_config.get("extra") != "forbid"]
    assert not loose, f"config sections that accept unknown keys: {loose}"


def test_the_30b_recipe_is_a_run_config_with_zero_3():
    cfg = load_config(RECIPE)
    assert cfg.device == "cuda" and cfg.train.zero_stage == 3
    assert cfg.cluster.ray_address == "auto"  # joins the cluster `ray start` / KubeRay made
    assert cfg.cluster.nodes * cfg.cluster.gpus_per_node >= (
        cfg.inference.engines * cfg.inference.tensor_parallel + cfg.train.workers
    )


def test_the_cpu_default_keeps_its_defaults():
    cfg = load_config(TINY)
    assert cfg.device == "cpu" and cfg.cluster.gpus_per_node == 0 and cfg.cluster.ray_address is None
    assert (cfg.inference.engines, cfg.inference.tensor_parallel, cfg.train.workers) == (1, 1, 1)
    assert cfg.train.zero_stage == 2 and not cfg.train.offload_optimizer


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["device=cuda"], "device cuda needs cluster.gpus_per_node >= 1"),
        (["inference.tensor_parallel=2"], "tensor_parallel and expert_parallel are for device cuda"),
        (["train.offload_optimizer=true"], "offload_optimizer is for device cuda"),
        (["train.zero_stage=4"], r"train\.zero_stage: Input should be 0, 1, 2 or 3"),
        (["device=tpu"], r"device: Input should be 'cpu' or 'cuda'"),
    ],
)
def test_device_rules(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, overrides)


def test_in_flight_cap_is_a_batch_per_version_the_staleness_allows_unless_given():
    cfg = RunConfig.model_validate({"name": "x", "model": {"dir": "m"},
                                    "rollout": {"tasks_per_iteration": 4, "group_size": 2},
                                    "train": {"mode": "async", "max_staleness": 4.5}})  # fmt: skip
    assert cfg.in_flight_cap == (4 + 1) * 4 * 2
    assert cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_in_flight": 24})}).in_flight_cap == 24
