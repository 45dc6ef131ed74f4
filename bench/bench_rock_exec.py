"""python bench/bench_rock_exec.py [--n 40]

Exec round trip of `true`: REST (`POST /v1/sandboxes/{id}/exec` through the SDK) against
`docker exec <id> true` through the docker CLI, on the same container, interleaved so that
load from other processes hits both alike. Target: REST p50 / CLI p50 <= 1.0.
Ends with one JSON line holding "ratio".
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time

from rock.launch import RockProcess


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=40)
    args = p.parse_args()
    with RockProcess() as rock, rock.client() as c, c.create_sandbox() as sb:
        cid = sb.info.container_id
        for _ in range(3):  # warm both paths: connection pools, page cache
            sb.exec(["true"])
            subprocess.run(["docker", "exec", cid, "true"], check=True)
        rest, cli = [], []
        for _ in range(args.n):
            t = time.perf_counter()
            assert sb.exec(["true"]).exit_code == 0
            rest.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run(["docker", "exec", cid, "true"], check=True)
            cli.append(time.perf_counter() - t)
    r50, c50 = statistics.median(rest), statistics.median(cli)
    print(f"REST exec true : p50 {r50 * 1000:.1f} ms  p90 {pct(rest, 0.9) * 1000:.1f} ms  (n={args.n})")
    print(f"docker exec CLI: p50 {c50 * 1000:.1f} ms  p90 {pct(cli, 0.9) * 1000:.1f} ms  (n={args.n})")
    print(json.dumps({"bench": "rock_exec", "rest_p50_s": r50, "cli_p50_s": c50, "ratio": r50 / c50, "target": 1.0}))


if __name__ == "__main__":
    main()
