"""Verified trajectory synthesis: `roll data synth --tasks ale --teacher oracle --out runs/synth --attempts 2`.

A teacher drives the real iflow loop in ROCK sandboxes (`roll.eval.runner.evaluate` with agent iflow); the
gateway records every model call as a chunk with its token ids, and the task's tests verify each attempt.
The teacher is `oracle` (roll/data/teacher.py, served here on loopback, with a ROME tokenizer so that the
chunks carry ROME's token ids) or the URL of any OpenAI-compatible model (forwarded as it is).

Writes to `--out`: `all.jsonl` and `verified.jsonl` (one `rock.contracts.Trajectory` per line; verified =
resolved by its tests), `coverage.json` (by family: attempts, verified, mean turns, tool kinds, failed tool
calls, errors recovered), the harness's own `attempts/` (per-attempt logs; a re-run resumes there), and
`rome-tiny/` when no `--tokenizer` is given. Tests: `.venv/bin/pytest tests/roll/test_synth.py`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from rock.contracts import ToolResult, Trajectory
from roll.data.teacher import MISTAKES, TEACHERS, OracleTeacher, TeacherError, load_tokenizer, make_plan
from roll.tasks.spec import TaskSpec

ALL, VERIFIED, COVERAGE = "all.jsonl", "verified.jsonl", "coverage.json"
TURN_MARGIN = 4  # model calls allowed beyond the oracle's longest plan (a retried call, a format re-prompt)


class FamilyCoverage(BaseModel):
    """What the data of one family (or of all, family "all") holds."""

    model_config = ConfigDict(extra="forbid")
    family: str
    attempts: int = 0
    verified: int = 0
    mean_turns: float = 0.0  # model calls (chunks) per attempt
    tool_kinds: list[str] = []  # the tools called by name, whether the call parsed or not
    tool_calls: int = 0
    failed_calls: int = 0  # did not parse, or ran and failed
    recovered: int = 0  # failed calls of a resolved attempt that a successful call came after
    failures: dict[str, int] = {}  # failed calls by kind (failure_kind)


class SynthReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out_dir: str
    teacher: str
    trajectories: int
    verified: int
    coverage: list[FamilyCoverage]
    seconds: float = 0.0
    failed: list[str] = []  # attempts the harness could not run (infrastructure), not recorded

    def table(self) -> str:
        head = ["family", "attempts", "verified", "turns", "calls", "failed", "recovered", "tool kinds"]
        rows = [
            [
                c.family,
                c.attempts,
                c.verified,
                f"{c.mean_turns:.1f}",
                c.tool_calls,
                c.failed_calls,
                c.recovered,
                ",".join(c.tool_kinds),
            ]  # fmt: skip
            for c in self.coverage
        ]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
        return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)) for r in [head, *rows])


def recovered(traj: Trajectory) -> int:
    """Failed tool calls that a successful call came after, in an attempt its tests resolved."""
    if not traj.resolved:
        return 0
    results = traj.tool_results
    return sum(1 for i, r in enumerate(results) if not r.ok and any(x.ok for x in results[i + 1 :]))


def failure_kind(r: ToolResult) -> str:
    """What kind of failure a failed call was: unparsed (no name, bad JSON, missing argument), a command
    that does not exist, a path that does not, another non-zero exit, or another tool error."""
    if not r.parsed:
        return "unparsed"
    if r.exit_code == 127:
        return "command_not_found"
    if "No such file" in r.error or "not a directory" in r.error:
        return "no_such_path"
    return "exit_nonzero" if r.exit_code else "tool_error"


def family_coverage(family: str, trajs: list[Trajectory]) -> FamilyCoverage:
    results = [r for t in trajs for r in t.tool_results]
    return FamilyCoverage(
        family=family,
        attempts=len(trajs),
        verified=sum(t.resolved for t in trajs),
        mean_turns=round(sum(len(t.chunks) for t in trajs) / len(trajs), 2) if trajs else 0.0,
        tool_kinds=sorted({r.tool for r in results if r.tool not in ("", "?")}),  # "?": a call with no readable name
        tool_calls=len(results),
        failed_calls=sum(not r.ok for r in results),
        recovered=sum(recovered(t) for t in trajs),
        failures=dict(sorted(Counter(failure_kind(r) for r in results if not r.ok).items())),
    )


def coverage(trajs: list[Trajectory]) -> list[FamilyCoverage]:
    """By family in order of first appearance, then "all"."""
    families = list(dict.fromkeys(t.family for t in trajs))
    rows = [family_coverage(f, [t for t in trajs if t.family == f]) for f in families]
    return rows + [family_coverage("all", trajs)]


def write_datasets(trajs: list[Trajectory], out_dir: Path) -> SynthReport:
    """all.jsonl, verified.jsonl and coverage.json, each written whole to a temp file and renamed into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    verified = [t for t in trajs if t.resolved]
    for name, items in ((ALL, trajs), (VERIFIED, verified)):
        tmp = out_dir / (name + ".tmp")
        tmp.write_text("".join(t.model_dump_json() + "\n" for t in items))
        tmp.replace(out_dir / name)
    rows = coverage(trajs)
    tmp = out_dir / (COVERAGE + ".tmp")
    tmp.write_text(json.dumps([r.model_dump() for r in rows], indent=1) + "\n")
    tmp.replace(out_dir / COVERAGE)
    return SynthReport(out_dir=str(out_dir), teacher="", trajectories=len(trajs), verified=len(verified), coverage=rows)


