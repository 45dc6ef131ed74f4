"""The driver's bookkeeping between rollout and trainer: `.venv/bin/pytest tests/roll/test_roll_driver.py`."""

import json
import random
from pathlib import Path

import pytest

from rock.contracts import Chunk, Trajectory
from roll.config import load_config
from roll.driver import Run, TrainingDiverged, chunk_advantages, iteration_metrics, pick_attempts
from roll.errors import ConfigError
from roll.stages.config import SftConfig
from roll.tasks.spec import Environment, TaskSpec

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs/rl/tiny-cpu.yaml"


def chunk(i: int, response: list[int]) -> Chunk:
    return Chunk(trajectory_id="t", sandbox_id="sb", index=i, prompt_token_ids=[1], response_token_ids=response,
                 response_logprobs=[-1.0] * len(response), latency_s=0.0, created_at=0.0)  # fmt: skip


def traj(group: int, reward: float, n_chunks: int, empty: int = 0) -> Trajectory:
    chunks = [chunk(i, [2]) for i in range(n_chunks)] + [chunk(n_chunks + i, []) for i in range(empty)]
    return Trajectory(trajectory_id=f"t{group}{reward}", task_id="task", family="f", split="train", reward=reward,
                      status="resolved" if reward else "unresolved", chunks=chunks, group=group)  # fmt: skip


def test_every_chunk_gets_its_trajectorys_group_advantage_and_empty_calls_are_dropped():
    trajectories = [traj(0, 1.0, 2), traj(0, 0.0, 1, empty=1), traj(1, 0.0, 1), traj(1, 0.0, 1)]
    chunks, advantages = chunk_advantages(trajectories)
    assert len(chunks) == 5 and all(isinstance(c, Chunk) and c.response_token_ids for c in chunks)
    assert advantages == [0.5, 0.5, -0.5, 0.0, 0.0]


def test_attempts_are_tasks_times_group_size_with_shared_groups():
    cfg = load_config(TINY, ["rollout.tasks_per_iteration=3", "rollout.group_size=2"])
    tasks = [TaskSpec(id=f"t{i}", instruction="x", family="f", environment=Environment(image="i"),
                      tests={"run-tests.sh": "true"}, solution="true") for i in range(5)]  # fmt: skip
    attempts = pick_attempts(tasks, cfg, random.Random(0))
    assert [a.group for a in attempts] == [0, 0, 1, 1, 2, 2]
    assert attempts[0].task == attempts[1].task != attempts[2].task
    assert len({a.trajectory_id for a in attempts}) == 6


def test_the_default_config_draws_from_the_suite_and_unknown_families_are_named():
    cfg = load_config(TINY)
    sft = load_config(ROOT / cfg.curriculum.sft, [], SftConfig)
    assert cfg.tasks.families == sft.data.families  # RL trains on the families SFT taught
    with pytest.raises(ConfigError, match="no_such_family"):
        load_config(TINY, ["tasks.families=[create_file, no_such_family]"])


def test_the_oracle_plays_the_last_members_of_each_group_and_must_leave_the_policy_some():
    cfg = load_config(TINY, ["rollout.tasks_per_iteration=2", "rollout.group_size=3", "rollout.oracle_per_group=1"])
    tasks = [TaskSpec(id=f"t{i}", instruction="x", family="f", environment=Environment(image="i"),
                      tests={"run-tests.sh": "true"}, solution="true") for i in range(3)]  # fmt: skip
    attempts = pick_attempts(tasks, cfg, random.Random(0))
    assert [(a.group, a.oracle) for a in attempts] == [(0, False), (0, False), (0, True), (1, False), (1, False),
                                                       (1, True)]  # fmt: skip
    with pytest.raises(ConfigError, match="oracle_per_group"):
        load_config(TINY, ["rollout.group_size=2", "rollout.oracle_per_group=2"])


