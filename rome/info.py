"""Model sizes without allocating weights: `rome info rome-30b-a3b` (or a saved model dir).

Builds the model on the meta device, counts every parameter, and counts as active per token
the parameters a token actually touches: all but the experts it is not routed to.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelInfo:
    name: str
    total_params: int
    active_params: int
    expert_params: int
    bf16_bytes: int

    def render(self) -> str:
        gib = self.bf16_bytes / 2**30
        return (
            f"{self.name}\n"
            f"  total params:            {self.total_params:,} ({_human(self.total_params)})\n"
            f"  active params per token: {self.active_params:,} ({_human(self.active_params)})\n"
            f"  bf16 weight memory:      {gib:.2f} GiB"
        )


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def model_info(name_or_dir: str) -> ModelInfo:
    import torch
    from transformers import AutoModelForCausalLM

    from rome.configs import hf_config_for

    cfg = hf_config_for(name_or_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    total = sum(p.numel() for p in model.parameters())
    # Expert weights live in `...mlp.experts...`; a token uses top-k of the num_experts of them.
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    active = total - experts + experts * cfg.num_experts_per_tok // cfg.num_experts
    return ModelInfo(str(name_or_dir), total, active, experts, bf16_bytes=2 * total)
