"""The supervised trainer's settings (`.venv/bin/pytest tests/roll/test_trainer_sft.py -k schedule`).

One pydantic model, `extra="forbid"`: a misspelt key is an error naming it. `lr_at` is the whole learning-rate
schedule, a pure function of the step: its state is the step count, so a resumed run lands on the same curve.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainerConfig(BaseModel):
    """How `SupervisedTrainer` trains: device, ZeRO stage, optimizer, batch shape, checkpoints."""

    model_config = ConfigDict(extra="forbid")

    device: Literal["cpu", "cuda"] = Field("cpu", description="cpu: DeepSpeed's CPU accelerator + gloo; cuda: NCCL")
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="auto: float32 on cpu, bfloat16 on cuda")
    lr: float = Field(3e-4, gt=0)
    min_lr: float = Field(0.0, ge=0, description="the cosine schedule's floor")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up from 0 over this many optimizer steps")
    schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, ge=0, description="global grad-norm clip; 0 turns it off")
    batch_sequences: int = Field(8, ge=1, description="sequences per optimizer step")
    micro_batch_tokens: int = Field(
        4096, ge=1, description="padded-token budget of one forward/backward; a step accumulates as many as it needs"
    )
    logprob_slice: int = Field(
        1024, ge=1, description="tokens per lm_head slice: [tokens x vocab] never exists at once"
    )
    shared_prefix: bool = Field(
        True, description="compute a prefix shared by a micro-batch's sequences once (not under ZeRO-3)"
    )
    min_shared_prefix: int = Field(64, ge=1, description="shorter common prefixes are not worth the second forward")
    router_aux_coef: float | None = Field(
        None,
        ge=0,
        description="weight of the MoE routers' load-balancing loss (per layer, mean over layers); None:"
        " the model config's router_aux_loss_coef (0.001 for Qwen3-MoE); 0 or a dense model: none",
    )
    seed: int = 0
    max_bad_steps: int = Field(3, ge=1, description="this many NaN/Inf steps in a row stop the run")
    checkpoint_every: int = Field(0, ge=0, description="optimizer steps between checkpoints; 0: only at the end")
    keep_checkpoints: int = Field(2, ge=1, description="the newest this many checkpoints are kept")
    log_every: int = Field(1, ge=1, description="steps between TensorBoard/metrics rows")
    progress: bool = Field(True, description="a rich progress bar on stderr")

    @model_validator(mode="after")
    def _check(self) -> TrainerConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} is above lr {self.lr}")
        if self.dtype == "bfloat16" and self.device == "cpu":
            raise ValueError("dtype bfloat16 is for device cuda; on cpu the trainer runs float32")
        return self

    @property
    def torch_dtype(self) -> str:
        if self.dtype == "auto":
            return "bfloat16" if self.device == "cuda" else "float32"
        return self.dtype


def lr_at(cfg: TrainerConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of a run of `total_steps` steps.

    Linear warm-up to `lr`, then constant or a cosine decay that reaches `min_lr` exactly at the last step:
    `total_steps` is the number of optimizer steps the run really takes, so the decay is not cut short.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    decay_steps = max(1, total_steps - cfg.warmup_steps - 1)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))
