"""python bench/bench_rock_scale.py [--concurrent 100] [--alive 500] [--execs 100]

Scale on one machine: (1) `--concurrent` creates at once must all succeed; (2) the manager
then holds `--alive` sandboxes at once; (3) exec p99 of `true` with all of them alive, divided
by exec p99 with one alive. Targets: 100 % of creates succeed; ratio <= 3.
Every sandbox is removed at the end. Ends with one JSON line holding "ratio".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

from rock.launch import RockProcess

SPEC = {"memory": "64m", "pids_limit": 64, "cpus": 0.5}


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))]


async def exec_latencies(boxes, n: int) -> list[float]:
    out = []
    for _ in range(n):
        sb = random.choice(boxes)
        t = time.perf_counter()
        r = await sb.exec(["true"])
        out.append(time.perf_counter() - t)
        assert r.exit_code == 0
    return out


async def create_many(c, n: int, limit: int) -> tuple[list, list]:
    sem = asyncio.Semaphore(limit)

    async def one():
        async with sem:
            return await c.create_sandbox(**SPEC)

    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    return [r for r in results if not isinstance(r, BaseException)], [
        r for r in results if isinstance(r, BaseException)
    ]


async def delete_all(boxes, limit: int = 16) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(sb):
        async with sem:
            await sb.delete()

    await asyncio.gather(*(one(sb) for sb in boxes), return_exceptions=True)


async def run(rock, args) -> dict:
    c = rock.async_client()
    boxes: list = []
    try:
        first = await c.create_sandbox(**SPEC)
        boxes.append(first)
        await exec_latencies([first], 5)
        lat1 = await exec_latencies([first], args.execs)
        t = time.perf_counter()
        ok, failed = await create_many(c, args.concurrent, args.concurrent)
        burst_s = time.perf_counter() - t
        boxes += ok
        print(f"{args.concurrent} concurrent creates: {len(ok)} ok, {len(failed)} failed in {burst_s:.1f}s")
        for e in failed[:3]:
            print("  failure:", type(e).__name__, e)
        t = time.perf_counter()
        more, failed2 = await create_many(c, max(0, args.alive - len(boxes)), 16)
        boxes += more
        alive = len(await c.list_sandboxes())
        print(f"filled to {alive} alive sandboxes in {time.perf_counter() - t:.0f}s ({len(failed2)} failures)")
        latn = await exec_latencies(boxes, args.execs)
    finally:
        t = time.perf_counter()
        await delete_all(boxes)
        print(f"removed {len(boxes)} sandboxes in {time.perf_counter() - t:.0f}s")
        await c.close()
    return {"lat1": lat1, "latn": latn, "ok": len(ok), "alive": alive}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrent", type=int, default=100)
    p.add_argument("--alive", type=int, default=500)
    p.add_argument("--execs", type=int, default=100)
    args = p.parse_args()
    with RockProcess() as rock:
        res = asyncio.run(run(rock, args))
    a, b = p99(res["lat1"]), p99(res["latn"])
    print(f"exec p99 with 1 alive: {a * 1000:.0f} ms; with {res['alive']} alive: {b * 1000:.0f} ms")
    print(
        json.dumps(
            {
                "bench": "rock_scale",
                "concurrent_creates": args.concurrent,
                "concurrent_success_rate": res["ok"] / args.concurrent,
                "alive": res["alive"],
                "exec_p99_1_s": a,
                "exec_p99_n_s": b,
                "ratio": b / a,
                "target": 3.0,
            }
        )
    )


if __name__ == "__main__":
    main()
