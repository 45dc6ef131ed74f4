"""`roll tasks list|show|export`: see and write out task instances (`pytest tests/roll/test_task_formats.py`).

    roll tasks list [--tasks ale|DIR] [--split heldout] [--families a,b]   # id, family, split, difficulty, steps
    roll tasks show ID [--tasks ale|DIR]                                   # task.yaml view, then every script
    roll tasks export DIR [--tasks ale|DIR] [--split S] [--families a,b] [--force]   # folders of our format

`--tasks` is `ale` (the generated suite, the default) or a directory of task folders in our format,
Terminal-Bench 1.x or Harbor. A folder that does not load is one `roll: skipped: FOLDER: FILE: FIELD: ...`
line on stderr; the others are listed or written, and the exit status is then 1. `register(sub)` adds the
command group to roll's parser (roll/cli.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from roll.tasks.spec import TaskSpec

TASKS_HELP = "'ale' (the generated suite) or a directory of task folders (ours, Terminal-Bench, Harbor)"


def _load(args: argparse.Namespace, filtered: bool = True) -> tuple[list[TaskSpec], int]:
    from roll.tasks.loader import load_tasks

    families = [f for f in args.families.split(",") if f] if filtered and args.families else None
    tasks, errors = load_tasks(args.tasks, families=families, split=args.split if filtered else None)
    for e in errors:
        print(f"roll: skipped: {e}", file=sys.stderr)
    return tasks, len(errors)


def cmd_list(args: argparse.Namespace) -> int:
    tasks, failed = _load(args)
    rows = [(t.id, t.family, t.split, t.difficulty, str(t.steps)) for t in tasks]
    head = ("id", "family", "split", "difficulty", "steps")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(f"{len(rows)} tasks" + (f", {failed} folders skipped" if failed else ""))
    return 1 if failed else 0


def render(spec: TaskSpec) -> str:
    """A task as `roll tasks show` prints it: its task.yaml, then each file of its folder."""
    from roll.tasks.loader import task_yaml

    env = spec.environment
    parts = [f"# {spec.id} (source: {spec.source}, grading: {spec.grading}, tests entry: {spec.test_entry})"]
    parts.append(task_yaml(spec).rstrip("\n"))
    files = [("setup.sh", env.setup)] if env.setup else []
    if env.dockerfile is not None:
        files += [("Dockerfile", env.dockerfile), *env.files.items()]
    files += [(f"tests/{k}", v) for k, v in spec.tests.items()]
    files += [("solution.sh", spec.solution), *((f"solution/{k}", v) for k, v in spec.solution_files.items())]
    for name, text in files:
        parts.append(f"\n----- {name} " + "-" * max(3, 60 - len(name)))
        parts.append(text.rstrip("\n"))
    if spec.source in ("terminal-bench", "harbor"):
        parts.append("\n(lines marked [ale:offline] were rewritten on import: see roll/tasks/formats/offline.py)")
    return "\n".join(parts)


def _generated(task_id: str) -> list[TaskSpec]:
    """The suite instance `family-seed` (any seed, not only those `generate_suite` lists by default)."""
    from roll.tasks.suite import FAMILIES, generate

    family, _, seed = task_id.rpartition("-")
    return [generate(family, int(seed))] if family in FAMILIES and seed.isdigit() else []


def cmd_show(args: argparse.Namespace) -> int:
    tasks = _generated(args.id) if args.tasks == "ale" else _load(args, filtered=False)[0]
    match = [t for t in tasks if t.id == args.id]
    if not match:
        raise ValueError(f"no task {args.id!r} in {args.tasks} (`roll tasks list --tasks {args.tasks}` lists them)")
    print(render(match[0]))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from roll.tasks.loader import write_task_dir

    tasks, failed = _load(args)
    out = Path(args.dir)
    for t in tasks:
        write_task_dir(t, out / t.id, overwrite=args.force)
    print(f"wrote {len(tasks)} task folders to {out}" + (f" ({failed} folders skipped)" if failed else ""))
    return 1 if failed else 0


def _source_args(p: argparse.ArgumentParser, filters: bool = True) -> None:
    p.add_argument("--tasks", default="ale", metavar="ale|DIR", help=TASKS_HELP + " (default: ale)")
    if filters:
        p.add_argument("--split", choices=["train", "heldout"], help="only this split")
        p.add_argument("--families", metavar="A,B", help="only these families (comma-separated)")


def register(sub: argparse._SubParsersAction) -> None:
    tasks = sub.add_parser(
        "tasks",
        help="list, show and export task instances (the suite or task folders)",
        description="See and write out task instances: the generated suite ('ale') or folders in our format, "
        "Terminal-Bench 1.x or Harbor / Terminal-Bench 2.0 (imported with the offline rule applied).",
    )
    cmds = tasks.add_subparsers(dest="tasks_command", required=True, metavar="SUBCOMMAND")
    ls = cmds.add_parser("list", help="a table of id, family, split, difficulty, steps")
    _source_args(ls)
    ls.set_defaults(func=cmd_list)
    show = cmds.add_parser("show", help="one task: its task.yaml and every script, as rewritten on import")
    show.add_argument("id", help="task id (`roll tasks list` shows them)")
    _source_args(show, filters=False)
    show.set_defaults(func=cmd_show)
    export = cmds.add_parser("export", help="write task folders of our format, one per task, under DIR")
    export.add_argument("dir", help="output directory; each task goes to DIR/<id>/")
    _source_args(export)
    export.add_argument("--force", action="store_true", help="replace task folders that exist already")
    export.set_defaults(func=cmd_export)
