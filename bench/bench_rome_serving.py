"""Served throughput under an agentic load, vLLM vs transformers: `.venv/bin/python bench/bench_rome_serving.py`.

64 concurrent clients, each sending its next chat request as soon as the last returns; prompts share
a long common prefix (system prompt + tool schemas) with varied tails; output lengths vary 16-256
tokens. Each engine serves a fresh ROME-tiny through `rome serve` (start_server) for the same wall
time after a warm-up; the score is completion tokens per second, counting every token streamed
inside the window, including those of requests still running when it closes (counting only
requests that finished inside the window overstated the gap against the one-at-a-time hf engine).
Last line: JSON with "ratio" (vllm / hf). Options: --clients N --seconds S --model DIR.
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
    """Stream chat completions from `clients` closed-loop clients for `seconds`; count every token.

    Tokens are counted as they arrive (the server's `token_ids` per chunk), so requests still
    running when the window closes count for what they generated inside it; nothing generated
    after the window counts. At the end of the window the clients hang up (aborting their
    requests) rather than wait for them, so an engine that queues requests is not waited on.
    """
    import httpx

    pool = _requests(4096)
    tokens, started, finished = 0, 0, 0
    start = time.perf_counter()
    deadline = start + seconds

    async def request(http: httpx.AsyncClient, body: dict) -> None:
        nonlocal tokens, finished
        async with http.stream("POST", url + "/chat/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(chunk["error"])
                now = time.perf_counter()
                if now > deadline:
                    return
                for choice in chunk.get("choices", []):
                    tokens += len(choice.get("token_ids") or [])
                    if choice.get("finish_reason"):
                        finished += 1

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal started
        k = i
        while time.perf_counter() < deadline:
            body = {**pool[k % len(pool)], "stream": True, "return_token_ids": True}
            started += 1
            await request(http, body)
            k += clients

    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=clients)) as http:
        tasks = [asyncio.create_task(client(i, http)) for i in range(clients)]
        done, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.perf_counter()))
        for t in pending:  # hang up: the server aborts what these were waiting for
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for t in done:
            t.result()  # surface client errors
    return {
        "tokens": tokens,
        "requests_started": started,
        "requests_finished": finished,
        "seconds": round(seconds, 1),
        "tokens_per_s": round(tokens / seconds, 2),
    }


def _measure(model_dir: Path, engine: str, clients: int, seconds: float) -> dict:
    from rome.serving.server import start_server

    handle = start_server(model_dir, engine=engine)
    try:
        asyncio.run(_load(handle.url, min(clients, 4), 5))  # warm-up (compile, caches)
        time.sleep(2)  # let aborted warm-up requests drain
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
            f"{engine:5s} {r['tokens_per_s']:8.1f} tok/s  ({r['tokens']} tokens in {r['seconds']} s; "
            f"{r['requests_started']} requests started, {r['requests_finished']} finished)"
        )
    ratio = results["vllm"]["tokens_per_s"] / max(results["hf"]["tokens_per_s"], 1e-9)
    print(json.dumps({"bench": "rome_serving", "clients": args.clients, "ratio": round(ratio, 2), **results}))


if __name__ == "__main__":
    main()
