"""python bench/bench_rock_warm.py [--n 15]

Warm-pool create: `create_sandbox()` served from a started container of the pool, against a
cold `docker run -d` (same image, same isolation flags) through the CLI. Before each timed
create the pool is given time to refill, as between episodes of a rollout.
Target: warm p50 / cold docker run p50 <= 0.10. Ends with one JSON line holding "ratio".
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx
from rawdocker import IMAGE, docker_rm, docker_run_detached

from rock.launch import RockProcess


def pool_ready(rock) -> float:
    text = httpx.get(f"{rock.url}/metrics", headers={"Authorization": f"Bearer {rock.token}"}).text
    for line in text.splitlines():
        if line.startswith("rock_warm_pool_ready "):
            return float(line.split()[1])
    return 0.0


def wait_pool(rock, want: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while pool_ready(rock) < want:
        if time.monotonic() > deadline:
            raise SystemExit("error: warm pool did not refill in time")
        time.sleep(0.05)


def raw_run() -> float:
    t = time.perf_counter()
    cid = docker_run_detached()
    took = time.perf_counter() - t
    docker_rm(cid)
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=15)
    args = p.parse_args()
    warm, raw = [], []
    with RockProcess(warm_pool=1, extra_args=["--pool-image", IMAGE]) as rock, rock.client() as c:
        for _ in range(args.n):
            wait_pool(rock, 1)
            t = time.perf_counter()
            sb = c.create_sandbox(image=IMAGE)
            warm.append(time.perf_counter() - t)
            assert sb.info.warm, "create was not served from the pool"
            assert sb.exec(["true"]).exit_code == 0
            sb.delete()
            raw.append(raw_run())
    w50, r50 = statistics.median(warm), statistics.median(raw)
    print(f"ROCK warm-pool create : p50 {w50 * 1000:.1f} ms  (n={args.n})")
    print(f"docker run -d (CLI)   : p50 {r50 * 1000:.0f} ms  (n={args.n})")
    print(
        json.dumps(
            {
                "bench": "rock_create_warm",
                "warm_p50_s": w50,
                "docker_run_p50_s": r50,
                "ratio": w50 / r50,
                "target": 0.10,
            }
        )
    )


if __name__ == "__main__":
    main()
