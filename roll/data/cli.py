"""`roll data synth --tasks ale --teacher oracle --out runs/synth [--attempts 2] [--mistake-rate 0.2]`.

`register(sub)` adds the `data` command group to roll's parser (roll/cli.py). Tests:
`.venv/bin/pytest tests/roll/test_synth.py`.
"""

from __future__ import annotations

import argparse
import sys


def cmd_synth(args: argparse.Namespace) -> int:
    from roll.data.synth import check_teacher, synthesize

    if args.attempts < 1 or args.concurrency < 1 or (args.per_family is not None and args.per_family < 1):
        raise ValueError("--attempts, --concurrency and --per-family must be at least 1")
    check_teacher(args.teacher, args.mistake_rate)
    from roll.tasks.loader import load_tasks

    families = [f for f in args.families.split(",") if f] if args.families else None
    # Training data comes from the train split of the suite; a folder's tasks are taken whatever their split.
    split = args.split or ("train" if args.tasks == "ale" else None)
    tasks, errors = load_tasks(args.tasks, families=families, split=split)
    for e in errors:
        print(f"roll: skipped: {e}", file=sys.stderr)
    if args.per_family:
        tasks = [t for i, t in enumerate(tasks) if sum(x.family == t.family for x in tasks[:i]) < args.per_family]
    if not tasks:
        where = (
            f"{args.tasks}"
            + (f" (split {split})" if split else "")
            + (f"; {len(errors)} failed to load" if errors else "")
        )
        raise ValueError(f"no tasks loaded from {where}")
    report = synthesize(
        tasks,
        teacher=args.teacher,
        out_dir=args.out,
        attempts=args.attempts,
        mistake_rate=args.mistake_rate,
        concurrency=args.concurrency,
        tokenizer=args.tokenizer,
        max_turns=args.max_turns,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(report.table())
    for line in report.failed:
        print(f"roll: attempt not run: {line}", file=sys.stderr)
    print(f"{report.verified}/{report.trajectories} trajectories verified; written to {args.out}/all.jsonl, "
          f"{args.out}/verified.jsonl and {args.out}/coverage.json")  # fmt: skip
    return 0 if report.trajectories else 1


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="trajectory data: synthesis by a teacher", description="Trajectory data.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    synth = data_sub.add_parser(
        "synth",
        help="teacher-driven iflow attempts in sandboxes, verified by the tasks' tests",
        description="A teacher drives the real iflow agent in ROCK sandboxes; every model call is recorded with "
        "its token ids and every attempt verified by its task's tests. Writes all.jsonl, verified.jsonl (one "
        "Trajectory per line) and coverage.json, and prints coverage by family.",
    )
    synth.add_argument("--tasks", required=True, help="ale (the generated suite) or a folder of task folders")
    synth.add_argument("--families", help="comma-separated families (default: all)")
    synth.add_argument("--per-family", type=int, help="at most this many tasks of each family (default: all)")
    synth.add_argument("--split", choices=["train", "heldout"], help="default: train for ale, every task of a folder")
    synth.add_argument(
        "--teacher", required=True, help="oracle (plays each task's solution as tool calls) or a model URL (.../v1)"
    )
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--attempts", type=int, default=1, help="attempts per task (default 1)")
    synth.add_argument("--mistake-rate", type=float, default=0.2, help="oracle: share of plans with a mistake")
    synth.add_argument("--concurrency", type=int, default=4, help="sandboxes at once (default 4)")
    synth.add_argument("--tokenizer", help="oracle: ROME model dir for token ids (default: ROME-tiny under --out)")
    synth.add_argument("--max-turns", type=int, help="iflow --max-turns (default: oracle's longest plan + 4; 30)")
    synth.add_argument("--seed", type=int, default=0, help="oracle: seed of its plans (default 0)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=cmd_synth)
