"""The harness without Docker: grading, statuses, the report, the resume log and `roll eval`'s bad input:
`.venv/bin/pytest tests/roll/test_eval.py`."""

from __future__ import annotations

import json

import pytest

from rock.contracts import Trajectory
from rock.models import ExecResult
from roll.cli import main
from roll.eval.cli import first_per_group, load
from roll.eval.results import AttemptRecord, EvalReport
from roll.eval.runner import evaluate, read_done
from roll.rollout.attempt import decide_status, pytest_passed
from roll.tasks.spec import Environment, TaskSpec

PYTEST_OK = """
============================= test session starts ==============================
collected 2 items
test_outputs.py ..                                                       [100%]
==================================== PASSES ====================================
=========================== short test summary info ============================
PASSED test_outputs.py::test_file_exists
PASSED test_outputs.py::test_content
============================== 2 passed in 0.02s ===============================
"""


def result(exit_code=0, timed_out=False, stderr="") -> ExecResult:
    return ExecResult(exit_code=exit_code, stdout="", stderr=stderr, duration_s=0.1, timed_out=timed_out)


def spec(i: int, family: str = "fam", split: str = "train") -> TaskSpec:
    return TaskSpec(id=f"{family}-{split}-{i}", instruction="do it", family=family, split=split,
                    environment=Environment(image="img"), tests={"run-tests.sh": "true"}, solution="true")  # fmt: skip


def test_pytest_grading_reads_the_rA_summary_and_falls_back_to_the_totals():
    assert pytest_passed(PYTEST_OK)
    failed = PYTEST_OK.replace("PASSED test_outputs.py::test_content", "FAILED test_outputs.py::test_content - x")
    assert not pytest_passed(failed)
    assert not pytest_passed(PYTEST_OK.replace("PASSED test_outputs.py::test_content", "ERROR test_outputs.py"))
    assert pytest_passed("..\n2 passed in 0.1s")  # no -rA: the totals line decides
    assert not pytest_passed("1 failed, 1 passed in 0.1s")
    assert not pytest_passed("no tests ran in 0.01s")
    assert not pytest_passed("bash: pytest: command not found")


@pytest.mark.parametrize(
    "agent, run, info, test, passed, status",
    [
        ("oracle", result(), None, result(), True, "resolved"),
        ("noop", None, None, result(1), False, "unresolved"),
        ("oracle", result(), None, result(None, timed_out=True), False, "test_timeout"),
        ("oracle", result(2, stderr="boom"), None, result(1), False, "agent_error"),
        ("iflow", result(None, timed_out=True), None, result(1), False, "agent_timeout"),
        ("iflow", result(1), {"termination_reason": "timeout"}, result(1), False, "agent_timeout"),
        ("iflow", result(2), {"termination_reason": "model_error", "error": "5xx"}, result(1), False, "model_error"),
        ("iflow", result(1), {"termination_reason": "format_error"}, result(1), False, "parse_error"),
        ("iflow", result(1), {"termination_reason": "max_turns"}, result(1), False, "unresolved"),
        ("iflow", result(0), {"termination_reason": "finished"}, result(1), False, "unresolved"),
        ("iflow", result(1, stderr="Traceback"), None, result(1), False, "agent_error"),
        ("iflow", result(1), {"termination_reason": "max_turns"}, result(0), True, "resolved"),
    ],
)
def test_statuses_are_told_apart(agent, run, info, test, passed, status):
    got, error = decide_status(agent, run, info, test, passed)
    assert got == status
    assert bool(error) == (status not in ("resolved", "unresolved"))


def record(task_id: str, family: str, split: str, status: str, attempt: int = 0) -> AttemptRecord:
    return AttemptRecord(task_id=task_id, attempt=attempt, family=family, split=split, agent="oracle", status=status,
                         reward=float(status == "resolved"), seconds=1.0, log_dir="/nonexistent",
                         trajectory_id=f"tr-{task_id}-{attempt}")  # fmt: skip


def test_report_gives_pass_rate_by_family_and_split_and_json():
    recs = [record("a1", "a", "train", "resolved"), record("a2", "a", "train", "unresolved"),
            record("a3", "a", "heldout", "resolved"), record("b1", "b", "heldout", "test_timeout")]  # fmt: skip
    report = EvalReport(agent="oracle", records=recs, trajectories=[r.trajectory() for r in recs])
    rows = {(r["family"], r["split"]): r for r in report.table()}
    assert rows[("a", "train")]["pass_rate"] == 0.5 and rows[("a", "heldout")]["pass_rate"] == 1.0
    assert rows[("b", "heldout")]["statuses"] == {"test_timeout": 1}
    assert rows[("all", "heldout")]["pass_rate"] == 0.5 and rows[("all", "all")]["resolved"] == 2
    data = json.loads(json.dumps(report.to_json()))
    assert data["totals"]["pass_rate"] == 0.5 and len(data["attempts"]) == 4
    assert "50.0%" in report.format_table() and "test_timeout 1" in report.format_table()
    assert isinstance(report.trajectories[0], Trajectory) and report.trajectories[0].status == "resolved"


def test_resume_log_ignores_a_torn_last_line(tmp_path):
    lines = [record("a1", "a", "train", "resolved").model_dump_json(), '{"task_id": "a2", "att']
    (tmp_path / "attempts.jsonl").write_text("\n".join(lines))
    assert list(read_done(tmp_path)) == [("a1", 0)]


def test_evaluate_skips_recorded_attempts_without_starting_anything(tmp_path):
    tasks = [spec(0), spec(1)]
    with open(tmp_path / "attempts.jsonl", "w") as f:
        for t in tasks:
            f.write(record(t.id, t.family, t.split, "resolved").model_dump_json() + "\n")
    seen = []
    # client=object(): would fail on first use; nothing is left to run, so it is never used.
    report = evaluate(tasks, agent="oracle", out_dir=tmp_path, client=object(), progress=False, log=seen.append)
    assert report.skipped == 2 and report.pass_rate == 1.0
    assert "2 attempts already recorded" in seen[0]
    assert json.loads((tmp_path / "results.json").read_text())["totals"]["skipped"] == 2


def test_an_out_dir_of_another_agent_is_refused(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"agent": "noop", "model": None}))
    with pytest.raises(ValueError, match="holds a run of agent noop"):
        evaluate([spec(0)], agent="oracle", out_dir=tmp_path, client=object(), progress=False)


def test_first_per_group_keeps_n_of_each_family_and_split():
    tasks = [spec(i, f, s) for f in ("a", "b") for s in ("train", "heldout") for i in range(3)]
    assert [t.id for t in first_per_group(tasks, 1)] == ["a-train-0", "a-heldout-0", "b-train-0", "b-heldout-0"]


def test_per_family_generates_that_many_of_the_suite():
    held = load("ale", ["create_file"], "heldout", 16)[0]
    assert [t.seed for t in held] == list(range(1000, 1016))  # not the suite's default 4, silently
    assert len(load("ale", ["create_file"], "heldout")[0]) == 4
    both = first_per_group(load("ale", ["make_dir"], None, 2)[0], 2)
    assert [t.id for t in both] == ["make_dir-0", "make_dir-1", "make_dir-1000", "make_dir-1001"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tasks", "ale", "--agent", "iflow"], "needs a model"),
        (["--tasks", "/nonexistent/tasks", "--agent", "oracle"], "nonexistent"),
        (["--tasks", "ale", "--agent", "oracle", "--families", "no_such_family"], "no_such_family"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert main(["eval", *argv, "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
