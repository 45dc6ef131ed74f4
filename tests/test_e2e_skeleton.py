"""The walking skeleton end to end: `.venv/bin/pytest tests/test_e2e_skeleton.py`.

Runs the real `roll train` (ROME-tiny, vLLM in a Ray actor, ROCK sandboxes with iflow inside, a DeepSpeed
update, the weight sync) as a subprocess, then checks what it recorded and that it left no container;
and interrupts a run in the middle of its rollout to check that it still removes every sandbox.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROLL = str(Path(sys.executable).with_name("roll"))

pytestmark = [pytest.mark.slow, pytest.mark.docker]


def run_argv(tmp_path: Path, *overrides: str) -> list[str]:
    # The RL loop alone (no CPT/SFT curriculum), at the skeleton's size: 2 tasks x 2 policy attempts.
    return [ROLL, "train", "configs/rl/tiny-cpu.yaml", "name=e2e", f"runs_dir={tmp_path}",
            f"model.dir={tmp_path}/init", "curriculum.enabled=false", "tasks.families=[create_file]",
            "rollout.tasks_per_iteration=2", "rollout.group_size=2", "rollout.oracle_per_group=0",
            "rollout.resample.enabled=false", "agent.max_turns=3", "agent.max_tokens=64", *overrides]  # fmt: skip


def containers_of_run(docker_client, run_dir: Path) -> list:
    """Every container the run's rock manager created (rock labels them with its manager id)."""
    manager_id = (run_dir / "rock" / "manager_id").read_text().strip()
    # sparse: no inspect per container, which fails with 404 when a sandbox goes away between list and inspect.
    labels = [f"ale.rock.manager={manager_id}", "ale.rock=1"]
    return docker_client.containers.list(all=True, sparse=True, filters={"label": labels})


def test_one_iteration_records_chunks_trains_and_cleans_up(tmp_path, docker_client):
    proc = subprocess.run(run_argv(tmp_path, "train.iterations=1"), cwd=REPO, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "iteration 1/1" in proc.stdout and "done: 1 iterations" in proc.stdout

    run_dir = tmp_path / "e2e"
    (metrics,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics["chunks"] > 0
    assert metrics["prompt_tokens"] > 0 and metrics["response_tokens"] > 0
    assert metrics["policy_versions"] == [0]  # sampled from the initial policy
    trajectories = [json.loads(line) for line in (run_dir / "trajectories.jsonl").read_text().splitlines()]
    assert len(trajectories) == 4
    chunks = [c for t in trajectories for c in t["chunks"]]
    assert all(c["prompt_token_ids"] and len(c["response_token_ids"]) == len(c["response_logprobs"]) for c in chunks)
    assert (run_dir / "policy/v1/model.safetensors").is_file()  # the update, loaded into the engine
    assert containers_of_run(docker_client, run_dir) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_interrupt_during_rollout_removes_every_sandbox(tmp_path, docker_client, sig):
    # The HF engine starts in seconds; the cleanup path under test is the same as with vLLM.
    # Long completions keep the attempts (seconds each otherwise) running while the test looks for their sandboxes.
    argv = run_argv(tmp_path, "train.iterations=1", "inference.engine=hf", "agent.max_turns=3", "agent.max_tokens=512")
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "rollout of" in line:
                break
        else:
            pytest.fail("roll train ended before its rollout:\n" + "".join(seen[-40:]))
        run_dir = tmp_path / "e2e"
        deadline = time.monotonic() + 120
        while not containers_of_run(docker_client, run_dir):
            assert time.monotonic() < deadline and proc.poll() is None, "no sandbox appeared"
            time.sleep(0.2)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted" in out
    assert containers_of_run(docker_client, run_dir) == []
