"""The RL loop end to end with a signal to learn from: `.venv/bin/pytest tests/roll/test_rl_e2e.py` (docker, slow;
one vLLM engine start, about 3-4 minutes on 2 loaded cores).

Real `roll train` (ROME-tiny from rome init, vLLM in a Ray actor, iflow in ROCK sandboxes, the DeepSpeed IPA update,
the in-memory weight sync) for two iterations of one task tried twice: once by the policy (a random model: it
fails) and once by the oracle teacher (a replayed success). So the group's rewards differ, and the test can
fail: with the advantage zeroed the failed attempt's term vanishes (`neg_term` 0, its logprob not pushed down);
with the return zeroed the success's term does; without the update the saved weights equal the initial ones and
the second iteration's chunks still carry policy version 0.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
ROLL = str(Path(sys.executable).with_name("roll"))

pytestmark = [pytest.mark.slow, pytest.mark.docker]


def test_two_ipa_iterations_with_a_replayed_success_beside_a_failure(tmp_path, docker_client):
    argv = [ROLL, "train", "configs/rl/tiny-cpu.yaml", "name=ipa", f"runs_dir={tmp_path}", f"model.dir={tmp_path}/init",
            "curriculum.enabled=false", "train.iterations=2", "train.algorithm=ipa", "train.lr=1e-3",
            "rollout.tasks_per_iteration=1", "rollout.group_size=2", "rollout.oracle_per_group=1",
            "agent.max_turns=1", "agent.max_tokens=16"]  # fmt: skip
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "ipa"
    it1, it2 = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    # the group's rewards differ: the oracle's replay resolved the task, the random policy did not
    assert it1["oracle_pass_rate"] == 1.0 and it1["pass_rate"] == 0.0 and it1["policy_chunks"] > 0
    # both IPA terms carried signal: the success imitated (G > 0), the failure pushed down (A < 0), none masked
    assert not it1["skipped"] and it1["loss"] != 0
    assert it1["pos_term"] > 0 and it1["neg_term"] < 0 and it1["neg_chunks"] > 0 and it1["mismatch_frac"] == 0
    assert it1["delta_logp_pos"] > 0 > it1["delta_logp_neg"]
    assert it1["policy_version"] == 1 and it2["policy_version"] == 2

    # the saved policy is not the initial model
    init, v1 = (
        load_file(str(tmp_path / "init/model.safetensors")),
        load_file(str(run_dir / "policy/v1/model.safetensors")),
    )
    assert init.keys() == v1.keys() and any(not torch.equal(init[k], v1[k]) for k in init)

    # the second iteration sampled from the updated policy (the weights reached vLLM in memory)
    rows = [json.loads(line) for line in (run_dir / "trajectories.jsonl").read_text().splitlines()]
    versions = {it: {c["policy_version"] for r in rows if r["iteration"] == it and not r["reference"]
                     for c in r["chunks"]} for it in (1, 2)}  # fmt: skip
    assert versions == {1: {0}, 2: {1}}
    assert it2["policy_versions"] == [1]
