"""Served throughput under an agentic load, vLLM vs transformers: `.venv/bin/python bench/bench_rome_serving.py`.

64 concurrent clients, each sending its next chat request as soon as the last returns; prompts share
a long common prefix (system prompt + tool schemas) with varied tails; output lengths vary 16-256
tokens. Each engine serves a fresh ROME-tiny through `rome serve` (start_server) for the same wall
time after a warm-up; the score is completion tokens per second. Last line: JSON with "ratio"
(vllm / hf). Options: --clients N --seconds S --model DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

SYSTEM = (
    "You are iflow, a terminal agent. Work step by step, run commands with the tools, check results, "
    "and finish with a short summary. "
) * 8


def _requests(n: int, seed: int = 0) -> list[dict]:
    from rome.tokenizer.corpus import TOOLS, _sentence

    rng = random.Random(seed)
    tools = [{"type": "function", "function": t} for t in TOOLS]
    return [
        {
            "model": "rome-tiny",
            "tools": tools,
            "temperature": 1.0,
            "seed": i,
            "max_tokens": rng.randint(16, 256),
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": _sentence(rng, 6, 30)}],
        }
        for i in range(n)
    ]


async def _load(url: str, clients: int, seconds: float) -> dict:
    import httpx

    pool = _requests(4096)
    done_tokens, done_requests = 0, 0
    deadline = time.perf_counter() + seconds

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal done_tokens, done_requests
        k = i
        while time.perf_counter() < deadline:
            r = await http.post(url + "/chat/completions", json=pool[k % len(pool)])
            r.raise_for_status()
            if time.perf_counter() <= deadline:
                done_tokens += r.json()["usage"]["completion_tokens"]
                done_requests += 1
            k += clients

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    elapsed = min(time.perf_counter() - start, seconds)
    return {
        "tokens": done_tokens,
        "requests": done_requests,
        "seconds": round(elapsed, 1),
        "tokens_per_s": round(done_tokens / elapsed, 2),
    }


def _measure(model_dir: Path, engine: str, clients: int, seconds: float) -> dict:
    from rome.serving.server import start_server

    handle = start_server(model_dir, engine=engine)
    try:
        asyncio.run(_load(handle.url, min(clients, 4), 5))  # warm-up (compile, caches)
        return asyncio.run(_load(handle.url, clients, seconds))
    finally:
        handle.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--model", help="HF model dir (default: a fresh ROME-tiny)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model = Path(args.model)
        else:
            from rome.init import init_model

            model = init_model(Path(tmp) / "rome-tiny")
        results = {e: _measure(model, e, args.clients, args.seconds) for e in ("vllm", "hf")}
    for engine, r in results.items():
        print(
            f"{engine:5s} {r['tokens_per_s']:8.1f} tok/s  ({r['requests']} requests, {r['tokens']} tokens in {r['seconds']} s)"
        )
    ratio = results["vllm"]["tokens_per_s"] / max(results["hf"]["tokens_per_s"], 1e-9)
    print(json.dumps({"bench": "rome_serving", "clients": args.clients, "ratio": round(ratio, 2), **results}))


if __name__ == "__main__":
    main()
