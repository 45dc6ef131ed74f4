"""Validated run configuration. `roll train configs/rl/tiny-cpu.yaml train.iterations=1` shows the layering.

Layers: the YAML file, then dotted `key=value` overrides from the command line (values parsed as YAML
scalars, so `train.lr=1e-5` is a float and `agent.max_turns=2` an int). One pydantic model per component,
`extra="forbid"` so that a misspelt key is an error naming it, not a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from roll.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    """The initial policy: an existing HF dir, or one `rome.init.init_model` creates when it is missing."""

    dir: Path = Field(description="HF model dir of the initial policy; created with rome init when missing")
    init_config: str = Field("tiny", description="rome config name used when the dir must be created")
    init_seed: int = Field(0, description="seed of rome init")


class InferenceConfig(_Strict):
    """The inference worker: rome's OpenAI-compatible server inside a Ray actor."""

    engine: Literal["vllm", "hf"] = "vllm"
    kvcache_gb: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE for the CPU build of vLLM")
    startup_timeout_s: float = Field(600, gt=0)


class SandboxConfig(_Strict):
    """The ROCK sandboxes the agent runs in (each task names its own image)."""

    iflow_mount: str = Field("/opt/ale/iflow_cli", description="where the iflow_cli source is mounted read-only")
    create_timeout_s: float = Field(120, gt=0)


class AgentConfig(_Strict):
    """How iflow runs inside each sandbox."""

    max_turns: int = Field(3, ge=1)
    max_tokens: int = Field(64, ge=1, description="IFLOW_MAX_TOKENS: cap on each completion")
    timeout_s: float = Field(300, gt=0, description="wall-clock limit of one agent run")


class TasksConfig(_Strict):
    """The suite families the rollouts draw from (their train split; see `roll tasks list`)."""

    families: list[str] = Field(["create_file"], min_length=1, description="names in roll.tasks.suite.FAMILIES")
    train_per_family: int = Field(8, ge=1, description="train instances generated per family (seeds 0, 1, ...)")
    seed: int = Field(0, description="seed of the choice of tasks per iteration")

    @field_validator("families")
    @classmethod
    def _known(cls, families: list[str]) -> list[str]:
        try:
            from roll.tasks.suite import FAMILIES
        except ImportError:  # the suite is not installed: the run fails later, naming it
            return families
        unknown = [f for f in families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown task families {unknown}; known: {', '.join(sorted(FAMILIES))}")
        return families


class RolloutConfig(_Strict):
    """How many attempts per iteration: `tasks_per_iteration` tasks, each tried `group_size` times."""

    tasks_per_iteration: int = Field(2, ge=1)
    group_size: int = Field(2, ge=1, description="attempts per task; the advantage baseline is their mean")
    oracle_per_group: int = Field(
        0, ge=0, description="of each group, this many attempts are played by the oracle teacher (a replayed "
        "success): trained as reference chunks, sampled by no policy (ratio 1, never mismatch-masked)"
    )  # fmt: skip

    @model_validator(mode="after")
    def _policy_left(self) -> RolloutConfig:
        if self.oracle_per_group >= self.group_size:
            raise ValueError(f"oracle_per_group {self.oracle_per_group} leaves no policy attempt in a group of "
                             f"{self.group_size}")  # fmt: skip
        return self


class IPAConfig(_Strict):
    """IPA's knobs (roll/algo/ipa.py): chunk-level returns, the mismatch mask, the negative term's weight."""

    gamma: float = Field(0.95, gt=0.0, le=1.0, description="per-chunk discount of the terminal reward")
    neg_weight: float = Field(1.0, ge=0.0, description="weight of failed trajectories' truncated term")
    ratio_low: float = Field(0.5, ge=0.0, le=1.0, description="chunks with ratio below this are masked (mismatch)")
    ratio_high: float = Field(2.0, ge=1.0, description="chunks with ratio above this are masked (mismatch)")
    normalize_std: bool = Field(False, description="divide group advantages by the group's std")


class TrainConfig(_Strict):
    """The DeepSpeed trainer and the loop around it."""

    iterations: int = Field(2, ge=1)
    algorithm: Literal["ipa", "grpo", "ppo"] = Field(
        "ipa", description="ipa (chunk-level), or token-level grpo / ppo over the same rollouts"
    )
    ipa: IPAConfig = IPAConfig()
    lr: float = Field(1e-4, gt=0)
    clip_low: float = Field(0.2, ge=0, lt=1, description="grpo/ppo: token ratio clipped to [1-low, 1+high]")
    clip_high: float = Field(0.28, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    max_skipped_steps: int = Field(3, ge=1, description="NaN/Inf losses in a row that stop the run")
    zero_stage: Literal[0, 1, 2] = 2
    seed: int = 0


class RunConfig(_Strict):
    """A whole `roll train` run; outputs go to `<runs_dir>/<name>/`."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    runs_dir: Path = Path("runs")
    model: ModelConfig
    inference: InferenceConfig = InferenceConfig()
    sandbox: SandboxConfig = SandboxConfig()
    agent: AgentConfig = AgentConfig()
    tasks: TasksConfig = TasksConfig()
    rollout: RolloutConfig = RolloutConfig()
    train: TrainConfig = TrainConfig()

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name


def apply_override(data: dict, override: str) -> None:
    """Set `a.b.c=value` in the nested dict `data`; the value is parsed as a YAML scalar."""
    key, sep, raw = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {override!r} is not of the form key.sub=value")
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    node[leaf] = yaml.safe_load(raw) if raw else ""


def load_config(path: str | Path, overrides: list[str] = (), schema: type[M] | None = None) -> M:
    """Read the YAML file, apply the overrides, validate against `schema` (default RunConfig);
    every failure is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    for override in overrides:
        apply_override(data, override)
    try:
        return (schema or RunConfig).model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"{path}: {problems}") from e
