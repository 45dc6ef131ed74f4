"""`roll eval --tasks ale|DIR [--split heldout] [--families a,b] --agent iflow|oracle|noop
[--model-url URL | --model DIR] [--concurrency N] [--attempts K] [-o results.json] [--out-dir DIR]`.

Loads the tasks (a task folder that does not load is one line on stderr; the others still run), serves
`--model DIR` with `rome serve` when asked, starts its own `rock serve` unless `--rock-url` names one,
runs `roll.eval.runner.evaluate` with a progress bar, and prints pass rates by family and split. A re-run
of the same command resumes (`--out-dir` defaults to a name made of the arguments). Exit status: 0 when
every attempt ran, 1 when some could not (infrastructure; re-run to retry them), 2 on bad input, 130 on
Ctrl-C or SIGTERM after removing every sandbox.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
from pathlib import Path

from roll.errors import RollError
from roll.rollout.attempt import AGENTS
from roll.tasks.spec import TaskSpec


def load(
    source: str, families: list[str] | None, split: str | None, per_family: int | None = None
) -> tuple[list[TaskSpec], list]:
    """(tasks, loading errors) from the suite (`ale`) or a folder of task folders. With `per_family`, the suite is
    generated with that many instances of each family and split (not its defaults, 8 train and 4 held-out)."""
    try:
        from roll.tasks.loader import load_tasks
    except ImportError:
        load_tasks = None
    if source == "ale":
        try:
            from roll.tasks.suite import FAMILIES
        except ImportError as e:
            raise RollError("the generated suite (roll.tasks.suite) is not installed") from e
        unknown = sorted(set(families or []) - set(FAMILIES))
        if unknown:
            raise RollError(f"unknown task families {', '.join(unknown)}; known: {', '.join(sorted(FAMILIES))}")
        if per_family:
            from roll.tasks.suite import generate_suite

            return generate_suite(families, split, train_per_family=per_family, heldout_per_family=per_family), []
    if load_tasks is not None:
        return load_tasks(source, families=families, split=split)
    if source == "ale":
        from roll.tasks.suite import generate_suite

        return generate_suite(families, split), []
    raise RollError("loading task folders needs roll.tasks.loader, which is not installed")


def first_per_group(tasks: list[TaskSpec], n: int) -> list[TaskSpec]:
    """The first `n` tasks of each (family, split), in their order."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for t in tasks:
        key = (t.family, t.split)
        if seen.get(key, 0) < n:
            seen[key] = seen.get(key, 0) + 1
            out.append(t)
    return out


