"""Oracle evaluation throughput: `.venv/bin/python bench/bench_eval.py [--n 48] [--families a,b]`.

The same 48 generated suite instances (train and held-out, spread over the families) are evaluated with
the oracle agent at concurrency 8 and at concurrency 1, in one run, each through `roll.eval.evaluate` with
a `rock serve` of its own, as `roll eval` runs them. Prints a JSON line with both wall times and
`ratio` = throughput at 8 / throughput at 1 (target >= 2.0 on 2 cores): what concurrency buys once the
per-attempt overhead (one sandbox create, three execs, a few uploads) is small.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def suite_sample(n: int, families: list[str] | None) -> list:
    """`n` instances taken round-robin over the families and both splits, so every kind of task is in it."""
    from roll.tasks.suite import generate_suite

    tasks = generate_suite(families)
    groups: dict[tuple[str, str], list] = {}
    for t in tasks:
        groups.setdefault((t.family, t.split), []).append(t)
    picked, lists = [], list(groups.values())
    while len(picked) < n and any(lists):
        for items in lists:
            if items and len(picked) < n:
                picked.append(items.pop(0))
    return picked


def timed_eval(tasks: list, concurrency: int, out: Path, warm_pool: int | None) -> tuple[float, float]:
    from roll.eval.runner import evaluate

    t = time.monotonic()
    report = evaluate(tasks, agent="oracle", out_dir=out, concurrency=concurrency, progress=False, log=lambda s: None,
                      warm_pool=warm_pool)  # fmt: skip
    seconds = time.monotonic() - t
    return seconds, report.pass_rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--families", help="comma-separated (default: all)")
    ap.add_argument("--warm-pool", type=int, help="containers rock keeps started (default: evaluate's, = concurrency)")
    args = ap.parse_args()
    tasks = suite_sample(args.n, args.families.split(",") if args.families else None)
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        # A short warm-up: the first sandboxes of a fresh server pay one-off costs (image layers, imports).
        timed_eval(tasks[:4], 4, Path(tmp) / "warm", args.warm_pool)
        s8, rate8 = timed_eval(tasks, 8, Path(tmp) / "c8", args.warm_pool)
        s1, rate1 = timed_eval(tasks, 1, Path(tmp) / "c1", args.warm_pool)
    result = {"bench": "eval_oracle", "n": len(tasks), "seconds_c8": round(s8, 2), "seconds_c1": round(s1, 2),
              "per_attempt_s_c1": round(s1 / len(tasks), 3), "pass_rate_c8": rate8, "pass_rate_c1": rate1,
              "ratio": round(s1 / s8, 3)}  # fmt: skip
    print(json.dumps(result))
    return 0 if rate8 == rate1 == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
