"""`roll data synth`: coverage statistics, the datasets, bad input, and (docker) teacher-driven iflow attempts in
sandboxes: `.venv/bin/pytest tests/roll/test_synth.py` (`-m "not docker"` for the fast part).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rock.contracts import Chunk, ToolResult, Trajectory
from roll.data.synth import coverage, failure_kind, read_dataset, recovered, write_datasets
from roll.data.teacher import load_tokenizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rome_dir(tmp_path_factory) -> Path:
    from rome.init import init_model

    return init_model(tmp_path_factory.mktemp("rome") / "tiny", "tiny")


def traj(tid: str, family: str, status: str, results: list[tuple[str, bool, bool]], turns: int = 3) -> Trajectory:
    chunks = [Chunk(trajectory_id=tid, sandbox_id="s", index=i, latency_s=0.1, created_at=0.0) for i in range(turns)]
    tool_results = [ToolResult(chunk_index=i, tool=t, parsed=p, ok=ok) for i, (t, p, ok) in enumerate(results)]
    reward = 1.0 if status == "resolved" else 0.0
    return Trajectory(trajectory_id=tid, task_id=tid, family=family, split="train", reward=reward, status=status,
                      chunks=chunks, tool_results=tool_results)  # fmt: skip


SHELL, READ = "run_shell_command", "read_file"
TRAJS = [
    # a typo then its fix, then a check: 1 recovered
    traj("a0", "alpha", "resolved", [(SHELL, True, False), (SHELL, True, True), (READ, True, True)], turns=4),
    # a malformed call then a good one, but the tests failed: a failure, not a recovery
    traj("a1", "alpha", "unresolved", [("write_file", False, False), (SHELL, True, True)], turns=3),
    # the last call failed and nothing came after it: not recovered
    traj("b0", "beta", "resolved", [(SHELL, True, True), (SHELL, True, False)], turns=3),
]


def test_recovered_counts_failures_fixed_later_in_resolved_attempts():
    assert [recovered(t) for t in TRAJS] == [1, 0, 0]


def test_coverage_by_family_and_overall():
    rows = {r.family: r for r in coverage(TRAJS)}
    assert list(rows) == ["alpha", "beta", "all"]
    a, b, total = rows["alpha"], rows["beta"], rows["all"]
    assert (a.attempts, a.verified, a.mean_turns, a.tool_calls, a.failed_calls, a.recovered) == (2, 1, 3.5, 5, 2, 1)
    assert a.tool_kinds == [READ, SHELL, "write_file"] and b.tool_kinds == [SHELL]
    assert (total.attempts, total.verified, total.failed_calls, total.recovered) == (3, 2, 3, 1)
    assert total.failures == {"tool_error": 2, "unparsed": 1}


def test_datasets_round_trip(tmp_path):
    report = write_datasets(TRAJS, tmp_path)
    assert [t.trajectory_id for t in read_dataset(tmp_path / "all.jsonl")] == ["a0", "a1", "b0"]
    assert [t.trajectory_id for t in read_dataset(tmp_path / "verified.jsonl")] == ["a0", "b0"]
    assert json.loads((tmp_path / "coverage.json").read_text())[-1]["family"] == "all"
    assert (report.trajectories, report.verified) == (3, 2)
    assert "alpha" in report.table().splitlines()[1]


def roll(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "roll.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (["--teacher", "gpt"], "unknown teacher 'gpt'"),
        (["--teacher", "oracle", "--mistake-rate", "1.5"], "--mistake-rate must be in [0, 1]"),
        (["--teacher", "oracle", "--attempts", "0"], "must be at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    proc = roll("data", "synth", "--tasks", "ale", "--out", str(tmp_path / "out"), *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("roll: error: ") and message in lines[0]
    assert not (tmp_path / "out").exists()


def test_an_out_dir_of_another_teacher_is_refused_before_anything_starts(tmp_path):
    (tmp_path / "attempts").mkdir()
    (tmp_path / "attempts/run.json").write_text(json.dumps({"agent": "iflow", "model": "http://127.0.0.1:1/v1"}))
    proc = roll("data", "synth", "--tasks", "ale", "--teacher", "oracle", "--out", str(tmp_path))
    assert proc.returncode == 2 and "holds data of teacher 'http://127.0.0.1:1/v1'" in proc.stderr, proc.stderr
    assert not (tmp_path / "rome-tiny").exists()


@pytest.mark.docker
@pytest.mark.slow
def test_oracle_synthesis_in_sandboxes_yields_verified_trajectories_with_token_ids_and_failed_calls(tmp_path):
    from roll.tasks.suite import FAMILIES

    wanted = ["create_file", "append_line", "read_then_write"]
    families = [f for f in wanted if f in FAMILIES]
    out = tmp_path / "synth"
    proc = roll("data", "synth", "--tasks", "ale", "--families", ",".join(families), "--per-family", "1",
                "--teacher", "oracle", "--attempts", "2", "--mistake-rate", "1.0", "--concurrency", "4",
                "--out", str(out), "--quiet", timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    every = read_dataset(out / "all.jsonl")
    verified = read_dataset(out / "verified.jsonl")
    assert len(every) == 2 * len(families) and len(verified) == len(every), [
        (t.task_id, t.status, t.error) for t in every
    ]
    tok = load_tokenizer(out / "rome-tiny")
    for t in verified:
        # every plan held a mistake (rate 1.0): a call that did not parse or failed, and its fix after it
        failed = [r for r in t.tool_results if not r.parsed or not r.ok]
        assert failed and recovered(t) >= 1, t.tool_results
        assert {failure_kind(r) for r in failed} <= {"unparsed", "command_not_found", "no_such_path"}
        assert all(r.chunk_index is not None for r in t.tool_results)
        for c in t.chunks:
            assert (
                c.prompt_token_ids and c.response_token_ids and c.response_logprobs == [0.0] * len(c.response_token_ids)
            )
            text = tok.apply_chat_template(c.messages, tools=c.tools, tokenize=False, add_generation_prompt=True)
            assert c.prompt_token_ids == tok.encode(text, add_special_tokens=False)
    cov = {r["family"]: r for r in json.loads((out / "coverage.json").read_text())}
    assert set(cov) == {*families, "all"} and cov["all"]["recovered"] >= len(verified)
    assert "verified" in proc.stdout and f"{len(verified)}/{len(every)} trajectories verified" in proc.stdout


@pytest.mark.docker
@pytest.mark.slow
def test_a_url_teacher_is_forwarded_as_it_is(tmp_path):
    """Any OpenAI-compatible model: here the oracle served apart, at 0 mistakes, reached only by its URL."""
    from roll.data.synth import synthesize
    from roll.data.teacher import OracleTeacher
    from roll.tasks.suite import generate

    task = generate("create_file", 0)
    with OracleTeacher([task], None, mistake_rate=0.0).serve() as server:
        report = synthesize([task], teacher=server.url, out_dir=tmp_path, progress=False, log=lambda s: None)
    assert (report.trajectories, report.verified, report.teacher) == (1, 1, server.url)
    (t,) = read_dataset(tmp_path / "verified.jsonl")
    assert t.tool_results and all(r.ok for r in t.tool_results)
    assert t.chunks[0].response.tool_calls[0].id.startswith("call_oracle_")
    assert t.chunks[0].prompt_token_ids is None  # no tokenizer: the teacher sends no ids and none are made up
    assert not (tmp_path / "rome-tiny").exists()


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("folder", ["terminal-bench", "harbor"])
def test_imported_tasks_are_synthesised_whatever_their_split(tmp_path, folder, rome_dir):
    """Terminal-Bench (graded by pytest's summary) and Harbor (reward file) folders, held-out by default."""
    tasks = ROOT / "tests/fixtures/tasks" / folder
    proc = roll("data", "synth", "--tasks", str(tasks), "--teacher", "oracle", "--mistake-rate", "1.0", "--out",
                str(tmp_path), "--tokenizer", str(rome_dir), "--quiet", timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    every = read_dataset(tmp_path / "all.jsonl")
    assert len(every) == len(list(tasks.iterdir())) and all(t.resolved and recovered(t) for t in every), every
