"""`roll eval` end to end on real sandboxes: `.venv/bin/pytest tests/roll/test_eval_docker.py -m docker`.

The oracle resolves every family and split of the suite and the Terminal-Bench / Harbor fixture folders,
the no-op agent nothing; a hanging test is a test timeout and the run goes on; a broken folder is named
and the others run; a re-run resumes; Ctrl-C removes every sandbox; iflow runs against the scripted model
server and (slow) against `rome serve` on ROME-tiny.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iflow_cli.testing.scripted_server import ScriptedServer
from rock.launch import RockProcess
from roll.cli import main
from roll.eval.runner import evaluate
from roll.rollout.attempt import iflow_source_dir
from roll.tasks.spec import Environment, TaskSpec

pytestmark = [pytest.mark.docker, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests/fixtures/tasks"
ROLL = str(Path(sys.executable).with_name("roll"))


@pytest.fixture(scope="module")
def rock(docker_client, tmp_path_factory):
    with RockProcess(state_dir=tmp_path_factory.mktemp("rock"), allow_mounts=[str(iflow_source_dir())],
                     warm_pool=4) as proc:  # fmt: skip
        with proc.client() as client:
            yield proc, client


def roll_eval(rock, out: Path, *args: str) -> tuple[int, dict]:
    proc, _ = rock
    code = main(["eval", *args, "--out-dir", str(out), "--no-progress", "--rock-url", proc.url,
                 "--rock-token", proc.token])  # fmt: skip
    results = out / "results.json"
    return code, json.loads(results.read_text()) if results.is_file() else {}


def spec(name: str, **kw) -> TaskSpec:
    fields = dict(id=name, instruction=f"Copy /app/input.txt to /app/{name}.txt.", family="copy", split="heldout",
                  environment=Environment(image="rock/base:bookworm", setup="echo seed > input.txt"),
                  tests={"run-tests.sh": f'test "$(cat /app/{name}.txt)" = seed'},
                  solution=f"cp input.txt {name}.txt", test_timeout_s=30)  # fmt: skip
    return TaskSpec(**(fields | kw))


def test_oracle_resolves_one_of_every_family_and_split(rock, tmp_path):
    from roll.tasks.suite import FAMILIES

    code, res = roll_eval(rock, tmp_path, "--tasks", "ale", "--agent", "oracle", "--per-family", "1",
                          "--concurrency", "4")  # fmt: skip
    assert code == 0
    assert res["totals"]["by_status"] == {"resolved": res["totals"]["attempts"]}, res["by_family_split"]
    seen = {(r["family"], r["split"]) for r in res["attempts"]}
    assert {f for f, _ in seen} == set(FAMILIES)
    assert {s for _, s in seen} == {"train", "heldout"}
    assert all(("heldout" in {s for f2, s in seen if f2 == f}) for f in FAMILIES)


def test_noop_resolves_none_and_every_environment_comes_up(rock, tmp_path):
    code, res = roll_eval(rock, tmp_path, "--tasks", "ale", "--agent", "noop", "--per-family", "1", "--split",
                          "heldout", "--concurrency", "4")  # fmt: skip
    assert code == 0
    assert res["totals"]["resolved"] == 0
    assert res["totals"]["by_status"] == {"unresolved": res["totals"]["attempts"]}  # setups ran, tests said no


@pytest.mark.parametrize("fmt", ["terminal-bench", "harbor"])
def test_fixture_folders_in_their_own_formats_resolve_with_their_oracles(rock, tmp_path, fmt):
    folders = sorted(p for p in (FIXTURES / fmt).iterdir() if p.is_dir())
    assert folders, f"no {fmt} fixtures under {FIXTURES}"
    code, res = roll_eval(rock, tmp_path, "--tasks", str(FIXTURES / fmt), "--agent", "oracle", "--concurrency", "2")
    assert code == 0
    assert res["totals"]["attempts"] == len(folders)
    assert res["totals"]["by_status"] == {"resolved": len(folders)}, [a["error"] for a in res["attempts"]]
    noop_code, noop = roll_eval(rock, tmp_path / "noop", "--tasks", str(FIXTURES / fmt), "--agent", "noop")
    assert noop_code == 0 and noop["totals"]["resolved"] == 0


def test_a_broken_folder_is_named_and_the_others_run(rock, tmp_path, capsys):
    from roll.tasks.loader import write_task_dir

    tasks = tmp_path / "tasks"
    write_task_dir(spec("good"), tasks / "good")
    shutil.copytree(FIXTURES / "broken/no-tests", tasks / "no-tests")
    code, res = roll_eval(rock, tmp_path / "out", "--tasks", str(tasks), "--agent", "oracle")
    err = capsys.readouterr().err
    assert code == 0 and res["totals"]["by_status"] == {"resolved": 1}
    [line] = [x for x in err.splitlines() if "skipped a task" in x]
    assert "no-tests" in line and "tests/" in line


def test_hanging_test_is_a_test_timeout_and_the_run_goes_on(rock, tmp_path):
    _, client = rock
    hang = spec("hang", tests={"run-tests.sh": "sleep 600"}, test_timeout_s=2)
    bad_setup = spec("badsetup", environment=Environment(image="rock/base:bookworm", setup="echo no >&2; exit 3"))
    no_image = spec("noimage", environment=Environment(image="ale/no-such-image:1"))
    report = evaluate([hang, spec("ok"), bad_setup, no_image], agent="oracle", out_dir=tmp_path, client=client,
                      progress=False, log=lambda s: None)  # fmt: skip
    status = {r.task_id: r.status for r in report.records}
    assert status == {"hang": "test_timeout", "ok": "resolved", "badsetup": "environment_error",
                      "noimage": "environment_error"}  # fmt: skip
    errors = {r.task_id: r.error for r in report.records}
    assert "exited 3" in errors["badsetup"] and "ale/no-such-image:1" in errors["noimage"]
    hang_log = tmp_path / "logs/hang/attempt-0"
    assert {"tests.log", "trajectory.json", "agent.stdout"} <= {p.name for p in hang_log.iterdir()}
    assert (tmp_path / "logs/badsetup/attempt-0/setup.log").read_text().count("no") >= 1
    live = {s.id for s in client.list_sandboxes()}
    assert not live & {t.sandbox_id for t in report.trajectories}  # each deleted in its attempt's `finally`


def test_a_rerun_skips_the_attempts_already_done(rock, tmp_path):
    _, client = rock
    tasks = [spec("a"), spec("b"), spec("c")]
    first = evaluate(tasks, agent="oracle", out_dir=tmp_path, client=client, attempts=2, progress=False,
                     log=lambda s: None)  # fmt: skip
    assert len(first.records) == 6 and first.pass_rate == 1.0
    journal = tmp_path / "attempts.jsonl"
    lines = journal.read_text().splitlines()
    kept = [ln for ln in lines if json.loads(ln)["task_id"] != "b"]
    journal.write_text("\n".join(kept) + "\n" + '{"task_id": "b", "attem')  # as a kill mid-write leaves it
    said = []
    again = evaluate(
        tasks, agent="oracle", out_dir=tmp_path, client=client, attempts=2, progress=False, log=said.append
    )
    assert again.skipped == 4 and "4 attempts already recorded" in said[0]
    assert len(again.records) == 6 and again.pass_rate == 1.0
    ids_before = {json.loads(ln)["trajectory_id"] for ln in kept}
    rerun = [r for r in again.records if r.trajectory_id not in ids_before]
    assert sorted((r.task_id, r.attempt) for r in rerun) == [("b", 0), ("b", 1)]


def test_iflow_against_the_scripted_model_yields_chunks_and_tool_results(rock, tmp_path):
    from roll.tasks.loader import write_task_dir

    write_task_dir(spec("iflow"), tmp_path / "tasks/iflow")
    script = [
        {"tool_calls": [{"name": "run_shell_command", "arguments": {"command": "cat /app/missing.txt"}}]},
        {"tool_calls": [{"name": "run_shell_command", "arguments": {"command": "cp /app/input.txt /app/iflow.txt"}}]},
        "Copied.",
    ]
    with ScriptedServer(script) as model:
        code, res = roll_eval(rock, tmp_path / "out", "--tasks", str(tmp_path / "tasks"), "--agent", "iflow",
                              "--model-url", model.url, "--max-turns", "5")  # fmt: skip
    assert code == 0 and res["totals"]["by_status"] == {"resolved": 1}
    from rock.contracts import Trajectory

    log_dir = Path(res["attempts"][0]["log_dir"])
    traj = Trajectory.model_validate_json((log_dir / "trajectory.json").read_text())
    assert len(traj.chunks) == 3 and all(c.prompt_token_ids and c.response_token_ids for c in traj.chunks)
    assert [(t.chunk_index, t.ok, t.exit_code) for t in traj.tool_results] == [(0, False, 1), (1, True, 0)]
    assert "missing.txt" in traj.tool_results[0].error
    info = json.loads((log_dir / "execution-info.json").read_text())
    assert info["termination_reason"] == "finished"


def test_iflow_with_its_own_rock_server_under_a_relative_out_dir(docker_client, tmp_path, monkeypatch):
    # evaluate() starts rock serve with its state (the sandboxes' model sockets) under out_dir; docker refuses
    # a relative bind-mount source, so a relative out_dir (the CLI's default runs/eval/...) must still work.
    monkeypatch.chdir(tmp_path)
    script = [{"tool_calls": [{"name": "run_shell_command", "arguments": {"command": "cp input.txt rel.txt"}}]}, "ok"]
    with ScriptedServer(script) as model:
        report = evaluate([spec("rel")], agent="iflow", out_dir=Path("runs/eval/rel"), model_url=model.url,
                          progress=False, log=lambda _: None)  # fmt: skip
    assert [r.status for r in report.records] == ["resolved"]
    assert len(report.trajectories[0].chunks) == 2


def test_ctrl_c_removes_every_sandbox_and_exits_130(docker_client, tmp_path):
    from roll.tasks.loader import write_task_dir

    for i in range(3):
        write_task_dir(spec(f"slow{i}", solution="sleep 300", agent_timeout_s=600), tmp_path / f"tasks/slow{i}")
    out = tmp_path / "out"
    argv = [
        ROLL,
        "eval",
        "--tasks",
        str(tmp_path / "tasks"),
        "--agent",
        "oracle",
        "--out-dir",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while not _containers(docker_client, out):
            assert time.monotonic() < deadline and proc.poll() is None, "no sandbox appeared"
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        text, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, text[-2000:]
    assert "interrupted" in text and _containers(docker_client, out) == []


def _containers(docker_client, out: Path) -> list:
    try:
        manager = (out / "rock/manager_id").read_text().strip()
    except OSError:
        return []
    return docker_client.containers.list(all=True, filters={"label": [f"ale.rock.manager={manager}", "ale.rock=1"]})


def test_iflow_on_rome_tiny_runs_end_to_end(rock, tmp_path):
    """The baseline: random-init ROME-tiny behind `rome serve` on vLLM; its pass rate is about 0."""
    from rome.init import init_model

    model_dir = init_model(tmp_path / "tiny", config="tiny", seed=0)
    code, res = roll_eval(rock, tmp_path / "out", "--tasks", "ale", "--families", "create_file", "--split", "heldout",
                          "--per-family", "2", "--agent", "iflow", "--model", str(model_dir), "--engine", "vllm",
                          "--max-turns", "2", "--max-tokens", "16")  # fmt: skip
    assert code == 0, res
    assert res["totals"]["attempts"] == 2
    for attempt in res["attempts"]:
        assert attempt["status"] in ("unresolved", "parse_error", "resolved"), attempt
        from rock.contracts import Trajectory

        traj = Trajectory.model_validate_json((Path(attempt["log_dir"]) / "trajectory.json").read_text())
        assert traj.chunks and traj.chunks[0].response_token_ids and traj.policy_versions == [0]


@pytest.mark.parametrize(
    "script, status",
    [
        ([{"status": 400, "body": "the model refuses"}] * 4, "model_error"),
        ([{"tool_calls": [{"name": "no_such_tool", "arguments": {}}]}] * 6, "parse_error"),
        ([{"tool_calls": [{"name": "run_shell_command", "arguments": {"command": "sleep 60"}}]}], "agent_timeout"),
    ],
    ids=["model_error", "parse_error", "agent_timeout"],
)
def test_iflow_failure_modes_are_told_apart(rock, tmp_path, script, status):
    _, client = rock
    with ScriptedServer(script) as model:
        report = evaluate([spec("fails", agent_timeout_s=8)], agent="iflow", out_dir=tmp_path, client=client,
                          model_url=model.url, progress=False, log=lambda s: None)  # fmt: skip
    [traj] = report.trajectories
    assert (traj.status, traj.reward) == (status, 0.0), traj.error
    assert traj.error


def test_an_image_that_fails_to_build_marks_only_its_task(rock, tmp_path):
    _, client = rock
    broken = spec(
        "nobuild", environment=Environment(dockerfile="FROM rock/base:bookworm\nRUN echo step-failed && exit 7\n")
    )
    report = evaluate([broken, spec("fine")], agent="oracle", out_dir=tmp_path, client=client, progress=False,
                      log=lambda s: None)  # fmt: skip
    status = {r.task_id: (r.status, r.error) for r in report.records}
    assert status["fine"] == ("resolved", "")
    assert status["nobuild"][0] == "environment_error" and "build" in status["nobuild"][1]
    assert "step-failed" in (tmp_path / "logs/nobuild/attempt-0/environment.log").read_text()
