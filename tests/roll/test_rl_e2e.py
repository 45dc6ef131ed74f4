"""The RL loop end to end with a signal to learn from: `.venv/bin/pytest tests/roll/test_rl_e2e.py` (docker, slow;
one vLLM engine start, about 3-4 minutes on 2 loaded cores).

Real `roll train` (ROME-tiny from rome init, vLLM in a Ray actor, iflow in ROCK sandboxes, the DeepSpeed IPA update,
the in-memory weight sync) for two iterations of one task tried three times: by the oracle teacher (a replayed
success, run first: it is also the reference for resampling), by the policy from the start (a random model: it
fails), and by the policy from the state before the reference's last chunk (initialized resampling: the prefix
given, the policy samples the rest; the rollback schedule starts at the last chunk). So the group's rewards
differ, and the test can fail: with the advantage zeroed the failed attempt's term vanishes (`neg_term` 0, its
logprob not pushed down); with the return zeroed the success's term does; without the update the saved weights
equal the initial ones and the second iteration's chunks still carry policy version 0.
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
            "tasks.families=[create_file]", "tasks.train_per_family=1",  # the same task in both iterations
            "rollout.tasks_per_iteration=1", "rollout.group_size=3", "rollout.oracle_per_group=1",
            "rollout.resample.enabled=true", "rollout.resample.references=oracle", "rollout.resample.share=0.5",
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
                     for c in r["chunks"][r["start_chunk"] :]} for it in (1, 2)}  # fmt: skip
    assert versions == {1: {0}, 2: {1}}
    assert it2["policy_versions"] == [1]

    # one policy attempt per iteration started from the oracle's prefix, where sequential rollback begins: the
    # last chunk; its given chunks are the reference's (imitated, at ratio 1), the rest sampled by the policy
    (oracle,) = [r for r in rows if r["iteration"] == 1 and r["reference"]]
    resampled = [r for r in rows if r["start_chunk"]]
    assert len(resampled) == 2 and all(r["reference_id"] == oracle["trajectory_id"] for r in resampled)
    assert it1["resampled_starts"] == [len(oracle["chunks"]) - 1] and it1["given_chunks"] == len(oracle["chunks"]) - 1
    k = resampled[0]["start_chunk"]
    assert [c["response_token_ids"] for c in resampled[0]["chunks"][:k]] == [
        c["response_token_ids"] for c in oracle["chunks"][:k]]  # fmt: skip
    assert it2["rollback"][oracle["task_id"]]["reference"] == oracle["trajectory_id"]