def read_dataset(path: str | Path) -> list[Trajectory]:
    """The trajectories of an all.jsonl / verified.jsonl."""
    return [Trajectory.model_validate_json(line) for line in Path(path).read_text().splitlines() if line.strip()]


def tokenizer_dir(out_dir: Path, given: str | Path | None) -> Path:
    """The ROME model dir whose tokenizer gives the oracle's token ids: the given one, else ROME-tiny's
    made once under the out dir by `rome init` (about 5 s)."""
    if given:
        return Path(given)
    path = out_dir / "rome-tiny"
    if not (path / "tokenizer_config.json").is_file():
        from rome.init import init_model

        init_model(path, "tiny")
    return path


def oracle_turns(tasks: list[TaskSpec]) -> int:
    """iflow's --max-turns for the oracle: its longest plan (with a mistake) and a margin."""
    return max(len(make_plan(t, "0" * 12, 1.0).steps) for t in tasks) + TURN_MARGIN


def check_teacher(teacher: str, mistake_rate: float = 0.2) -> None:
    """A teacher name of TEACHERS or a model URL, and a usable mistake rate; raises TeacherError."""
    if teacher not in TEACHERS and not teacher.startswith(("http://", "https://")):
        raise TeacherError(f"unknown teacher {teacher!r}: use {' or '.join(TEACHERS)} or a model URL (http://.../v1)")
    if not 0.0 <= mistake_rate <= 1.0:
        raise TeacherError(f"--mistake-rate must be in [0, 1], got {mistake_rate}")


def check_resumable(out: Path, teacher_name: str) -> None:
    """A re-run resumes the attempts in `out` (the harness skips recorded ones) only with the same teacher."""
    run = out / "attempts" / "run.json"  # written by roll.eval.runner.evaluate
    theirs = json.loads(run.read_text()).get("model") if run.is_file() else teacher_name
    if theirs != teacher_name:
        raise TeacherError(f"{out} holds data of teacher {theirs!r}, not of {teacher_name!r}; choose another --out")


def synthesize(
    tasks: list[TaskSpec],
    *,
    teacher: str,
    out_dir: str | Path,
    attempts: int = 1,
    mistake_rate: float = 0.2,
    concurrency: int = 4,
    tokenizer: str | Path | None = None,
    max_turns: int | None = None,
    seed: int = 0,
    client=None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> SynthReport:
    """Run `attempts` teacher-driven iflow attempts at every task in sandboxes and write the datasets."""
    from roll.eval.runner import evaluate

    if not tasks:
        raise TeacherError("no tasks to synthesise from")
    check_teacher(teacher, mistake_rate)
    out = Path(out_dir)
    name = f"{teacher} teacher (mistake rate {mistake_rate}, seed {seed})" if teacher in TEACHERS else teacher
    check_resumable(out, name)
    server = None
    if teacher in TEACHERS:
        tok = load_tokenizer(tokenizer_dir(out, tokenizer))
        server = TEACHERS[teacher](tasks, tok, mistake_rate, MISTAKES, seed).serve()
        url, turns = server.url, oracle_turns(tasks)
    else:
        url, turns = teacher, 30
    try:
        report = evaluate(tasks, agent="iflow", out_dir=out / "attempts", model_url=url, concurrency=concurrency,
                          attempts=attempts, client=client, progress=progress, model_name=name,
                          agent_options={"max_turns": max_turns or turns}, log=log)  # fmt: skip
    finally:
        if server is not None:
            server.stop()
    result = write_datasets(report.trajectories, out)
    return result.model_copy(update={"teacher": name, "seconds": round(report.seconds, 1), "failed": report.failed})


__all__ = ["OracleTeacher", "SynthReport", "coverage", "read_dataset", "synthesize", "write_datasets"]
