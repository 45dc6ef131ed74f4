"""python bench/bench_rock_create.py [--n 15]

Cold create until exec-ready: `create_sandbox()` then the first exec of `true` through REST,
against the raw docker CLI doing the same (`docker run -d` with the same isolation flags, then
`docker exec <id> true`), interleaved, same image. Removal is not timed.
Target: ROCK p50 / raw p50 <= 1.15. Ends with one JSON line holding "ratio".
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time

from rawdocker import IMAGE, docker_rm, docker_run_detached

from rock.launch import RockProcess


def raw_once() -> float:
    t = time.perf_counter()
    cid = docker_run_detached()
    subprocess.run(["docker", "exec", cid, "true"], check=True)
    took = time.perf_counter() - t
    docker_rm(cid)
    return took


def rock_once(c) -> float:
    t = time.perf_counter()
    sb = c.create_sandbox(image=IMAGE)
    assert sb.exec(["true"]).exit_code == 0
    took = time.perf_counter() - t
    sb.delete()
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=15)
    args = p.parse_args()
    rock_t, raw_t = [], []
    with RockProcess() as rock, rock.client() as c:
        rock_once(c), raw_once()  # warm-up
        for _ in range(args.n):
            rock_t.append(rock_once(c))
            raw_t.append(raw_once())
    r50, d50 = statistics.median(rock_t), statistics.median(raw_t)
    print(f"ROCK create + first exec        : p50 {r50 * 1000:.0f} ms  (n={args.n})")
    print(f"docker run -d + docker exec CLI : p50 {d50 * 1000:.0f} ms  (n={args.n})")
    print(
        json.dumps(
            {"bench": "rock_create_cold", "rock_p50_s": r50, "raw_p50_s": d50, "ratio": r50 / d50, "target": 1.15}
        )
    )


if __name__ == "__main__":
    main()
