"""Static batch, offline vLLM vs transformers `generate`: `.venv/bin/python bench/bench_rome_static.py`.

One batch of 64 equal requests (same prompt, same max_new_tokens, every request generating
exactly max_new_tokens) on the same fresh ROME-tiny in float32: `vllm.LLM(...).generate` vs
`AutoModelForCausalLM.generate`, each timed after a warm-up call of the same shape (vLLM's first
call includes its own warm-up). Greedy decoding in both. No target: this is the case where
continuous batching and prefix caching have nothing to win, reported for honesty next to
bench_rome_serving.py. Last line: JSON with "ratio" (vllm / hf tokens per second). On a shared
2-core machine it swings with other load: 1.67 on a quiet machine, 7-11 while a CI run competed
for the cores (transformers' threads in this process lose more than vLLM's engine core).
Options: --batch N --prompt-tokens P --max-new-tokens M --model DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def _prompt_ids(model_dir: Path, n_tokens: int) -> list[int]:
    from transformers import AutoTokenizer

    from rome.tokenizer.corpus import agentic_corpus

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids: list[int] = []
    for text in agentic_corpus(0):
        ids += tok.encode(text, add_special_tokens=False)
        if len(ids) >= n_tokens:
            break
    return ids[:n_tokens]


def _hf(model_dir: Path, prompt: list[int], batch: int, max_new: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    inputs = torch.tensor([prompt] * batch)
    mask = torch.ones_like(inputs)
    kwargs = dict(
        attention_mask=mask,
        max_new_tokens=max_new,
        min_new_tokens=max_new,
        do_sample=False,
        pad_token_id=model.generation_config.pad_token_id,
    )
    with torch.inference_mode():
        model.generate(inputs, **kwargs)  # warm-up
        t0 = time.perf_counter()
        out = model.generate(inputs, **kwargs)
        elapsed = time.perf_counter() - t0
    tokens = int((out.shape[1] - inputs.shape[1]) * out.shape[0])
    del model
    return {"tokens": tokens, "seconds": round(elapsed, 2), "tokens_per_s": round(tokens / elapsed, 1)}


def _vllm(model_dir: Path, prompt: list[int], batch: int, max_new: int) -> dict:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model_dir), dtype="float32", seed=0, max_model_len=len(prompt) + max_new + 16)
    params = SamplingParams(temperature=0.0, max_tokens=max_new, min_tokens=max_new, ignore_eos=True, detokenize=False)
    prompts = [{"prompt_token_ids": list(prompt)} for _ in range(batch)]
    llm.generate(prompts, params, use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    # Stop the engine-core process now: left to interpreter exit, it kept the script from exiting.
    llm.llm_engine.engine_core.shutdown()
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"tokens": tokens, "seconds": round(elapsed, 2), "tokens_per_s": round(tokens / elapsed, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--model", help="HF model dir (default: a fresh ROME-tiny)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model = Path(args.model)
        else:
            from rome.init import init_model

            model = init_model(Path(tmp) / "rome-tiny", config="tiny")
        prompt = _prompt_ids(model, args.prompt_tokens)
        hf = _hf(model, prompt, args.batch, args.max_new_tokens)
        print(f"hf    {hf['tokens_per_s']:8.1f} tok/s  ({hf['tokens']} tokens in {hf['seconds']} s)", flush=True)
        vllm = _vllm(model, prompt, args.batch, args.max_new_tokens)
        print(f"vllm  {vllm['tokens_per_s']:8.1f} tok/s  ({vllm['tokens']} tokens in {vllm['seconds']} s)", flush=True)
    ratio = vllm["tokens_per_s"] / max(hf["tokens_per_s"], 1e-9)
    summary = {
        "bench": "rome_static",
        "batch": args.batch,
        "prompt_tokens": len(prompt),
        "max_new_tokens": args.max_new_tokens,
        "dtype": "float32",
        "ratio": round(ratio, 2),
        "vllm": vllm,
        "hf": hf,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
