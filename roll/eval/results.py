"""What an evaluation yields: one record per attempt, pass rates by family and split, results.json
(`.venv/bin/pytest tests/roll/test_eval.py`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from rock.contracts import Trajectory


class AttemptRecord(BaseModel):
    """One finished attempt, as appended to `attempts.jsonl` (the resume log) and listed in results.json."""

    model_config = ConfigDict(extra="forbid")
    task_id: str
    attempt: int  # 0-based index among the K attempts at this task
    family: str
    split: str
    agent: str
    status: str
    reward: float
    seconds: float
    log_dir: str
    trajectory_id: str
    error: str = ""

    @classmethod
    def of(cls, traj: Trajectory, attempt: int, log_dir: Path) -> AttemptRecord:
        return cls(task_id=traj.task_id, attempt=attempt, family=traj.family, split=traj.split, agent=traj.agent,
                   status=traj.status, reward=traj.reward, seconds=round(traj.seconds, 3), log_dir=str(log_dir),
                   trajectory_id=traj.trajectory_id, error=traj.error)  # fmt: skip

    def trajectory(self) -> Trajectory:
        """The attempt's Trajectory from its log folder, or one without chunks when the file is gone."""
        path = Path(self.log_dir) / "trajectory.json"
        if path.is_file():
            try:
                return Trajectory.model_validate_json(path.read_text())
            except ValueError:
                pass
        return Trajectory(trajectory_id=self.trajectory_id, task_id=self.task_id, family=self.family, split=self.split,
                          reward=self.reward, status=self.status, agent=self.agent, seconds=self.seconds,
                          error=self.error)  # fmt: skip


class EvalReport(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    agent: str
    records: list[AttemptRecord]  # every attempt of the run, those of earlier (resumed) runs included
    trajectories: list[Trajectory]
    skipped: int = 0  # attempts already recorded in attempts.jsonl and not run again
    failed: list[str] = []  # attempts that could not run for a reason of the infrastructure (re-run to retry)
    seconds: float = 0.0

    @property
    def pass_rate(self) -> float:
        return sum(r.status == "resolved" for r in self.records) / len(self.records) if self.records else 0.0

    def table(self) -> list[dict]:
        """Rows by (family, split), then one row `all`: attempts, resolved, pass_rate, and counts by status."""
        groups: dict[tuple[str, str], list[AttemptRecord]] = {}
        for r in self.records:
            groups.setdefault((r.family, r.split), []).append(r)
        rows = [_row(f, s, rs) for (f, s), rs in sorted(groups.items())]
        by_split: dict[str, list[AttemptRecord]] = {}
        for r in self.records:
            by_split.setdefault(r.split, []).append(r)
        if len(by_split) > 1:
            rows += [_row("all", s, rs) for s, rs in sorted(by_split.items())]
        rows.append(_row("all", "all", self.records))
        return rows

    def to_json(self) -> dict:
        counts = Counter(r.status for r in self.records)
        return {
            "agent": self.agent,
            "totals": {"attempts": len(self.records), "resolved": counts["resolved"],
                       "pass_rate": round(self.pass_rate, 4), "by_status": dict(sorted(counts.items())),
                       "skipped": self.skipped, "failed": len(self.failed), "seconds": round(self.seconds, 1)},
            "by_family_split": self.table(),
            "attempts": [r.model_dump() for r in self.records],
            "failed": self.failed,
        }  # fmt: skip

    def format_table(self) -> str:
        """The table as plain text (what `roll eval` prints when rich is not installed)."""
        head = f"{'family':<22} {'split':<8} {'attempts':>8} {'resolved':>8} {'pass':>7}  statuses"
        lines = [head, "-" * len(head)]
        for row in self.table():
            lines.append(f"{row['family']:<22} {row['split']:<8} {row['attempts']:>8} {row['resolved']:>8} "
                         f"{row['pass_rate']:>7.1%}  {_statuses(row)}")  # fmt: skip
        return "\n".join(lines)

    def print_table(self) -> None:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            print(self.format_table())
            return
        table = Table(title=f"roll eval — agent {self.agent}")
        for name, justify in (("family", "left"), ("split", "left"), ("attempts", "right"), ("resolved", "right"),
                              ("pass rate", "right"), ("statuses", "left")):  # fmt: skip
            table.add_column(name, justify=justify)
        for row in self.table():
            style = "bold" if row["family"] == "all" else None
            table.add_row(row["family"], row["split"], str(row["attempts"]), str(row["resolved"]),
                          f"{row['pass_rate']:.1%}", _statuses(row), style=style)  # fmt: skip
        Console().print(table)


def _row(family: str, split: str, records: list[AttemptRecord]) -> dict:
    counts = Counter(r.status for r in records)
    n = len(records)
    return {"family": family, "split": split, "attempts": n, "resolved": counts["resolved"],
            "pass_rate": round(counts["resolved"] / n, 4) if n else 0.0, "statuses": dict(sorted(counts.items()))}  # fmt: skip


def _statuses(row: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in row["statuses"].items() if k != "resolved")