def default_out_dir(args: argparse.Namespace) -> Path:
    """runs/eval/<tasks>-<split>-<agent>[-<hash of the selection>]: the same command finds the same dir."""
    src = "ale" if args.tasks == "ale" else Path(args.tasks).resolve().name
    name = f"{src}-{args.split or 'all'}-{args.agent}"
    extra = [args.families or "", str(args.per_family or ""), args.model or args.model_url or ""]
    if any(extra):
        name += "-" + hashlib.sha256("|".join(extra).encode()).hexdigest()[:8]
    return Path("runs/eval") / name


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def cmd_eval(args: argparse.Namespace) -> int:
    from roll.eval.runner import evaluate

    if args.agent == "iflow" and not (args.model_url or args.model or args.rock_url):
        raise RollError("--agent iflow needs a model: --model-url URL or --model DIR")
    families = [f.strip() for f in args.families.split(",") if f.strip()] if args.families else None
    tasks, load_errors = load(args.tasks, families, args.split, args.per_family)
    for err in load_errors:
        print(f"roll eval: skipped a task: {err}", file=sys.stderr)
    if args.per_family:
        tasks = first_per_group(tasks, args.per_family)
    if not tasks:
        raise RollError(f"no tasks to run from {args.tasks}" + (f" (split {args.split})" if args.split else ""))
    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir(args)
    options = {
        "max_turns": args.max_turns,
        "max_tokens": args.max_tokens,
        "timeout_s": args.agent_timeout,
        "temperature": args.temperature,
    }
    print(f"roll eval: {len(tasks)} tasks x {args.attempts} attempts, agent {args.agent}, "
          f"concurrency {args.concurrency}; logs in {out_dir}", flush=True)  # fmt: skip
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    server = client = None
    try:
        model_url = args.model_url
        if args.model:
            from roll.eval.model_server import RomeServer

            server = RomeServer(args.model, out_dir / "rome-serve.log", engine=args.engine)
            print(f"roll eval: serving {args.model} with rome serve ({args.engine}) ...", flush=True)
            model_url = server.start()
        if args.rock_url:
            from rock.sdk import Client

            client = Client(args.rock_url, args.rock_token)
        report = evaluate(tasks, agent=args.agent, out_dir=out_dir, model_url=model_url, concurrency=args.concurrency,
                          attempts=args.attempts, client=client, progress=not args.no_progress,
                          agent_options={k: v for k, v in options.items() if v is not None},
                          model_name=str(Path(args.model).resolve()) if args.model else None)  # fmt: skip
    except KeyboardInterrupt:
        print(f"roll eval: interrupted; every sandbox removed; finished attempts are in {out_dir}/attempts.jsonl "
              "(run the same command again to resume)", file=sys.stderr)  # fmt: skip
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if client is not None:
            client.close()
        if server is not None:
            server.stop()
    report.print_table()
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report.to_json(), indent=1) + "\n")
    print(f"roll eval: pass rate {report.pass_rate:.1%} over {len(report.records)} attempts"
          f"{f' ({report.skipped} from an earlier run)' if report.skipped else ''}; results in "
          f"{args.output or out_dir / 'results.json'}")  # fmt: skip
    for line in report.failed:
        print(f"roll eval: attempt could not run: {line}", file=sys.stderr)
    if load_errors:
        print(f"roll eval: {len(load_errors)} task folders did not load (see above)", file=sys.stderr)
    return 1 if report.failed else 0


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate an agent on tasks: pass rate by family and split",
        description="Run an agent on task instances, each attempt in a fresh ROCK sandbox, grade each with the "
        "task's tests, and print pass rates by family and split. Results, per-attempt logs and the resume log "
        "(attempts.jsonl) go to --out-dir; re-running the same command skips the attempts already done.",
    )
    p.add_argument("--tasks", required=True, metavar="ale|DIR", help="the generated suite, or a folder of task folders")
    p.add_argument("--split", choices=["train", "heldout"], help="only this split (default: both)")
    p.add_argument("--families", metavar="A,B", help="only these families (comma-separated)")
    p.add_argument(
        "--per-family",
        type=int,
        metavar="N",
        help="only the first N tasks of each family and split (ale: N are generated)",
    )
    p.add_argument(
        "--agent", required=True, choices=AGENTS, help="iflow (needs a model), oracle (golden solution), noop"
    )
    model = p.add_mutually_exclusive_group()
    model.add_argument(
        "--model-url", metavar="URL", help="OpenAI-compatible endpoint for iflow, e.g. http://127.0.0.1:8000/v1"
    )
    model.add_argument("--model", metavar="DIR", help="HF model dir to serve with `rome serve` for the run")
    p.add_argument(
        "--engine", choices=["vllm", "hf"], default="vllm", help="rome serve engine for --model (default vllm)"
    )
    p.add_argument("--concurrency", type=int, default=4, help="attempts at once (default 4)")
    p.add_argument("--attempts", type=int, default=1, help="attempts per task (default 1)")
    p.add_argument("--max-turns", type=int, help="iflow --max-turns (default 10)")
    p.add_argument("--max-tokens", type=int, help="cap on each completion (IFLOW_MAX_TOKENS)")
    p.add_argument(
        "--temperature",
        type=float,
        metavar="T",
        help="sampling temperature of the agent's model calls (default: the server's, 1.0; 0 = greedy)",
    )
    p.add_argument("--agent-timeout", type=float, help="seconds per agent run (default: each task's own)")
    p.add_argument("-o", "--output", metavar="results.json", help="also write the results JSON here")
    p.add_argument("--out-dir", help="results, logs and the resume log (default runs/eval/<from the arguments>)")
    p.add_argument("--rock-url", help="use this rock server instead of starting one (token: ROCK_API_TOKEN)")
    p.add_argument("--rock-token", help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)
