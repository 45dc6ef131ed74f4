"""The CPT and SFT stage configs: `roll cpt configs/cpt/tiny-cpu.yaml steps=10` shows the layering
(`.venv/bin/pytest tests/roll/test_stages.py -k config`).

One pydantic schema per stage, `extra="forbid"`, read by `roll.config.load_config` (YAML file, then dotted
`key=value` overrides): a misspelt key is an error naming it. The pieces the stages share (model, data, eval)
are one model each; the trainer's and the data builders' own configs are embedded as their owners define them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from roll.sft.cpt import CptDataConfig
from roll.sft.sft import SftDataConfig
from roll.trainer.config import TrainerConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _known_families(families: list[str] | None) -> list[str] | None:
    if families is None:
        return None
    from roll.tasks.suite import FAMILIES

    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown task families {unknown}; known: {', '.join(FAMILIES)}")
    return families


class StageModel(_Strict):
    """The model a stage starts from; CPT creates it with rome init when the dir is missing."""

    dir: Path = Field(description="HF model dir the stage starts from")
    init_config: str = Field("tiny", description="rome config name for rome init (CPT, when dir is missing)")
    init_seed: int = Field(0, description="seed of rome init")


class DataConfig(_Strict):
    """The trajectories: an existing dataset (`path`), or one `roll data synth` makes and keeps under `dir`,
    reused while its inputs (suite, families, seeds, teacher, settings) are unchanged."""

    path: Path | None = Field(None, description="an existing synth out dir or .jsonl; skips synthesis")
    dir: Path = Field(Path("runs/data"), description="synthesised datasets live in dir/<hash of the inputs>")
    families: list[str] | None = Field(None, description="training families (default: every trained family)")
    train_per_family: int = Field(32, ge=1, description="train instances per family (seeds 0, 1, ...)")
    teacher: str = Field("oracle", description="oracle, or the URL of an OpenAI-compatible model")
    attempts: int = Field(1, ge=1, description="teacher attempts per task")
    mistake_rate: float = Field(0.2, ge=0, le=1, description="oracle: share of plans with a mistake and its fix")
    seed: int = Field(0, description="oracle: seed of its plans")
    concurrency: int = Field(4, ge=1, description="sandboxes at once")

    @field_validator("families")
    @classmethod
    def _known(cls, families: list[str] | None) -> list[str] | None:
        return _known_families(families)


class EvalConfig(_Strict):
    """Held-out pass rates: the real iflow agent on the model served by rome serve, in sandboxes."""

    enabled: bool = Field(True, description="false: no evaluation (summary.json says so)")
    before: bool = Field(True, description="also measure the model the stage starts from")
    split: str = Field("heldout", pattern="^(heldout|train)$")
    per_family: int = Field(4, ge=1, description="instances per family (held-out seeds 1000, 1001, ...)")
    families: list[str] | None = Field(None, description="default: the data's families")
    heldout_only: bool = Field(True, description="add the held-out-only families (reported apart)")
    engine: str = Field("vllm", pattern="^(vllm|hf)$", description="rome serve engine")
    concurrency: int = Field(4, ge=1)
    max_turns: int = Field(10, ge=1, description="iflow --max-turns")
    max_tokens: int = Field(256, ge=1, description="cap on each completion")
    temperature: float | None = Field(
        0.0, ge=0, le=2, description="sampling temperature; 0 = greedy pass@1 (None: the server's default, 1.0)"
    )

    @field_validator("families")
    @classmethod
    def _known(cls, families: list[str] | None) -> list[str] | None:
        return _known_families(families)


class _Stage(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$", description="outputs go to runs_dir/name/")
    runs_dir: Path = Path("runs")
    model: StageModel
    data: DataConfig = DataConfig()
    trainer: TrainerConfig = TrainerConfig()
    eval: EvalConfig = EvalConfig()

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name


class CptConfig(_Stage):
    """`roll cpt`: continued pre-training on every synthesised trajectory (failures included)."""

    cpt: CptDataConfig = CptDataConfig()
    steps: int = Field(300, ge=1, description="optimizer steps")


class Phase2Config(_Strict):
    """Phase 2: the same set through the adaptive sampler (high-loss samples, weak families, balanced)."""

    steps: int = Field(0, ge=0, description="optimizer steps of phase 2; 0 skips it")
    lr: float | None = Field(None, gt=0, description="default: the trainer's lr")
    pass_rates: bool = Field(True, description="weigh families by the held-out pass rates measured before SFT")


class SftConfig(_Stage):
    """`roll sft`: phase 1 (rule-filtered, masked verified trajectories) then phase 2 (adaptive selection)."""

    sft: SftDataConfig = SftDataConfig()
    steps: int = Field(200, ge=1, description="optimizer steps of phase 1")
    phase2: Phase2Config = Phase2Config()