def test_iteration_metrics_count_the_policys_attempts_apart_from_the_oracles():
    ok, bad = traj(0, 1.0, 2), traj(0, 0.0, 1, empty=1)
    oracle = traj(1, 1.0, 3).model_copy(update={"trajectory_id": "oracle"})
    m = iteration_metrics(1, [ok, bad, oracle], {"oracle"})
    assert (m["attempts"], m["oracle_attempts"], m["oracle_pass_rate"]) == (2, 1, 1.0)
    assert m["reward_mean"] == 0.5 and m["pass_rate"] == 0.5 and m["policy_chunks"] == 3
    # an attempt resampled from a reference's prefix is neither a whole attempt nor the oracle's (the Resampler
    # reports it: Resampler.observe)
    late = traj(0, 1.0, 3).model_copy(update={"trajectory_id": "late", "start_chunk": 2})
    m = iteration_metrics(1, [ok, bad, oracle, late], {"oracle"})
    assert (m["attempts"], m["oracle_attempts"]) == (2, 1)
    assert m["reward_mean"] == 0.5 and m["policy_chunks"] == 4  # the resampled attempt's own chunk (index 2)


def test_a_skipped_update_is_not_synced_and_several_in_a_row_stop_the_run():
    run = Run(load_config(TINY, ["train.max_skipped_steps=2"]))
    bad = {"skipped": True, "error": "non-finite loss nan", "chunks": 4}
    assert run.note_step(1, bad) is False
    run.stop_if_diverged()  # one is reported, not fatal
    assert run.note_step(2, {"skipped": False, "chunks": 4}) is True  # a good step resets the count
    assert run.note_step(3, bad) is False and run.note_step(4, bad) is False
    with pytest.raises(TrainingDiverged, match=r"iterations \[3, 4\] in a row"):
        run.stop_if_diverged()
    assert run.version == 0


def test_the_algorithm_is_ipa_by_default_and_a_wrong_one_is_named():
    assert load_config(TINY).train.algorithm == "ipa"
    assert load_config(TINY, ["train.algorithm=grpo"]).train.algorithm == "grpo"
    with pytest.raises(ConfigError, match="train.algorithm"):
        load_config(TINY, ["train.algorithm=reinforce"])


FIXTURE = Path(__file__).parent.parent / "fixtures" / "stages" / "trajectories.jsonl"


def heldout(rate: float) -> dict:
    return {"pass_rate": rate, "by_family": {"create_file": {"split": "heldout", "pass_rate": rate}}}


def test_the_summary_holds_heldout_rates_through_the_stages_and_the_rl_iterations(tmp_path):
    from roll.curriculum import heldout_points, write_summary

    cfg = load_config(TINY, [f"runs_dir={tmp_path}"])
    iterations = [{"iteration": i, "reward_mean": r, "pass_rate": r} for i, r in ((1, 0.25), (2, 0.5))]
    stages = {"cpt": {"before": None, "after": heldout(0.0)}, "sft": {"before": heldout(0.0), "after": heldout(0.25)},
              "rl": {"algorithm": "ipa", "before": heldout(0.25), "after": heldout(0.5), "iterations": iterations}}  # fmt: skip
    assert heldout_points(stages) == [("after CPT", 0.0), ("after SFT", 0.25), ("after RL", 0.5)]
    summary = write_summary(cfg, stages, 12.0)
    saved = json.loads((tmp_path / "tiny-cpu/summary.json").read_text())
    assert saved["heldout"][-1] == {"point": "after RL", "pass_rate": 0.5} and saved["settings"]["name"] == "tiny-cpu"
    assert saved["stages"]["rl"]["after"]["by_family"]["create_file"]["split"] == "heldout"
    assert Path(summary["plot"]).is_file() and Path(summary["plot"]).stat().st_size > 1000


