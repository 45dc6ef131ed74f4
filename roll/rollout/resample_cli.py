"""`roll resample --task multi_step_chain-0 --agent oracle` (or `--model-url URL`): sequential rollback over one
reference trajectory, printing the success rate per start chunk and the critical chunks it found.

`register(sub)` adds the command to roll's parser (roll/cli.py). The reference is `--reference` (a Trajectory
JSON file, or a .jsonl holding the task's trajectories: the first resolved one) or, without it, one attempt of
the oracle teacher driving iflow. Attempts start where roll/algo/rollback.py says, run by
roll/rollout/resample.py's `resampled_attempt`, their outcomes fed back, until the schedule is done or
`--max-attempts` are spent. Writes `--out`/attempts.jsonl (one Trajectory each) and report.json.
Tests: `.venv/bin/pytest tests/roll/test_resample_docker.py -k cli`.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rock.contracts import Chunk, Trajectory
from roll.errors import RollError


def load_task(spec: str):
    """FAMILY-SEED of the generated suite (multi_step_chain-0), or a task folder."""
    from roll.tasks.loader import load_task_dir
    from roll.tasks.suite import FAMILIES, generate

    if Path(spec).is_dir():
        return load_task_dir(spec)
    family, _, seed = spec.rpartition("-")
    if family not in FAMILIES or not seed.isdigit():
        raise RollError(f"--task {spec!r}: give FAMILY-SEED of the suite (e.g. multi_step_chain-0) or a task folder")
    return generate(family, int(seed))


def load_reference(path: str, task_id: str) -> Trajectory:
    """A Trajectory JSON file, or the first resolved trajectory of `task_id` in a .jsonl (all.jsonl, ...)."""
    text = Path(path).read_text()
    if path.endswith(".jsonl"):
        trajs = [Trajectory.model_validate_json(line) for line in text.splitlines() if line.strip()]
        found = [t for t in trajs if t.task_id == task_id and t.resolved and t.chunks]
        if not found:
            raise RollError(f"--reference {path}: no resolved trajectory with chunks of task {task_id}")
        return found[0]
    return Trajectory.model_validate_json(text)


def describe(chunk: Chunk) -> str:
    """What a chunk did, in a few words: its tool calls, else the start of its text."""
    calls = chunk.response.tool_calls
    if calls:
        parts = []
        for c in calls:
            try:
                args = json.loads(c.function.get("arguments") or "{}")
                shown = " ".join(str(v) for v in args.values()) if isinstance(args, dict) else str(args)
            except json.JSONDecodeError:
                shown = str(c.function.get("arguments"))
            parts.append(f"{c.function.get('name')} {shown}")
        text = "; ".join(parts)
    else:
        text = "answer: " + (chunk.response.text or "")
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


def cmd_resample(args: argparse.Namespace) -> int:
    from roll.algo.rollback import RollbackConfig
    from roll.rollout.attempt import AgentOptions, SandboxTracker, iflow_source_dir, run_attempt
    from roll.rollout.resample import SnapshotCache, check_reference, resampled_attempt

    if args.agent != "oracle" and not args.model_url:
        raise RollError("give the policy: --model-url URL (an OpenAI-compatible endpoint) or --agent oracle")
    if min(args.group, args.max_attempts, args.concurrency, args.max_turns) < 1:
        raise RollError("--group, --max-attempts, --concurrency and --max-turns must be at least 1")
    task = load_task(args.task)
    cfg = RollbackConfig(mode=args.mode, group=args.group, threshold=args.threshold, drop=args.drop,
                         budget=max(args.budget, args.group), critical_budget=max(args.critical_budget, args.group))  # fmt: skip
    options = AgentOptions(max_turns=args.max_turns, max_tokens=args.max_tokens, temperature=args.temperature)
    reference = load_reference(args.reference, task.id) if args.reference else None
    out = Path(args.out or f"runs/resample/{task.id}").resolve()
    out.mkdir(parents=True, exist_ok=True)

    from roll.data.teacher import OracleTeacher

    teacher = (
        OracleTeacher([task], None, mistake_rate=0.0).serve() if (args.agent == "oracle" or not reference) else None
    )
    rock = client = None
    try:
        if args.rock_url:
            from rock.sdk import Client

            client = Client(args.rock_url, args.rock_token)
        else:
            from rock.launch import RockProcess

            rock = RockProcess(allow_mounts=[str(iflow_source_dir())], state_dir=out / "rock", on_exit="remove",
                               warm_pool=0).start()  # fmt: skip
            client = rock.client()
        if reference is None:
            assert teacher is not None
            print(f"roll resample: recording a reference: the oracle teacher on {task.id} ...", flush=True)
            reference = run_attempt(client, task, "iflow", model_url=teacher.url, attempt_dir=out / "reference",
                                    options=AgentOptions(max_turns=max(args.max_turns, 30)))  # fmt: skip
            if not reference.resolved:
                raise RollError(
                    f"the oracle's reference did not resolve {task.id}: {reference.status} {reference.error}"
                )
            (out / "reference.json").write_text(reference.model_dump_json(indent=1))
        check_reference(task, reference, 0)
        policy = teacher.url if args.agent == "oracle" else args.model_url
        return _rollback(client, task, reference, cfg, options, policy, args, out,
                         SnapshotCache() if args.snapshots else None, SandboxTracker(), resampled_attempt)  # fmt: skip
    finally:
        if teacher is not None:
            teacher.stop()
        if client is not None:
            client.close()
        if rock is not None:
            rock.stop()


def _rollback(client, task, reference, cfg, options, policy, args, out, snapshots, tracker, attempt) -> int:
    from roll.algo.rollback import make_schedule

    schedule = make_schedule(len(reference.chunks), cfg)
    print(f"roll resample: {task.id}, reference {reference.trajectory_id} of {len(reference.chunks)} chunks, "
          f"{cfg.mode} starts, groups of {cfg.group}, at most {args.max_attempts} attempts; logs in {out}", flush=True)  # fmt: skip
    spent, broken = 0, ""
    pool = ThreadPoolExecutor(max_workers=args.concurrency, thread_name_prefix="resample")
    try:
        with open(out / "attempts.jsonl", "a") as journal:
            while not schedule.done and spent < args.max_attempts and not broken:
                starts = schedule.next_starts(min(cfg.group, args.max_attempts - spent))
                futures = [pool.submit(attempt, client, task, reference, k, options, model_url=policy,
                                       snapshots=snapshots, tracker=tracker,
                                       attempt_dir=out / "logs" / f"start-{k}" / f"attempt-{spent + i}")
                           for i, k in enumerate(starts)]  # fmt: skip
                for k, fut in zip(starts, futures, strict=True):
                    traj = fut.result()
                    spent += 1
                    journal.write(traj.model_dump_json() + "\n")
                    if traj.status == "environment_error":
                        broken = traj.error
                        continue
                    schedule.record(k, traj.resolved)
                journal.flush()
                done = ", ".join(f"{k}:{'ok' if f.result().resolved else f.result().status}" for k, f in zip(starts, futures, strict=True))  # fmt: skip
                print(f"  [{spent}] start {done}", flush=True)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        tracker.close()
        tracker.delete_all()
        if snapshots is not None:
            snapshots.delete_all(client)
    _print_report(schedule, reference)
    report = {"task": task.id, "reference": reference.trajectory_id, "config": cfg.model_dump(), "attempts": spent,
              "done": schedule.done, "critical": schedule.critical, "events": schedule.events, "error": broken,
              "starts": [dict(s.model_dump(), does=describe(reference.chunks[s.start])) for s in schedule.report()]}  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    if broken:
        print(f"roll resample: the reference was skipped: {broken}", file=sys.stderr)
        return 1
    return 0


def _print_report(schedule, reference: Trajectory) -> None:
    rows = [["start", "attempts", "resolved", "rate", "", "the reference's chunk"]]
    for s in schedule.report():
        mark = "CRITICAL" if s.critical else "learned" if s.learned else "" if s.attempts else "-"
        rate = f"{s.resolved / s.attempts:.2f}" if s.attempts else "-"
        rows.append([str(s.start), str(s.attempts), str(s.resolved), rate, mark, describe(reference.chunks[s.start])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    crit = schedule.critical
    print("critical chunks: " + (", ".join(f"{k} ({describe(reference.chunks[k])})" for k in crit) if crit else "none"))
    for line in schedule.events:
        print(f"  {line}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "resample",
        help="initialized resampling with sequential rollback over one reference trajectory",
        description="Start iflow attempts at chunk k of a reference trajectory (environment restored by replay or "
        "snapshot fork, the reference's prefix as history), moving the start from the last chunk back as the "
        "success rate allows; prints the rate per start chunk and the critical chunks found.",
    )
    p.add_argument("--task", required=True, help="FAMILY-SEED of the suite (multi_step_chain-0) or a task folder")
    p.add_argument("--reference", help="Trajectory JSON, or a .jsonl of trajectories (default: the oracle teacher's)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--model-url", help="the policy: an OpenAI-compatible endpoint (.../v1)")
    who.add_argument("--agent", choices=["oracle"], help="oracle: the oracle teacher is the policy (a dry run)")
    p.add_argument("--mode", choices=["sequential", "parallel"], default="sequential")
    p.add_argument("--group", type=int, default=4, help="attempts per measurement (default 4)")
    p.add_argument("--threshold", type=float, default=0.5, help="rate at which a start is learned (default 0.5)")
    p.add_argument("--drop", type=float, default=0.5, help="rate fall that marks a chunk critical (default 0.5)")
    p.add_argument("--budget", type=int, default=8, help="attempts at an unlearned start (default 8)")
    p.add_argument("--critical-budget", type=int, default=16, help="attempts at a critical start (default 16)")
    p.add_argument("--max-attempts", type=int, default=64, help="stop after this many attempts (default 64)")
    p.add_argument("--concurrency", type=int, default=2, help="attempts at once (default 2)")
    p.add_argument("--max-turns", type=int, default=12, help="iflow --max-turns for the sampled part (default 12)")
    p.add_argument("--max-tokens", type=int, help="cap on each completion")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: the server's)")
    p.add_argument("--no-snapshots", dest="snapshots", action="store_false", help="replay the prefix every time")
    p.add_argument("--out", help="output folder (default runs/resample/TASK)")
    p.add_argument("--rock-url", help="use this rock server instead of starting one (token: ROCK_API_TOKEN)")
    p.add_argument("--rock-token", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_resample)
