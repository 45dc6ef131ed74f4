"""The walking skeleton end to end, one iteration: `.venv/bin/pytest tests/test_e2e_skeleton.py`.

Runs the real `roll train` (ROME-tiny, vLLM in a Ray actor, ROCK sandboxes with iflow inside, a DeepSpeed
update, the weight sync) as a subprocess, then checks what it recorded and that it left no container.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.docker]


def test_one_iteration_records_chunks_trains_and_cleans_up(tmp_path, docker_client):
    roll = Path(sys.executable).with_name("roll")
    argv = [str(roll), "train", "configs/rl/tiny-cpu.yaml", "train.iterations=1", "name=e2e",
            f"runs_dir={tmp_path}", f"model.dir={tmp_path}/init"]  # fmt: skip
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
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

    for t in trajectories:
        left = docker_client.containers.list(all=True, filters={"label": f"ale.rock.sandbox={t['sandbox_id']}"})
        assert not left, f"sandbox {t['sandbox_id']} left container {left[0].name}"
