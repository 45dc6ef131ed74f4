"""Memory and device plan of a run config: `roll plan configs/rl/rome-30b-a3b.yaml` (or tiny-cpu.yaml).

Reads the same file as `roll train`. Parameter counts come from building the model on the meta device
(rome.info); the rest is arithmetic on bytes per parameter and per token, so a recipe can be checked on a
laptop before a cluster is booked. Inference engines and trainers run apart (disaggregated), each on its
own devices. `make_plan` returns the numbers and the reasons a recipe does not fit; `bench/bench_plan_layer.py`
measures one decoder layer on a device against `layer_bytes`. Tests: `pytest tests/roll/test_roll_plan.py`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from roll.config import RunConfig, load_config
from roll.errors import RollError

GiB = 2**30
# What vLLM keeps beside weights and KV cache on a GPU: the activations of its profiling batch, CUDA graphs,
# NCCL buffers. A round figure until the GPU check (scripts/gpu_checks.sh) measures it.
VLLM_RUNTIME_RESERVE_GIB = 3.0


class PlanError(RollError):
    """A recipe that does not fit its cluster; the message names the resource and by how much."""


@dataclass
class Plan:
    """What `roll plan` prints, plus the numbers tests and the KubeRay manifest check against."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    inference_gpus: int = 0
    train_gpus: int = 0
    inference_gib: dict[str, float] = field(default_factory=dict)  # per GPU (cuda) or per node (cpu)
    train_gib: dict[str, float] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)  # what each node runs

    @property
    def fits(self) -> bool:
        return not self.problems

    def render(self) -> str:
        return "\n".join([*self.lines, f"  verdict: {'fits' if self.fits else 'does not fit'}"])


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    return load_config(path, overrides)


def model_ref(cfg: RunConfig) -> str:
    """The HF dir when it exists, else the rome config the run would create it from."""
    return str(cfg.model.dir) if (cfg.model.dir / "config.json").is_file() else cfg.model.init_config