@pytest.mark.slow
def test_a_stage_is_reused_only_while_its_config_and_starting_weights_are_unchanged(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from roll.curriculum import run_stage

    common = [f"runs_dir={tmp_path}", f"data.path={FIXTURE}", "eval.enabled=false", "trainer.progress=false",
              "trainer.batch_sequences=2", "steps=1"]  # fmt: skip
    cpt_args = ("cpt", ROOT / "configs/cpt/tiny-cpu.yaml", [*common, f"model.dir={tmp_path}/init", "name=cpt",
                                                            "cpt.fresh=64", "cpt.variants=1"])  # fmt: skip
    cpt, cpt_cfg = run_stage(*cpt_args)
    sft_args = ("sft", ROOT / "configs/sft/tiny-cpu.yaml", [*common, f"model.dir={cpt['model']}", "name=sft",
                                                            "phase2.steps=0"])  # fmt: skip
    sft, _ = run_stage(*sft_args)
    assert not cpt["reused"] and not sft["reused"] and Path(sft["model"], "config.json").is_file()
    assert run_stage(*cpt_args)[0]["reused"] and run_stage(*sft_args)[0]["reused"]
    (cpt_cfg.run_dir / "curriculum.json").unlink()  # as after `roll cpt` by hand: its summary's settings count
    assert run_stage(*cpt_args)[0]["reused"] and (cpt_cfg.run_dir / "curriculum.json").is_file()
    assert "sft: reusing" in capsys.readouterr().out
    sft_args = (*sft_args[:2], [*sft_args[2], "steps=2"])
    assert not run_stage(*sft_args)[0]["reused"]  # another config: retrained
    assert run_stage(*sft_args)[0]["reused"]
    weights = cpt_cfg.run_dir / "model" / "model.safetensors"  # other starting weights for SFT: retrained
    tensors = load_file(str(weights))
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1e-3
    save_file(tensors, str(weights), metadata={"format": "pt"})
    assert not run_stage(*sft_args)[0]["reused"]


def reference_traj(task: TaskSpec, n_chunks: int = 4, tid: str = "oracle-1") -> Trajectory:
    messages = [{"role": "system", "content": "iflow"}, {"role": "user", "content": task.instruction}]
    chunks = [chunk(i, [2]).model_copy(update={"trajectory_id": tid, "messages": messages}) for i in range(n_chunks)]
    return Trajectory(trajectory_id=tid, task_id=task.id, family="f", split="train", reward=1.0, status="resolved",
                      chunks=chunks, group=0)  # fmt: skip


def test_resampling_starts_a_share_of_the_policy_attempts_where_the_rollback_schedule_says():
    from roll.driver import Resampler

    cfg = load_config(TINY, ["rollout.tasks_per_iteration=1", "rollout.group_size=3", "rollout.oracle_per_group=1",
                             "rollout.resample.enabled=true", "rollout.resample.group=2",
                             "rollout.resample.budget=2"])  # fmt: skip
    task = TaskSpec(id="t0", instruction="make it", family="f", environment=Environment(image="i"),
                    tests={"run-tests.sh": "true"}, solution="true")  # fmt: skip
    resampler = Resampler(cfg)
    attempts = pick_attempts([task], cfg, random.Random(0))
    first = resampler.oracle_attempts(attempts)
    assert first == [attempts[2]] and first[0].oracle  # the task has no reference yet: its oracle member runs first
    ref = reference_traj(task, tid=first[0].trajectory_id)
    resampler.observe(first, [ref])
    assert resampler.references == {"t0": ref} and resampler.oracle_attempts(attempts) == []

    for outcome, expected_start in ((True, 3), (True, 3), (False, 2)):
        rest = [a for a in pick_attempts([task], cfg, random.Random(0)) if not a.oracle]
        resampler.plan(rest)
        assert [a.start_chunk for a in rest] == [0, expected_start]  # the last policy attempt of the group
        assert rest[1].reference is ref and rest[1].group == 0 + 1 * expected_start  # its own baseline group
        out = Trajectory(trajectory_id=rest[1].trajectory_id, task_id="t0", family="f", split="train",
                         reward=float(outcome), status="resolved" if outcome else "unresolved",
                         start_chunk=expected_start)  # fmt: skip
        whole = traj(0, 0.0, 1).model_copy(update={"trajectory_id": rest[0].trajectory_id})
        m = resampler.observe(rest, [whole, out])
        assert m["resampled_attempts"] == 1 and m["resampled_starts"] == [expected_start]
    assert "start 3 learned" in " ".join(m["rollback"]["t0"]["events"])  # 2 of 2 resolved: rolled back to 2

    # a reference whose prefix no longer reproduces is dropped; the run goes on
    rest = [a for a in pick_attempts([task], cfg, random.Random(0)) if not a.oracle]
    resampler.plan(rest)
    broken = Trajectory(trajectory_id=rest[1].trajectory_id, task_id="t0", family="f", split="train", reward=0.0,
                        status="environment_error", error="replayed call differs", start_chunk=2)  # fmt: skip
    resampler.observe(rest, [traj(0, 0.0, 1).model_copy(update={"trajectory_id": rest[0].trajectory_id}), broken])
    assert resampler.references == {}
