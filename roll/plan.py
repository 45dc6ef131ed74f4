"""Memory and device plan of a cluster recipe: `roll plan configs/rl/rome-30b-a3b.yaml`.

Parameter counts come from building the model on the meta device (rome.info); the rest is arithmetic
on bytes per parameter and per token, so the plan can be checked on a laptop before a cluster is booked.
Inference engines and trainers run apart (disaggregated), each on its own devices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from roll.config import load_config

GiB = 2**30


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClusterSpec(_Strict):
    nodes: int = Field(ge=1)
    gpus_per_node: int = Field(ge=1)
    gpu_memory_gib: float = Field(gt=0)


class InferencePlan(_Strict):
    gpus: int = Field(ge=1, description="devices given to vLLM engines")
    tensor_parallel: int = Field(1, ge=1, description="devices per engine")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int = Field(gt=0)


class TrainPlan(_Strict):
    gpus: int = Field(ge=1, description="devices given to DeepSpeed trainers")
    zero_stage: Literal[1, 2, 3] = 3
    micro_batch_tokens: int = Field(gt=0, description="tokens per device per micro-batch (packed sequences)")
    logits_slice_tokens: int = Field(4096, gt=0, description="logprobs are computed in slices of this many tokens")
    memory_headroom: float = Field(0.9, gt=0, le=1, description="fraction of device memory the plan may use")


class PlanConfig(_Strict):
    name: str
    model: str = Field(description="rome config name or HF dir")
    cluster: ClusterSpec
    inference: InferencePlan
    train: TrainPlan


def load_plan_config(path: str | Path, overrides: list[str] = ()) -> PlanConfig:
    return load_config(path, overrides, schema=PlanConfig)


def kv_bytes_per_token(hf) -> int:
    """K and V of every layer in bf16."""
    return 2 * hf.num_hidden_layers * hf.num_key_value_heads * hf.head_dim * 2


def train_state_bytes(total_params: int, zero_stage: int, n: int) -> dict[str, float]:
    """bf16 weights and gradients, fp32 master weights and Adam moments (12 B/param), by ZeRO stage."""
    weights = 2 * total_params / (n if zero_stage >= 3 else 1)
    grads = 2 * total_params / (n if zero_stage >= 2 else 1)
    optimizer = 12 * total_params / n
    return {"weights (bf16)": weights, "gradients (bf16)": grads, "optimizer (fp32 master+Adam)": optimizer}


def activation_bytes(hf, tokens: int, slice_tokens: int) -> dict[str, float]:
    """With activation checkpointing: the saved layer inputs, one layer's working set, the logits slice."""
    h, d = hf.hidden_size, hf.head_dim
    q, kv = hf.num_attention_heads * d, hf.num_key_value_heads * d
    checkpoints = hf.num_hidden_layers * tokens * h * 2
    # one layer recomputed: q/k/v/o projections, routed experts (gate, up, down), residuals; x2 for grads
    per_token = q * 2 + 2 * kv + hf.num_experts_per_tok * 3 * hf.moe_intermediate_size + 4 * h + hf.num_experts
    working = 2 * tokens * per_token * 2
    logits = min(tokens, slice_tokens) * hf.vocab_size * 4 * 2  # fp32 logits and their grad
    return {"activation checkpoints": checkpoints, "one layer recomputed": working, "logits slice (fp32)": logits}


def plan(cfg: PlanConfig) -> str:
    from rome.configs import hf_config_for
    from rome.info import model_info

    info, hf = model_info(cfg.model), hf_config_for(cfg.model)
    total_gpus = cfg.cluster.nodes * cfg.cluster.gpus_per_node
    mem = cfg.cluster.gpu_memory_gib * GiB
    lines = [f"plan {cfg.name}: {cfg.model}",
             f"  params total {info.total_params / 1e9:.2f}B, active per token {info.active_params / 1e9:.2f}B",
             f"  cluster {cfg.cluster.nodes} x {cfg.cluster.gpus_per_node} GPUs of {cfg.cluster.gpu_memory_gib:g} GiB "
             f"= {total_gpus}; inference {cfg.inference.gpus}, train {cfg.train.gpus}"]  # fmt: skip
    ok = cfg.inference.gpus + cfg.train.gpus <= total_gpus
    if not ok:
        lines.append(f"  DOES NOT FIT: {cfg.inference.gpus + cfg.train.gpus} GPUs asked, {total_gpus} present")

    inf = cfg.inference
    engines = inf.gpus // inf.tensor_parallel
    weights = 2 * info.total_params / inf.tensor_parallel
    kv_budget = mem * inf.gpu_memory_utilization - weights
    kv_tok = kv_bytes_per_token(hf) / inf.tensor_parallel
    seqs = kv_budget / (kv_tok * inf.max_model_len)
    lines += [f"  inference: {engines} vLLM engines x TP{inf.tensor_parallel}, per GPU:",
              f"    weights (bf16)            {weights / GiB:8.2f} GiB",
              f"    KV cache budget           {kv_budget / GiB:8.2f} GiB = {kv_budget / kv_tok:,.0f} tokens "
              f"({kv_tok / 1024:.0f} KiB/token) = {seqs:.1f} full {inf.max_model_len}-token contexts"]  # fmt: skip
    if kv_budget <= 0 or seqs < 1:
        ok = False
        lines.append("    DOES NOT FIT: not one full context per engine")

    tr = cfg.train
    parts = train_state_bytes(info.total_params, tr.zero_stage, tr.gpus)
    if tr.zero_stage == 3:
        # ZeRO-3 gathers the full parameters of the layer it runs and prefetches the next one
        per_layer = (info.total_params - 2 * hf.vocab_size * hf.hidden_size) / hf.num_hidden_layers
        parts["gathered layers (bf16, 2)"] = 2 * 2 * per_layer
    parts.update(activation_bytes(hf, tr.micro_batch_tokens, tr.logits_slice_tokens))
    used = sum(parts.values())
    lines.append(f"  train: DeepSpeed ZeRO-{tr.zero_stage} over {tr.gpus} GPUs, {tr.micro_batch_tokens} tokens "
                 f"per micro-batch, per GPU:")  # fmt: skip
    lines += [f"    {k:<30}{v / GiB:8.2f} GiB" for k, v in parts.items()]
    budget = mem * tr.memory_headroom
    lines.append(f"    {'total':<30}{used / GiB:8.2f} GiB of {budget / GiB:.2f} GiB usable")
    if used > budget:
        ok = False
        lines.append("    DOES NOT FIT: raise zero_stage or train.gpus, or lower micro_batch_tokens")
    lines.append(f"  verdict: {'fits' if ok else 'does not fit'}")
    return "\n".join(lines)


def print_plan(cfg: PlanConfig) -> None:
    print(plan(cfg))
