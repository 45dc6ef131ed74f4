"""`roll train ... --resume` after `kill -9` (`.venv/bin/pytest tests/roll/test_resume.py`; the end-to-end test is
`slow` and `docker`, about 2.5 minutes: a real `roll train` whose inference worker is killed, resumed and killed
with SIGKILL, then resumed to the end). The fast tests check the refusals (nothing to resume, another config, another model shape, a run dir
that would be overwritten) and the roll-back of what an unfinished iteration wrote.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from roll.config import load_config
from roll.resume import (
    CONFIG_FILE,
    DriverState,
    ResumeError,
    check,
    check_model,
    latest,
    load_point,
    record_bytes,
    roll_back,
    start_fresh,
    trained_groups,
    write_checkpoint,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs/rl/tiny-cpu.yaml"
ROLL = str(Path(sys.executable).with_name("roll"))
RNG = json.loads(json.dumps(random.Random(7).getstate()))


def cfg_in(tmp_path: Path, *overrides: str):
    return load_config(TINY, [f"runs_dir={tmp_path}", "name=r", "curriculum.enabled=false", *overrides])


def fake_trainer(shape: dict | None = None):
    def save(d: Path) -> None:
        d.mkdir()
        (d / "trainer.json").write_text(json.dumps({"version": 1, "model_shape": shape or {"hidden_size": 64}}))

    return save


def complete(cfg, it: int, version: int, rows: int = 2) -> Path:
    """What iteration `it` leaves: its rows in the records, its attempts, its policy, then its checkpoint."""
    run_dir = cfg.run_dir.resolve()
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iteration": it}) + "\n")
    with open(run_dir / "trajectories.jsonl", "a") as f:
        for i in range(rows):
            f.write(json.dumps({"iteration": it, "trajectory_id": f"t{it}-{i}", "group": it}) + "\n")
            (run_dir / "attempts" / f"it{it}" / f"t{it}-{i}").mkdir(parents=True)
            (run_dir / "attempts" / f"it{it}" / f"t{it}-{i}" / "trajectory.json").write_text("{}")
    (run_dir / "policy" / f"v{version}").mkdir(parents=True)
    state = DriverState(iteration=it, mode="sync", policy_version=version, skipped_in_row=[], rng=RNG,
                        record_bytes=record_bytes(run_dir))  # fmt: skip
    return write_checkpoint(run_dir, state, fake_trainer())


def test_a_run_dir_with_completed_iterations_is_not_overwritten_without_resume(tmp_path):
    cfg = cfg_in(tmp_path)
    assert check(cfg, resume=False) is None  # nothing there: a fresh run
    start_fresh(cfg)
    assert check(cfg, resume=False) is None  # started, nothing completed yet: still fresh
    complete(cfg, 1, 1)
    with pytest.raises(ResumeError, match=r"already holds 1 completed iteration.*--resume.*another name="):
        check(cfg, resume=False)


def test_resume_with_nothing_to_resume_or_another_config_is_one_line_naming_what_differs(tmp_path):
    cfg = cfg_in(tmp_path)
    with pytest.raises(ResumeError, match="nothing to resume"):
        check(cfg, resume=True)
    start_fresh(cfg)
    with pytest.raises(ResumeError, match="nothing to resume"):
        check(cfg, resume=True)
    complete(cfg, 1, 1)
    point = check(cfg_in(tmp_path, "train.iterations=5", "agent.timeout_s=9"), resume=True)  # these may change
    assert point.state.iteration == 1 and point.state.random().random() == random.Random(7).random()
    with pytest.raises(ResumeError) as e:
        check(cfg_in(tmp_path, "train.lr=0.5", "rollout.group_size=3"), resume=True)
    msg = str(e.value)
    assert "\n" not in msg and "rollout.group_size: 4 -> 3" in msg and "train.lr: 5e-05 -> 0.5" in msg
    assert "model" not in msg.split("; only")[0]  # only the keys that differ are named
    complete(cfg, 2, 2)
    with pytest.raises(ResumeError, match="completed all 2 iterations; raise train.iterations"):
        check(cfg_in(tmp_path, "train.iterations=2"), resume=True)


def test_a_checkpoint_of_another_model_shape_is_refused_naming_the_keys(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    state = DriverState(iteration=1, mode="sync", policy_version=1, skipped_in_row=[], rng=RNG,
                        record_bytes={})  # fmt: skip
    point = load_point(write_checkpoint(run_dir, state, fake_trainer({"hidden_size": 64, "num_hidden_layers": 2})))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2}))
    check_model(point, model)
    (model / "config.json").write_text(json.dumps({"hidden_size": 128, "num_hidden_layers": 2}))
    with pytest.raises(ResumeError, match=r"another model shape.*hidden_size: 64 -> 128$"):
        check_model(point, model)


def test_a_checkpoint_cut_short_is_never_read_and_latest_names_the_last_complete_one(tmp_path):
    cfg = cfg_in(tmp_path)
    start_fresh(cfg)
    first = complete(cfg, 1, 1)

    def killed(d: Path) -> None:
        d.mkdir()
        raise KeyboardInterrupt  # the process dies while the trainer writes its state

    state = DriverState(iteration=2, mode="sync", policy_version=2, skipped_in_row=[], rng=RNG,
                        record_bytes={})  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(cfg.run_dir, state, killed)
    assert latest(cfg.run_dir.resolve()) == first.resolve() and (first.parent / ".tmp-it-2").is_dir()
    complete(cfg, 2, 2)  # the next one replaces the partial one and the older checkpoint
    assert sorted(p.name for p in first.parent.iterdir()) == ["it-2", "latest"]


def test_roll_back_discards_the_unfinished_iteration_and_counts_its_trajectories(tmp_path):
    cfg = cfg_in(tmp_path)
    start_fresh(cfg)
    complete(cfg, 1, 1)
    run_dir = cfg.run_dir.resolve()
    metrics_before = (run_dir / "metrics.jsonl").read_text()
    # iteration 2 wrote its records and policy, then the kill came before its checkpoint; iteration 3 had begun
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iteration": 2}) + "\n")
    with open(run_dir / "trajectories.jsonl", "a") as f:
        f.write(json.dumps({"iteration": 2, "trajectory_id": "t2-0"}) + "\n" + '{"iteration": 2, "traj')
    for tid, done in (("t2-0", True), ("t2-1", True), ("t3-0", False)):
        d = run_dir / "attempts" / f"it{tid[1]}" / tid
        d.mkdir(parents=True)
        if done:
            (d / "trajectory.json").write_text("{}")
    (run_dir / "policy" / "v2").mkdir()
    point = load_point(latest(run_dir))
    assert roll_back(run_dir, point) == (2, 1)
    assert (run_dir / "metrics.jsonl").read_text() == metrics_before
    rows = [json.loads(line) for line in (run_dir / "trajectories.jsonl").read_text().splitlines()]
    assert [r["trajectory_id"] for r in rows] == ["t1-0", "t1-1"]
    assert sorted(p.name for p in (run_dir / "attempts").glob("it*/*")) == ["t1-0", "t1-1"]
    assert sorted(p.name for p in (run_dir / "attempts" / "discarded").glob("*/*/*")) == ["t2-0", "t2-1", "t3-0"]
    assert not (run_dir / "policy" / "v2").exists() and (run_dir / "policy" / "v1").is_dir()
    assert trained_groups(run_dir) == {1}  # async mode launches only the groups left


def test_roll_train_refuses_before_starting_anything(tmp_path, capsys):
    from roll.cli import main

    argv = ["train", str(TINY), f"runs_dir={tmp_path}", "name=r", "curriculum.enabled=false"]
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing to resume" in err
    cfg = cfg_in(tmp_path)
    start_fresh(cfg)
    complete(cfg, 1, 1)
    assert main(argv) == 2
    assert "add --resume" in capsys.readouterr().err
    assert json.loads((cfg.run_dir / CONFIG_FILE).read_text())["name"] == "r"


@pytest.mark.slow
def test_the_trainer_state_round_trips_weights_optimizer_and_version(tmp_path):
    import torch
    from trainer_helpers import micro_moe_dir

    from rock.contracts import Chunk, Trajectory
    from roll.config import TrainConfig
    from roll.trainer.errors import CheckpointError
    from roll.workers.trainer import Trainer

    model = micro_moe_dir(tmp_path / "m")
    chunks = [Chunk(trajectory_id=f"t{r}", sandbox_id="sb", index=0, prompt_token_ids=[1, 2, 3],
                    response_token_ids=[4, 5], response_logprobs=[-4.0, -4.0], latency_s=0.0, created_at=0.0)
              for r in (0, 1)]  # fmt: skip
    trajectories = [Trajectory(trajectory_id=f"t{r}", task_id="x", family="f", split="train", reward=float(r),
                               status="resolved" if r else "unresolved", chunks=[chunks[r]], group=0)
                    for r in (0, 1)]  # fmt: skip
    cfg = TrainConfig(lr=1e-2, zero_stage=2)
    a = Trainer(str(model), cfg)
    assert not a.step(trajectories)["skipped"]
    a.save_state(str(tmp_path / "ck" / "trainer"))
    b = Trainer(str(model), cfg)
    assert b.load_state(str(tmp_path / "ck" / "trainer")) == 1
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q), name
    sa, sb = a.engine.optimizer.state_dict(), b.engine.optimizer.state_dict()
    ma, mb = (s["base_optimizer_state"]["state"] if "base_optimizer_state" in s else s["state"] for s in (sa, sb))
    assert ma and all(torch.equal(ma[k]["exp_avg"], mb[k]["exp_avg"]) for k in ma)  # Adam's moments came back
    # the next step is the same step: same weights after it
    a.step(trajectories), b.step(trajectories)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True))
    other = micro_moe_dir(tmp_path / "m2")
    cfg_json = json.loads((other / "config.json").read_text()) | {"num_hidden_layers": 1}
    (other / "config.json").write_text(json.dumps(cfg_json))
    with pytest.raises(CheckpointError, match="num_hidden_layers=2"):
        Trainer(str(other), cfg).load_state(str(tmp_path / "ck" / "trainer"))


# -- end to end

ARGS = ["configs/rl/tiny-cpu.yaml", "name=r", "curriculum.enabled=false", "inference.engine=hf",
        "tasks.families=[create_file]", "tasks.train_per_family=2", "rollout.tasks_per_iteration=1",
        "rollout.group_size=2", "rollout.oracle_per_group=1", "rollout.resample.enabled=false", "agent.max_turns=1",
        "agent.max_tokens=8", "train.lr=1e-3", "train.iterations=3"]  # fmt: skip


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"roll train exited {proc.returncode} before {what}: {proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"no {what} within {timeout}s")


def logprobs_under(model_dir: Path, chunk: dict) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompt, response = chunk["prompt_token_ids"], chunk["response_token_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]  # [R, V]
    return logits.log_softmax(-1).gather(1, torch.tensor(response)[:, None])[:, 0].tolist()


def ray_worker_pid(driver_pid: int, name: str) -> int | None:
    """The pid of Ray actor `name` (process title ray::<name>) of the local cluster the driver started: a child
    of the raylet whose session dir is named by the driver's pid."""
    raylets = subprocess.run(["pgrep", "-f", f"raylet.*_{driver_pid}/"], capture_output=True, text=True).stdout.split()
    for raylet in raylets:
        found = subprocess.run(["pgrep", "-P", raylet, "-f", f"^ray::{name}"], capture_output=True, text=True)
        if found.stdout.split():
            return int(found.stdout.split()[0])
    return None