def kv_bytes_per_token(hf, tensor_parallel: int = 1) -> int:
    """K and V of every layer in bf16 on one GPU; vLLM replicates KV heads when TP exceeds their number."""
    heads = max(1, hf.num_key_value_heads // tensor_parallel)
    return 2 * hf.num_hidden_layers * heads * hf.head_dim * 2


def train_state_bytes(total_params: int, zero_stage: int, n: int, offload_optimizer: bool = False) -> dict[str, float]:
    """Per rank: bf16 weights and gradients, fp32 master weights and Adam moments (12 B/param), by ZeRO stage.
    Stage 0 keeps everything whole; 1 partitions the optimizer state, 2 also gradients, 3 also weights."""
    weights = 2 * total_params / (n if zero_stage >= 3 else 1)
    grads = 2 * total_params / (n if zero_stage >= 2 else 1)
    optimizer = 12 * total_params / (n if zero_stage >= 1 else 1)
    return {
        "weights (bf16)": weights,
        "gradients (bf16)": grads,
        "optimizer (fp32 master+Adam)": 0.0 if offload_optimizer else optimizer,
    }


def layer_params(hf) -> int:
    """Parameters of one decoder layer: attention with q/k norms, two RMSNorms, the router and all experts."""
    h, d = hf.hidden_size, hf.head_dim
    q, kv = hf.num_attention_heads * d, hf.num_key_value_heads * d
    attention = h * q + 2 * h * kv + q * h + 2 * d
    moe = hf.num_experts * h + hf.num_experts * 3 * hf.moe_intermediate_size * h
    return attention + moe + 2 * h


def layer_activation_bytes(hf, tokens: int) -> float:
    """Bytes one decoder layer's bf16 forward saves for its backward (transformers' Qwen3-MoE layer, SDPA).

    Per token: each RMSNorm keeps its fp32 input and bf16 output (6 B/elem); the query path keeps q at
    8 elements' worth (norm fp32+bf16, rope input and rotate_half, SDPA input and output, o_proj input),
    the key path 6 and the value 1; SDPA its fp32 log-sum-exp per head; the router its fp32 softmax and
    top-k indices; every routed (token, expert) pair its gathered input, gate_up output, activation,
    product and down output. Measured against a real layer by bench/bench_plan_layer.py.
    """
    h, d, k, mi = hf.hidden_size, hf.head_dim, hf.num_experts_per_tok, hf.moe_intermediate_size
    q, kv = hf.num_attention_heads * d, hf.num_key_value_heads * d
    norms = 2 * 6 * h
    attention = 16 * q + 12 * kv + 2 * kv + 4 * hf.num_attention_heads
    router = 4 * hf.num_experts + 16 * k
    experts = k * (4 * h + 8 * mi + 18)
    return tokens * (norms + attention + router + experts)


def layer_bytes(hf, tokens: int) -> dict[str, float]:
    """One decoder layer in bf16: its weights and the activations its forward over `tokens` keeps."""
    return {"weights": 2 * layer_params(hf), "activations": layer_activation_bytes(hf, tokens)}


def activation_bytes(hf, tokens: int, slice_tokens: int) -> dict[str, float]:
    """With activation checkpointing: the saved layer inputs, one layer recomputed (its saved tensors and
    their gradients), the fp32 logits of one log-prob slice and their gradient."""
    return {
        "activation checkpoints": hf.num_hidden_layers * tokens * hf.hidden_size * 2,
        "one layer recomputed": 2 * layer_activation_bytes(hf, tokens),
        "logits slice (fp32)": min(tokens, slice_tokens) * hf.vocab_size * 4 * 2,
    }


def _place(cfg: RunConfig) -> tuple[list[str], str | None]:
    """Engines first (an engine's GPUs on one node), then trainer ranks, node by node."""
    inf, per_node = cfg.inference, cfg.cluster.gpus_per_node
    free = [per_node] * cfg.cluster.nodes
    jobs: list[list[str]] = [[] for _ in free]
    for e in range(inf.engines):
        node = next((i for i, f in enumerate(free) if f >= inf.tensor_parallel), None)
        if node is None:
            return [], f"engine {e} of {inf.engines} finds no node with {inf.tensor_parallel} free GPUs"
        free[node] -= inf.tensor_parallel
        jobs[node].append(f"engine {e} (TP{inf.tensor_parallel})")
    ranks = [0] * len(free)
    left = cfg.train.workers
    for i in range(len(free)):
        ranks[i], left = min(free[i], left), left - min(free[i], left)
    if left:
        return [], f"{left} of {cfg.train.workers} trainer ranks find no free GPU"
    start = 0
    for i, r in enumerate(ranks):
        if r:
            jobs[i].append(f"trainer ranks {start}-{start + r - 1}")
            start += r
    return [f"node {i}: {', '.join(j) or 'idle'}" for i, j in enumerate(jobs)], None


def _gib(x: float) -> str:
    return f"{x / GiB:.2f} GiB"


def _table(parts: dict[str, float], indent: str = "    ") -> list[str]:
    return [f"{indent}{k:<32}{v / GiB:8.2f} GiB" for k, v in parts.items()]


def _cuda_plan(cfg: RunConfig, p: Plan, info, hf) -> None:
    cl, inf, tr = cfg.cluster, cfg.inference, cfg.train
    total = cl.nodes * cl.gpus_per_node
    mem = cl.gpu_memory_gib * GiB
    p.inference_gpus, p.train_gpus = inf.engines * inf.tensor_parallel, tr.workers
    p.lines.append(f"  cluster {cl.nodes} x {cl.gpus_per_node} GPUs of {cl.gpu_memory_gib:g} GiB = {total}; "
                   f"inference {p.inference_gpus}, train {p.train_gpus}")  # fmt: skip
    asked = p.inference_gpus + p.train_gpus
    if asked > total:
        p.problems.append(f"GPUs: inference {p.inference_gpus} + train {p.train_gpus} = {asked} asked, {total} "
                          f"present ({cl.nodes} nodes x {cl.gpus_per_node}); short by {asked - total}")  # fmt: skip
    if inf.tensor_parallel > cl.gpus_per_node:
        p.problems.append(f"inference.tensor_parallel {inf.tensor_parallel} exceeds cluster.gpus_per_node "
                          f"{cl.gpus_per_node} (an engine's GPUs share a node)")  # fmt: skip
    if inf.expert_parallel and hf.num_experts % inf.tensor_parallel:
        p.problems.append(f"inference.expert_parallel: {hf.num_experts} experts do not split over "
                          f"{inf.tensor_parallel} GPUs")  # fmt: skip
    if not p.problems:
        p.nodes, why = _place(cfg)
        if why:
            p.problems.append(f"placement: {why}")

    # Inference: TP slices attention and (without EP) every expert; EP puts whole experts on each GPU instead.
    # Either way one GPU holds 1/TP of the weights; vocab-parallel embedding and lm_head split the same way.
    max_len = inf.max_model_len or hf.max_position_embeddings
    weights = 2 * info.total_params / inf.tensor_parallel
    usable = mem * inf.gpu_memory_utilization
    reserve = VLLM_RUNTIME_RESERVE_GIB * GiB
    kv_budget = usable - weights - reserve
    kv_tok = kv_bytes_per_token(hf, inf.tensor_parallel)
    contexts = kv_budget / (kv_tok * max_len)
    layout = (f"EP{inf.tensor_parallel} ({hf.num_experts // inf.tensor_parallel} whole experts per GPU)"
              if inf.expert_parallel else "experts sliced by TP")  # fmt: skip
    p.inference_gib = {"weights (bf16)": weights, "runtime reserve": reserve, "KV cache": max(kv_budget, 0.0)}
    p.lines.append(f"  inference: {inf.engines} vLLM engines x TP{inf.tensor_parallel}, {layout}; per GPU "
                   f"({inf.gpu_memory_utilization:g} of {cl.gpu_memory_gib:g} GiB = {_gib(usable)}):")  # fmt: skip
    p.lines += _table(p.inference_gib)
    p.lines.append(f"    KV cache = {max(kv_budget, 0) / kv_tok:,.0f} tokens ({kv_tok / 1024:.0f} KiB/token) = "
                   f"{max(contexts, 0):.1f} full {max_len}-token contexts per engine")  # fmt: skip
    if max_len > hf.max_position_embeddings:
        p.problems.append(f"inference.max_model_len {max_len} exceeds the model's max_position_embeddings "
                          f"{hf.max_position_embeddings}")  # fmt: skip
    if contexts < 1:
        need = weights + reserve + kv_tok * max_len
        p.problems.append(f"inference: one {max_len}-token context needs {_gib(need)} per GPU, "
                          f"{_gib(usable)} usable; short by {_gib(need - usable)} (raise tensor_parallel "
                          f"or lower max_model_len)")  # fmt: skip

    p.train_gib = train_state_bytes(info.total_params, tr.zero_stage, tr.workers, tr.offload_optimizer)
    if tr.zero_stage == 3:
        # ZeRO-3 gathers the full parameters of the layer it runs and prefetches the next one
        p.train_gib["gathered layers (bf16, 2)"] = 2 * layer_bytes(hf, 0)["weights"]
    p.train_gib.update(activation_bytes(hf, tr.micro_batch_tokens, tr.logprob_slice))
    used, budget = sum(p.train_gib.values()), mem * tr.memory_headroom
    offload = ", optimizer offloaded to host" if tr.offload_optimizer else ""
    p.lines.append(f"  train: DeepSpeed ZeRO-{tr.zero_stage} over {tr.workers} GPUs{offload}, "
                   f"{tr.micro_batch_tokens} tokens per micro-batch; per GPU:")  # fmt: skip
    p.lines += _table(p.train_gib)
    p.lines.append(f"    {'total':<32}{used / GiB:8.2f} GiB of {budget / GiB:.2f} GiB usable")
    if used > budget:
        p.problems.append(f"train: {_gib(used)} per GPU, {_gib(budget)} usable ({cl.gpu_memory_gib:g} GiB x "
                          f"{tr.memory_headroom:g}); short by {_gib(used - budget)} (raise train.workers or "
                          f"zero_stage, offload the optimizer, or lower micro_batch_tokens)")  # fmt: skip
    if tr.offload_optimizer and cl.host_memory_gib:
        per_node = math.ceil(tr.workers / cl.nodes)
        host = per_node * 12 * info.total_params / (tr.workers if tr.zero_stage >= 1 else 1)
        p.lines.append(f"    host RAM for the offloaded optimizer: {_gib(host)} per node of {cl.host_memory_gib:g} GiB")
        if host > cl.host_memory_gib * GiB * tr.memory_headroom:
            p.problems.append(f"host memory: offloaded optimizer {_gib(host)} per node, "
                              f"{cl.host_memory_gib * tr.memory_headroom:.2f} GiB usable")  # fmt: skip
    if p.nodes:
        p.lines.append("  placement:")
        p.lines += [f"    {n}" for n in p.nodes]


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _cpu_plan(cfg: RunConfig, p: Plan, info) -> None:
    """One node's RAM holds everything: vLLM-CPU weights and KV cache per engine, fp32 trainer state per rank."""
    inf, tr = cfg.inference, cfg.train
    host = (cfg.cluster.host_memory_gib * GiB) if cfg.cluster.host_memory_gib else host_memory_bytes()
    p.inference_gib = {
        f"engine weights (bf16) x {inf.engines}": inf.engines * 2 * info.total_params,
        f"engine KV cache ({inf.kvcache_gb} GiB) x {inf.engines}": inf.engines * inf.kvcache_gb * GiB,
    }
    # fp32 on CPU: weights, gradients and Adam's two moments, 4 B each per parameter, split by ZeRO stage
    n, z = tr.workers, tr.zero_stage
    p.train_gib = {
        f"trainer weights (fp32) x {n}": n * 4 * info.total_params / (n if z >= 3 else 1),
        f"trainer gradients (fp32) x {n}": n * 4 * info.total_params / (n if z >= 2 else 1),
        f"trainer Adam moments (fp32) x {n}": n * 8 * info.total_params / (n if z >= 1 else 1),
    }
    used, budget = sum(p.inference_gib.values()) + sum(p.train_gib.values()), host * tr.memory_headroom
    p.lines.append(f"  cpu: {inf.engines} {inf.engine} engine(s), {n} DeepSpeed rank(s) ZeRO-{z}; host RAM:")
    p.lines += _table({**p.inference_gib, **p.train_gib})
    p.lines.append(f"    {'total (before activations)':<32}{used / GiB:8.2f} GiB of {budget / GiB:.2f} GiB usable")
    if used > budget:
        p.problems.append(f"host memory: {_gib(used)} needed, {_gib(budget)} usable; short by {_gib(used - budget)}")


def make_plan(cfg: RunConfig) -> Plan:
    from rome.configs import hf_config_for
    from rome.info import model_info

    ref = model_ref(cfg)
    info, hf = model_info(ref), hf_config_for(ref)
    p = Plan(lines=[f"plan {cfg.name}: {ref} on {cfg.device}",
                    f"  params total {info.total_params / 1e9:.2f}B, active per token {info.active_params / 1e9:.2f}B, "
                    f"per layer {layer_params(hf) / 1e6:.1f}M"])  # fmt: skip
    if cfg.device == "cuda":
        _cuda_plan(cfg, p, info, hf)
    else:
        _cpu_plan(cfg, p, info)
    n = cfg.inference.engines
    router = f"a router in the driver over the {n} engines (sticky per trajectory, least-loaded)"
    p.lines.append(f"  inference endpoint: {'the engine itself' if n == 1 else router}")
    p.lines += [f"  DOES NOT FIT: {why}" for why in p.problems]
    return p


def plan(cfg: RunConfig) -> str:
    return make_plan(cfg).render()


def check(cfg: RunConfig) -> Plan:
    """The plan, printed; a PlanError naming every resource that is short when it does not fit."""
    p = make_plan(cfg)
    print(p.render(), flush=True)
    if not p.fits:
        raise PlanError(f"{cfg.name} does not fit: {'; '.join(p.problems)}")
    return p
