"""python bench/bench_rock_scale.py [--concurrent 100] [--alive 500] [--execs 100] [--fill-minutes M]

Scale on one machine: (1) `--concurrent` creates at once must all succeed; (2) the manager
then holds `--alive` sandboxes at once; (3) exec p99 of `true` with all of them alive, divided
by exec p99 with one alive. Targets: 100 % of creates succeed; ratio <= 3.
Every sandbox is removed at the end. The JSON line holding "ratio" is printed before removal starts
(removing a thousand takes minutes); `--fill-minutes` stops filling after M minutes and measures with
what is alive by then (the JSON's "alive" says how many); so does host memory falling under
`--min-available-mib` (default 3 GiB), so that a fill never pushes the machine's other work into the OOM killer.

What bounds the count is measured with one and with all alive and printed: host memory per
sandbox (MemAvailable's fall, divided), the containerd shims' RSS (one Go process per
container), tasks against `kernel.pid_max` (each shim runs about a dozen threads), and the open
descriptors of dockerd, containerd and the manager against their limits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time

from rock.launch import RockProcess

SPEC = {"memory": "64m", "pids_limit": 64, "cpus": 0.5}


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))]


def _procs(name: str) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and open(f"/proc/{pid}/comm").read().strip() == name:
                out.append(int(pid))
        except OSError:
            pass  # exited while we looked
    return out


def _status(pid: int, key: str) -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _fds(pid: int) -> tuple[int, int]:
    """(open descriptors, soft limit) of a process."""
    try:
        n = len(os.listdir(f"/proc/{pid}/fd"))
        limit = next(line.split()[3] for line in open(f"/proc/{pid}/limits") if line.startswith("Max open files"))
        return n, int(limit)
    except (OSError, StopIteration, ValueError):
        return 0, 0


def bounds(manager_pid: int) -> dict:
    """What a thousand sandboxes press on: memory, shims, tasks, descriptors."""
    mem = {line.split(":")[0]: int(line.split()[1]) for line in open("/proc/meminfo")}
    shims = _procs("containerd-shim")  # comm is cut to 15 characters: containerd-shim-runc-v2
    tasks = sum(len(os.listdir(f"/proc/{p}/task")) for p in os.listdir("/proc") if p.isdigit() and _alive(p))
    out = {
        "mem_available_mib": mem["MemAvailable"] // 1024,
        # the kernel's share: unreclaimable slab (cgroups, namespaces, btrfs), thread stacks, page tables
        "kernel_mib": (mem["SUnreclaim"] + mem["KernelStack"] + mem["PageTables"]) // 1024,
        "shims": len(shims),
        "shim_rss_mib": sum(_status(p, "VmRSS") for p in shims) / 1024,
        "shim_anon_mib": sum(_status(p, "RssAnon") for p in shims) / 1024,  # its own; the rest is shared text
        "shim_threads": sum(_status(p, "Threads") for p in shims),
        "tasks": tasks,
        "pid_max": int(open("/proc/sys/kernel/pid_max").read()),
    }
    for name, pids in (
        ("dockerd", _procs("dockerd")),
        ("containerd", _procs("containerd")),
        ("manager", [manager_pid]),
    ):
        if pids:
            out[f"{name}_fds"], out[f"{name}_fd_limit"] = _fds(pids[0])
            out[f"{name}_rss_mib"] = _status(pids[0], "VmRSS") // 1024
    return out


def _alive(pid: str) -> bool:
    return os.path.isdir(f"/proc/{pid}/task")


async def exec_latencies(boxes, n: int) -> list[float]:
    out = []
    for _ in range(n):
        sb = random.choice(boxes)
        t = time.perf_counter()
        r = await sb.exec(["true"])
        out.append(time.perf_counter() - t)
        assert r.exit_code == 0
    return out


def mem_available_mib() -> int:
    return next(int(line.split()[1]) // 1024 for line in open("/proc/meminfo") if line.startswith("MemAvailable:"))


async def create_many(c, n: int, limit: int, until: float = float("inf"), floor_mib: int = 0) -> tuple[list, list]:
    """`n` creates, `limit` at a time; none started after the monotonic time `until` or with less than
    `floor_mib` of host memory available (the machine's other work must not be pushed into the OOM killer)."""
    sem = asyncio.Semaphore(limit)

    async def one():
        async with sem:
            if time.monotonic() > until or mem_available_mib() < floor_mib:
                return None
            return await c.create_sandbox(**SPEC)

    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    return [r for r in results if r is not None and not isinstance(r, BaseException)], [
        r for r in results if isinstance(r, BaseException)
    ]


async def delete_all(boxes, limit: int = 16) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(sb):
        async with sem:
            await sb.delete()

    await asyncio.gather(*(one(sb) for sb in boxes), return_exceptions=True)


async def run(rock, args) -> None:
    c = rock.async_client()
    boxes: list = []
    until = time.monotonic() + args.fill_minutes * 60
    try:
        first = await c.create_sandbox(**SPEC)
        boxes.append(first)
        at1 = bounds(rock.proc.pid)
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
        more, failed2 = await create_many(c, max(0, args.alive - len(boxes)), 16, until, args.min_available_mib)
        boxes += more
        alive = len(await c.list_sandboxes())
        print(f"filled to {alive} alive sandboxes in {time.perf_counter() - t:.0f}s ({len(failed2)} failures)")
        for e in failed2[:3]:
            print("  failure:", type(e).__name__, e)
        latn = await exec_latencies(boxes, args.execs)
        atn = bounds(rock.proc.pid)
        per = (at1["mem_available_mib"] - atn["mem_available_mib"]) / max(1, alive - 1)
        print(f"with 1 alive: {json.dumps(at1)}")
        print(f"with {alive} alive: {json.dumps(atn)}")
        print(
            f"per sandbox: {per:.1f} MiB of host memory; its shim {atn['shim_rss_mib'] / max(1, atn['shims']):.1f}"
            f" MiB RSS ({atn['shim_anon_mib'] / max(1, atn['shims']):.1f} MiB its own)"
            f" and {atn['shim_threads'] / max(1, atn['shims']):.0f} threads"
        )
        res = {"lat1": lat1, "latn": latn, "ok": len(ok), "alive": alive, "failed_fill": len(failed2)}
        report(args, res | {"mem_per_sandbox_mib": per})
    finally:
        t = time.perf_counter()
        await delete_all(boxes, args.remove_concurrency)
        print(f"removed {len(boxes)} sandboxes in {time.perf_counter() - t:.0f}s", flush=True)
        await c.close()


def report(args, res: dict) -> None:
    a, b = p99(res["lat1"]), p99(res["latn"])
    print(f"exec p99 with 1 alive: {a * 1000:.0f} ms; with {res['alive']} alive: {b * 1000:.0f} ms")
    print(
        json.dumps(
            {
                "bench": "rock_scale",
                "concurrent_creates": args.concurrent,
                "concurrent_success_rate": res["ok"] / args.concurrent,
                "alive": res["alive"],
                "failed_fill_creates": res["failed_fill"],
                "mem_per_sandbox_mib": res["mem_per_sandbox_mib"],
                "exec_p99_1_s": a,
                "exec_p99_n_s": b,
                "ratio": b / a,
                "target": 3.0,
            }
        ),
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrent", type=int, default=100)
    p.add_argument("--alive", type=int, default=500)
    p.add_argument("--execs", type=int, default=100)
    p.add_argument("--fill-minutes", type=float, default=float("inf"), help="stop filling after this long")
    p.add_argument("--remove-concurrency", type=int, default=16)
    p.add_argument("--min-available-mib", type=int, default=3072, help="stop filling below this MemAvailable")
    args = p.parse_args()
    with RockProcess() as rock:
        asyncio.run(run(rock, args))


if __name__ == "__main__":
    main()