def gone(pattern: str):
    return lambda: subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 1


def pointer_names(run_dir: Path, name: str):
    pointer = run_dir / "checkpoints" / "latest"
    return lambda: pointer.is_file() and pointer.read_text().strip() == name


@pytest.mark.slow
@pytest.mark.docker
def test_a_dead_worker_is_named_and_kill_9_resumes_without_counting_a_trajectory_twice(tmp_path, docker_client):
    """Three `roll train` starts of one 3-iteration run (about 3 minutes): the inference worker killed (-9) in
    iteration 2, then --resume killed (-9, the driver) after iteration 2, then --resume to the end."""
    args = [*ARGS, f"runs_dir={tmp_path}", f"model.dir={tmp_path}/init"]
    run_dir = tmp_path / "r"
    manager_file = run_dir / "rock" / "manager_id"

    def ours_left() -> list[str]:
        manager = manager_file.read_text().strip()
        return [
            c.name for c in docker_client.containers.list(all=True, filters={"label": f"ale.rock.manager={manager}"})
        ]

    def start(*extra: str) -> subprocess.Popen:
        return subprocess.Popen([ROLL, "train", *args, *extra], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip

    # 1. the inference worker dies in iteration 2: the attempts' model calls fail, then the run names the worker
    # and stops (no hang, no iteration of a policy that "resolves nothing"), removing what it started
    proc = start()
    try:
        wait_for(pointer_names(run_dir, "it-1"), 300, "checkpoint 1", proc)
        engine = wait_for(lambda: ray_worker_pid(proc.pid, "InferenceServer"), 30, "the inference worker's pid")
        os.kill(engine, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, out[-3000:] + err[-3000:]
    last = err.strip().splitlines()[-1]  # one line (rome init's progress bar and Ray's notices come before)
    assert last.startswith("roll: error: the inference worker died"), err[-3000:]
    assert last.endswith("`roll train ... --resume` continues after iteration 1")
    assert not ours_left()

    # 2. resumed (iteration 2's trajectories, recorded but never trained, are discarded), then kill -9 of the
    # driver itself after iteration 2: no finally, no clean-up of its own
    proc = start("--resume")
    try:
        wait_for(pointer_names(run_dir, "it-2"), 300, "checkpoint 2", proc)
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (
        "resuming r after iteration 1 (policy version 1): 2 trajectories of the unfinished iteration discarded" in out
    )
    # what the dead driver started goes with it: Ray's processes (their session is named by its pid), and the
    # rock server (--exit-with), which removes its sandboxes
    wait_for(gone(f"_{proc.pid}/"), 60, "exit of the killed run's Ray processes")
    wait_for(gone(str(run_dir / "rock")), 60, "exit of the killed run's rock server")

    # 3. resumed to the end
    done = subprocess.run([ROLL, "train", *args, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    k = json.loads((latest(run_dir) / "driver.json").read_text())["iteration"]
    assert k == 3 and "resuming r after iteration 2 (policy version 2)" in done.stdout

    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [1, 2, 3]  # none rerun, none lost
    assert [m["policy_version"] for m in metrics] == [1, 2, 3]
    rows = [json.loads(line) for line in (run_dir / "trajectories.jsonl").read_text().splitlines()]
    ids = [r["trajectory_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 3 * 2  # two attempts per iteration, each trained once
    discarded = {p.name for p in (run_dir / "attempts" / "discarded").glob("*/*/*")}
    assert len(discarded) >= 2 and not discarded & set(ids)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [m["iteration"] for m in summary["stages"]["rl"]["iterations"]] == [1, 2, 3]

    # iteration 3 sampled the checkpointed policy: the engine's logprobs are those of policy/v2, not of the
    # initial weights (a resume that forgot the weights would sample those)
    (last,) = [r for r in rows if r["iteration"] == 3 and not r["reference"]]
    chunk = next(c for c in last["chunks"] if c["response_token_ids"])
    assert chunk["policy_version"] == 2
    recorded = chunk["response_logprobs"]
    at_v2 = logprobs_under(run_dir / "policy" / "v2", chunk)
    at_init = logprobs_under(tmp_path / "init", chunk)
    assert max(abs(a - b) for a, b in zip(recorded, at_v2, strict=True)) < 1e-3
    assert max(abs(a - b) for a, b in zip(recorded, at_init, strict=True)) > 1e-3
    assert not ours_left()


def test_the_rollback_schedules_and_references_survive_a_checkpoint(tmp_path):
    from rock.contracts import Chunk, Trajectory
    from roll.driver import Resampler, pick_attempts
    from roll.tasks.spec import Environment, TaskSpec

    cfg = load_config(TINY, ["rollout.tasks_per_iteration=1", "rollout.group_size=3", "rollout.oracle_per_group=1",
                             "rollout.resample.group=2", "rollout.resample.budget=2"])  # fmt: skip
    task = TaskSpec(id="t0", instruction="make it", family="f", environment=Environment(image="i"),
                    tests={"run-tests.sh": "true"}, solution="true")  # fmt: skip
    before = Resampler(cfg)
    attempts = pick_attempts([task], cfg, random.Random(0))
    (oracle,) = before.oracle_attempts(attempts)
    messages = [{"role": "system", "content": "iflow"}, {"role": "user", "content": task.instruction}]
    chunks = [Chunk(trajectory_id=oracle.trajectory_id, sandbox_id="sb", index=i, prompt_token_ids=[1],
                    response_token_ids=[2], response_logprobs=[-1.0], latency_s=0.0, created_at=0.0, messages=messages)
              for i in range(4)]  # fmt: skip
    ref = Trajectory(trajectory_id=oracle.trajectory_id, task_id="t0", family="f", split="train", reward=1.0,
                     status="resolved", chunks=chunks, group=0)  # fmt: skip
    before.observe([oracle], [ref])
    rest = [a for a in attempts if not a.oracle]
    before.plan(rest)  # the schedule of the reference starts at its last chunk
    state = DriverState(iteration=1, mode="sync", policy_version=1, skipped_in_row=[], rng=RNG, record_bytes={})
    path = write_checkpoint(tmp_path, state, fake_trainer(), before.state_dict())
    after = Resampler(cfg)
    after.load_state_dict(load_point(path).resampler)
    assert after.references["t0"].trajectory_id == oracle.trajectory_id
    for r in (before, after):
        again = [a for a in pick_attempts([task], cfg, random.Random(0)) if not a.oracle]
        r.plan(again)
        assert [a.start_chunk for a in again] == [0, 3]
    assert after.state(after.references["t0"]) == before.state(before.references["t0"])


def test_a_rollout_that_fails_because_the_rock_server_died_names_it(tmp_path):
    import httpx

    from rock.launch import RockProcess
    from roll.driver import Run, WorkerDied

    run = Run(cfg_in(tmp_path))
    run.rock = RockProcess(state_dir=tmp_path / "rock")
    run.rock.proc = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(httpx.ConnectError):  # the server is up: the error is the attempt's own
            with run.rock_alive():
                raise httpx.ConnectError("connection refused")
        run.rock.proc.kill()
        run.rock.proc.wait()
        run.completed = 1
        with pytest.raises(WorkerDied, match=r"the rock server died \(exit status -9, log .*serve.log\).*after "
                                             r"iteration 1$"):  # fmt: skip
            with run.rock_alive():
                raise httpx.ConnectError("connection refused")
    finally:
        run.rock.proc.kill()


@pytest.mark.docker
def test_the_sandboxes_of_a_dead_rock_server_are_removed_at_close(tmp_path, docker_client, base_image):
    from rock.launch import RockProcess
    from roll.driver import Run

    run = Run(cfg_in(tmp_path))
    (tmp_path / "rock").mkdir()
    (tmp_path / "rock" / "manager_id").write_text(f"test-{os.getpid()}-{time.time_ns()}\n")
    manager = (tmp_path / "rock" / "manager_id").read_text().strip()
    ours = docker_client.containers.create(base_image, ["sleep", "30"], labels={"ale.rock.manager": manager})
    other = docker_client.containers.create(base_image, ["sleep", "30"], labels={"ale.rock.manager": "someone-else"})
    try:
        run.rock = RockProcess(state_dir=tmp_path / "rock")
        run.rock.proc = subprocess.Popen(["true"])
        run.rock.proc.wait()  # the server died
        run.tracker.delete_all = lambda: ["sb-1"]  # its sandboxes could not be deleted through it
        run.close()
        assert not docker_client.containers.list(all=True, filters={"label": f"ale.rock.manager={manager}"})
        other.reload()  # another manager's container is not touched
    finally:
        for c in (ours, other):
            try:
                c.remove(force=True)
            except Exception:
                pass


def test_a_dry_run_reads_the_run_dir_only_with_resume(tmp_path, capsys):
    from roll.cli import main

    cfg = cfg_in(tmp_path)
    start_fresh(cfg)
    complete(cfg, 1, 1)
    argv = ["train", str(TINY), f"runs_dir={tmp_path}", "name=r", "curriculum.enabled=false", "--dry-run"]
    assert main(argv) == 0  # validating a config is no overwrite
    assert main([*argv, "--resume"]) == 0
    assert f"would resume {tmp_path}/r after iteration 1" in capsys.readouterr().out
    assert main([*argv, "--resume", "train.lr=0.5"]) == 2
    assert "train.lr: 5e-05 -> 0.5" in capsys.readouterr().err


def test_checkpoint_every_k_writes_every_kth_and_the_last_and_resume_rolls_back_the_rest(tmp_path):
    """train.checkpoint_every=2 over 5 iterations: checkpoints after 2, 4 and 5 (the last) only; a stop after
    iteration 3 resumes after 2, iteration 3's trajectories discarded. The setting may change on --resume."""
    from types import SimpleNamespace

    from roll.driver import Run

    cfg = cfg_in(tmp_path, "train.iterations=5", "train.checkpoint_every=2", "rollout.resample.enabled=false")
    start_fresh(cfg)
    run, run_dir = Run(cfg), cfg.run_dir.resolve()
    saved = []
    run.trainer = SimpleNamespace(call=lambda method, d: run._get("trainer", d))  # the group's call: the ref is the dir
    run._get = lambda worker, d, timeout=None: (saved.append(Path(d).parent.name), fake_trainer()(Path(d)))
    written = {}
    for it in range(1, 6):
        with open(run_dir / "trajectories.jsonl", "a") as f:
            f.write(json.dumps({"iteration": it, "trajectory_id": f"t{it}", "group": it}) + "\n")
        seconds = run.checkpoint(it, random.Random(it), last=it == 5)
        written[it] = (latest(run_dir) or Path("none")).name
        assert seconds >= 0.0 and len(saved) == {1: 0, 2: 1, 3: 1, 4: 2, 5: 3}[it]
        if it == 3:  # a stop here: the resume point is iteration 2's
            point = check(cfg_in(tmp_path, "train.iterations=5", "train.checkpoint_every=1",
                                 "rollout.resample.enabled=false"), resume=True)  # fmt: skip
            assert point.state.iteration == 2 and run.completed == 2
            trajectories = (run_dir / "trajectories.jsonl").read_bytes()
            roll_back(run_dir, point)
            assert trained_groups(run_dir) == {1, 2}
            (run_dir / "trajectories.jsonl").write_bytes(trajectories)  # go on as if not stopped
    assert saved == [".tmp-it-2", ".tmp-it-4", ".tmp-it-5"]
    assert written == {1: "none", 2: "it-2", 3: "it-2", 4: "it-4", 5: "it-5"}
