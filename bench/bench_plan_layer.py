"""One ROME-30B-A3B decoder layer on a device vs `roll plan`'s per-layer estimate:
`.venv/bin/python bench/bench_plan_layer.py --device cuda` (on a GPU; scripts/gpu_checks.sh runs it), or
`.venv/bin/python bench/bench_plan_layer.py --device cpu --scale small` (a scaled layer, to show it runs).

Builds transformers' Qwen3-MoE decoder layer in bf16 (SDPA attention) with random weights, then measures
- weights: the bytes of its parameters, and on cuda what `memory_allocated` grew by when it was built;
- activations: the bytes of the distinct tensors its forward over `--tokens` tokens saves for backward
  (counted by a saved-tensors hook, the same on every device); on cuda also the peak of a forward and
  backward above the weights and their gradients;
and prints them beside `roll.plan.layer_bytes` (weights, activations) and the plan's "one layer recomputed"
(2 x activations) as one JSON line with the ratios measured / planned.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GiB = 2**30


def layer_config(scale: str, experts: str = "grouped_mm"):
    """The 30B layer, or the same layout scaled down (every dimension a CPU can run in seconds)."""
    from rome.configs import hf_config_for

    hf = hf_config_for("rome-30b-a3b")
    if scale == "small":
        for key, value in dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                               num_experts=16, num_experts_per_tok=4, moe_intermediate_size=128).items():  # fmt: skip
            setattr(hf, key, value)
    hf._attn_implementation = "sdpa"
    hf._experts_implementation = experts
    return hf


def _saved_bytes(fn, exclude: list) -> tuple[object, int]:
    """Run `fn` and count the bytes of the distinct storages autograd saves for backward, leaving out the
    tensors in `exclude` (weights, the layer input, rotary tables: they exist whether or not it runs)."""
    import torch

    skip = {t.untyped_storage().data_ptr() for t in exclude}
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


def measure(device: str, scale: str, tokens: int, experts: str = "grouped_mm", seed: int = 0) -> dict:
    import torch
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeDecoderLayer, Qwen3MoeRotaryEmbedding

    from roll.plan import layer_bytes

    hf = layer_config(scale, experts)
    torch.manual_seed(seed)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    layer = Qwen3MoeDecoderLayer(hf, 0).to(device=device, dtype=torch.bfloat16)
    with torch.no_grad():  # the router starts at zeros; random weights spread the tokens over the experts
        for p in layer.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.02)
    weights = sum(p.numel() * p.element_size() for p in layer.parameters())
    x = torch.randn(1, tokens, hf.hidden_size, device=device, dtype=torch.bfloat16, requires_grad=True)
    pos = torch.arange(tokens, device=device)[None]
    cos, sin = Qwen3MoeRotaryEmbedding(hf).to(device)(x, pos)
    cos, sin = cos.detach(), sin.detach()
    result = {"bench": "plan_layer", "device": device, "scale": scale, "tokens": tokens, "experts": experts,
              "layer_params": sum(p.numel() for p in layer.parameters())}  # fmt: skip
    if cuda:
        torch.cuda.synchronize()
        result["weights_allocated_gib"] = (torch.cuda.memory_allocated() - base) / GiB
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    exclude = [*layer.parameters(), x, cos, sin]
    out, saved = _saved_bytes(lambda: layer(x, position_embeddings=(cos, sin)), exclude)
    out.float().pow(2).mean().backward()
    if cuda:
        torch.cuda.synchronize()
        # the peak above the weights and inputs, less the weight gradients that stay allocated after backward
        grads = sum(p.grad.numel() * p.grad.element_size() for p in layer.parameters() if p.grad is not None)
        result["fwd_bwd_peak_gib"] = (torch.cuda.max_memory_allocated() - before - grads) / GiB
        result["device_name"] = torch.cuda.get_device_name()
    plan = layer_bytes(hf, tokens)
    result.update(
        weights_gib=weights / GiB,
        weights_plan_gib=plan["weights"] / GiB,
        weights_ratio=weights / plan["weights"],
        activations_gib=saved / GiB,
        activations_plan_gib=plan["activations"] / GiB,
        activations_ratio=saved / plan["activations"],
    )
    if cuda:  # the plan books a recomputed layer at 2 x its saved activations (the tensors and their grads)
        result["fwd_bwd_peak_ratio"] = result["fwd_bwd_peak_gib"] * GiB / (2 * plan["activations"])
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    ap.add_argument("--scale", choices=["full", "small"], default=None, help="default: full on cuda, small on cpu")
    ap.add_argument("--tokens", type=int, default=None, help="default: 8192 on cuda, 256 on cpu")
    ap.add_argument("--experts", choices=["grouped_mm", "eager"], default="grouped_mm",
                    help="transformers' experts implementation (grouped_mm: what from_pretrained picks)")  # fmt: skip
    args = ap.parse_args(argv)
    scale = args.scale or ("full" if args.device == "cuda" else "small")
    tokens = args.tokens or (8192 if args.device == "cuda" else 256)
    print(json.dumps(measure(args.device, scale, tokens, args.experts)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
