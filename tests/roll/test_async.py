"""Asynchronous rollout with bounded staleness: `.venv/bin/pytest tests/roll/test_async.py` (a few seconds).

The scheduler (roll/rollout/scheduler.py) runs with attempts that stand in for a sandbox and an agent: each
makes model calls that record the version the engines serve at that moment (as the gateway records the engine's
`policy_version`) and sleeps between them; the "trainer" takes batches, sleeps, and bumps the version as the
driver does after a weight sync. The bound, the throttling, the accounting and the version-per-chunk record are
checked on that. The stale-chunk ratio is checked on the packed tensors the trainer builds (roll/algo).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import pytest
import torch

from rock.contracts import Chunk, Trajectory
from roll.rollout.scheduler import AsyncRollout


@dataclass
class FakeAttempt:
    trajectory_id: str
    calls: int = 2
    gap_s: float = 0.01  # environment latency between calls
    oracle: bool = False
    started: list = field(default_factory=list)


def make_runner(rollout_ref: list, live: list | None = None):
    """`run(attempt)`: `calls` model calls, each chunk stamped with the version served at that moment."""
    lock = threading.Lock()

    def run(a: FakeAttempt) -> Trajectory:
        if live is not None:
            with lock:
                live[0] += 1
                live[1] = max(live[1], live[0])
        chunks = []
        for i in range(a.calls):
            version = None if a.oracle else rollout_ref[0].version  # sampled now, then the environment's latency
            time.sleep(a.gap_s)
            chunks.append(Chunk(trajectory_id=a.trajectory_id, sandbox_id="sb", index=i, prompt_token_ids=[1],
                                response_token_ids=[2, 3], response_logprobs=[-1.0, -1.0], policy_version=version,
                                latency_s=0.0, created_at=time.time()))  # fmt: skip
        if live is not None:
            with lock:
                live[0] -= 1
        return Trajectory(trajectory_id=a.trajectory_id, task_id="t", family="f", split="train", reward=0.0,
                          status="unresolved", chunks=chunks)  # fmt: skip

    return run


def groups_of(n_groups: int, size: int, gaps=None, calls=None) -> list[list[FakeAttempt]]:
    out = []
    for g in range(n_groups):
        out.append([FakeAttempt(f"g{g}a{i}", gap_s=gaps[g] if gaps else 0.01, calls=calls[g] if calls else 2)
                    for i in range(size)])  # fmt: skip
    return out


def drive(groups, *, batch_groups, max_staleness, max_in_flight, train_s=0.0, live=None, version=0,
          straggler_budget_s=None):  # fmt: skip
    """The driver's loop: batches until done, a sleep for the update, then version + 1. Returns the batches."""
    ref: list = [None]
    sched = AsyncRollout(groups, make_runner(ref, live), batch_groups=batch_groups, max_staleness=max_staleness,
                         max_in_flight=max_in_flight, version=version,
                         straggler_budget_s=straggler_budget_s)  # fmt: skip
    ref[0] = sched
    batches, caps = [], []
    try:
        sched.start()
        while (batch := sched.next_batch(timeout=30)) is not None:
            batches.append(batch)
            caps.append(sched.counts())
            time.sleep(train_s)
            sched.set_version(sched.version + 1)
    finally:
        sched.close()
    return sched, batches, caps


def staleness(batch) -> list[int]:
    return [
        batch.version - c.policy_version for t in batch.trajectories for c in t.chunks if c.policy_version is not None
    ]


def test_every_trajectory_is_trained_once_and_none_is_lost_under_a_heavy_tail():
    rng = random.Random(0)
    gaps = [min(0.3, 0.005 * rng.lognormvariate(0, 1.5)) for _ in range(24)]  # log-normal environment latency
    sched, batches, _ = drive(groups_of(24, 2, gaps), batch_groups=3, max_staleness=2, max_in_flight=12)
    ids = [t.trajectory_id for b in batches for t in b.trajectories]
    assert sorted(ids) == sorted(f"g{g}a{i}" for g in range(24) for i in range(2))  # all, each once
    assert len(ids) == len(set(ids))
    counts = sched.counts()
    assert counts["launched"] == counts["trained"] == 48 and counts["untrained_finished"] == 0
    assert all(max(staleness(b), default=0) <= 2 for b in batches)
    # a group is trained whole: both members of every group land in the same batch
    for b in batches:
        groups = {t.trajectory_id.split("a")[0] for t in b.trajectories}
        assert len(b.trajectories) == 2 * len(groups)


def test_a_straggler_does_not_hold_the_batch_and_joins_a_later_one_within_the_bound():
    # group 0 takes 30x longer than the others: sync would wait for it every batch; async trains without it
    gaps = [0.3] + [0.01] * 11
    # (the run is at version 6 already: the bound counts from there)
    sched, batches, _ = drive(groups_of(12, 1, gaps), batch_groups=2, max_staleness=1, max_in_flight=4, version=6)
    first = [t.trajectory_id for t in batches[0].trajectories]
    assert "g0a0" not in first
    where = next(i for i, b in enumerate(batches) if any(t.trajectory_id == "g0a0" for t in b.trajectories))
    assert where >= 1
    assert all(0 <= min(staleness(b)) and max(staleness(b)) <= 1 for b in batches)
    assert sum(len(b.trajectories) for b in batches) == 12 and batches[0].version == 6


@pytest.mark.parametrize("budget", [None, 0.15])
def test_a_straggler_past_the_budget_is_deferred_not_waited_for_and_trained_later(budget):
    # group 0 takes 1.2 s, the others 0.02 s; η = 0 makes every batch wait for everything launched, unless the
    # straggler budget defers group 0: then the batches go on and group 0 is trained in the last one
    gaps = [0.6] + [0.01] * 5
    sched, batches, _ = drive(groups_of(6, 2, gaps), batch_groups=2, max_staleness=0, max_in_flight=12,
                              straggler_budget_s=budget)  # fmt: skip
    ids = [t.trajectory_id for b in batches for t in b.trajectories]
    assert sorted(ids) == sorted(f"g{g}a{i}" for g in range(6) for i in range(2))  # all, each once: none lost
    counts = sched.counts()
    assert counts["launched"] == counts["trained"] == 12 and counts["untrained_finished"] == 0
    for b in batches:  # a group is still trained whole
        assert len(b.trajectories) == 2 * len({t.trajectory_id.split("a")[0] for t in b.trajectories})
    where = next(i for i, b in enumerate(batches) if any(t.trajectory_id == "g0a0" for t in b.trajectories))
    if budget is None:  # the synchronous schedule: the first batch waited for the straggler
        assert where == 0 and batches[0].waited_s >= 1.0 and counts["deferred_groups"] == 0
        return
    assert batches[0].waited_s < 0.6  # formed long before group 0 ended
    assert where == len(batches) - 1 >= 2  # trained later, alone, after the others went on without it
    assert counts["deferred_groups"] == 1
    assert [b.metrics()["stragglers_deferred"] for b in batches[:where]] == [1] * where
    assert batches[where].metrics()["stragglers_deferred"] == 0
    # its chunks were sampled at version 0 and are trained later: stale past η, corrected, not dropped
    assert batches[where].metrics()["staleness_max"] >= 1
    assert all(max(staleness(b)) == 0 for b in batches[:where])  # the others kept the bound


def test_a_non_positive_straggler_budget_is_refused():
    with pytest.raises(ValueError, match="straggler_budget_s"):
        AsyncRollout(groups_of(1, 1), lambda a: None, batch_groups=1, max_staleness=1, max_in_flight=1,
                     straggler_budget_s=0)  # fmt: skip


def test_a_slow_trainer_throttles_launches_to_the_bound():
    live = [0, 0]
    sched, batches, caps = drive(groups_of(16, 2), batch_groups=2, max_staleness=1, max_in_flight=32, train_s=0.05,
                                 live=live)  # fmt: skip
    # rollouts are fast and the trainer slow: without the cap all 32 attempts would run at once, version 0
    assert sched.held_launches > 0
    assert sched.peak_unconsumed <= sched.unconsumed_cap == 4
    assert live[1] <= 4 * 2
    assert all(max(staleness(b), default=0) <= 1 for b in batches)
    assert sum(len(b.trajectories) for b in batches) == 32


def test_zero_staleness_is_the_synchronous_schedule():
    sched, batches, _ = drive(groups_of(6, 2, [0.05, 0.01, 0.01] * 2), batch_groups=3, max_staleness=0,
                              max_in_flight=6)  # fmt: skip
    assert [len(b.trajectories) for b in batches] == [6, 6]
    assert all(staleness(b) and max(staleness(b)) == 0 for b in batches)
    assert all(b.in_flight == 0 for b in batches)


def test_chunks_carry_the_version_that_sampled_them_across_an_update():
    # one long attempt (10 calls) in flight while short groups are trained and the version moves on
    calls = [10] + [1] * 7
    gaps = [0.04] + [0.005] * 7
    sched, batches, _ = drive(groups_of(8, 1, gaps, calls), batch_groups=1, max_staleness=3, max_in_flight=4,
                              train_s=0.03)  # fmt: skip
    (long,) = [t for b in batches for t in b.trajectories if t.trajectory_id == "g0a0"]
    versions = [c.policy_version for c in long.chunks]
    assert versions == sorted(versions) and len(set(versions)) >= 2  # the later chunks carry the newer version
    metrics = next(b for b in batches if long in b.trajectories).metrics()
    assert metrics["versions_per_trajectory_max"] >= 2 and metrics["staleness_max"] <= 3
    assert metrics["staleness_max"] == max(staleness(next(b for b in batches if long in b.trajectories)))


def test_an_attempt_that_raises_stops_the_trainer_with_its_error():
    def run(a):
        raise ConnectionError("rock server gone")

    sched = AsyncRollout(groups_of(2, 1), run, batch_groups=1, max_staleness=1, max_in_flight=2)
    try:
        sched.start()
        with pytest.raises(ConnectionError, match="rock server gone"):
            sched.next_batch(timeout=10)
    finally:
        sched.close()


def test_oracle_chunks_have_no_staleness_and_are_listed_as_reference():
    groups = [[FakeAttempt("p0"), FakeAttempt("o0", oracle=True)], [FakeAttempt("p1"), FakeAttempt("o1", oracle=True)]]
    sched, batches, _ = drive(groups, batch_groups=1, max_staleness=1, max_in_flight=4)
    assert sorted(r for b in batches for r in b.reference) == ["o0", "o1"]
    assert all(b.metrics()["staleness_max"] <= 1 for b in batches)


def test_the_run_schema_has_the_mode_and_the_bound_with_sync_by_default():
    from pathlib import Path

    from roll.config import load_config
    from roll.errors import ConfigError

    tiny = Path(__file__).resolve().parents[2] / "configs/rl/tiny-cpu.yaml"
    off = ["rollout.resample.enabled=false"]
    assert load_config(tiny, off).train.mode == "sync"
    cfg = load_config(tiny, [*off, "train.mode=async", "train.max_staleness=1.5"])
    assert (cfg.train.mode, cfg.train.max_staleness) == ("async", 1.5)
    with pytest.raises(ConfigError, match="train.mode"):
        load_config(tiny, [*off, "train.mode=later"])
    with pytest.raises(ConfigError, match="rollout.resample is for train.mode sync"):
        load_config(tiny, ["rollout.resample.enabled=true", "train.mode=async"])
    with pytest.raises(ConfigError, match="max_in_flight 1 is less than one group"):
        load_config(tiny, [*off, "train.mode=async", "train.max_in_flight=1", "rollout.group_size=2"])
    assert load_config(tiny, off).train.straggler_budget_s is None  # off by default
    assert load_config(tiny, [*off, "train.mode=async", "train.straggler_budget_s=90"]).train.straggler_budget_s == 90
    with pytest.raises(ConfigError, match="train.straggler_budget_s"):
        load_config(tiny, [*off, "train.mode=async", "train.straggler_budget_s=0"])


def test_the_stale_chunks_ratio_is_against_its_own_recorded_logprobs():
    """Two chunks of one trajectory, sampled by versions 0 and 1 with different recorded logprobs, packed into one
    sequence (the second's prompt holds the first's response): each chunk's ratio uses its own μ."""
    from roll.algo.packing import pack_trajectory, pad_sequences
    from roll.algo.ratio import chunk_ratios

    def chunk(i, prompt, response, lp, version):
        return Chunk(trajectory_id="t", sandbox_id="s", index=i, prompt_token_ids=prompt, response_token_ids=response,
                     response_logprobs=lp, policy_version=version, latency_s=0.0, created_at=0.0)  # fmt: skip

    stale = chunk(0, [5, 6], [7, 8], [-2.0, -3.0], version=0)
    fresh = chunk(1, [5, 6, 7, 8, 9], [10, 11, 12], [-0.5, -0.25, -0.75], version=1)
    (seq,) = pack_trajectory([stale, fresh])  # one packed row
    batch = pad_sequences([seq])
    sel = batch.loss_mask > 0
    assert batch.old_logprobs[sel].tolist() == [-2.0, -3.0, -0.5, -0.25, -0.75]
    logp_new = torch.full_like(batch.old_logprobs, -1.0)  # the current policy: -1 on every token
    r = chunk_ratios(logp_new, batch.old_logprobs, batch.chunk_ids, batch.loss_mask, 2, low=0.0, high=1e9)
    expect = torch.tensor([(-1 + 2 - 1 + 3) / 2, (-1 + 0.5 - 1 + 0.25 - 1 + 0.75) / 3]).exp()
    torch.testing.assert_close(r.ratio, expect)


def _chunks_of(tid: str, seed: int, version: int) -> list[Chunk]:
    """Two chunks whose prompts extend each other (one packed sequence), random tokens of a 64-token vocabulary."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (16,), generator=g).tolist()
    return [Chunk(trajectory_id=tid, sandbox_id="s", index=i, prompt_token_ids=ids[:a], response_token_ids=ids[a:b],
                  response_logprobs=[0.0] * (b - a), policy_version=version, latency_s=0.0, created_at=0.0)
            for i, (a, b) in enumerate([(5, 8), (11, 16)])]  # fmt: skip


def _recorded(trainer, traj: Trajectory, shift: float = 0.0) -> Trajectory:
    """The trajectory with μ = the trainer's current logprobs (+ shift): as if its engine had sampled it now."""
    from roll.algo.packing import pack_trajectory
    from roll.workers.trainer import _MicroBatch

    mb = _MicroBatch(pack_trajectory(traj.chunks), lambda k: False)
    with torch.no_grad():
        logp = trainer.engine(mb.input_ids, mb.rows, mb.cols)  # [N]
    for i, (_, index) in enumerate(mb.keys):
        traj.chunks[index].response_logprobs = (logp[mb.chunk_ids[0] == i] + shift).tolist()
    return traj


@pytest.mark.slow
def test_a_stale_chunk_is_masked_only_for_a_true_mismatch(tmp_path):
    """Async trainer: chunks sampled by version 0 trained at version 1. Their ratio πθ/μ moved with the update
    (out of a tight [0.99, 1.01]); under the version that sampled them the trainer agrees with μ, so they are
    kept. A stale chunk whose μ is off by 0.5 nats a token is a true mismatch, and masked."""
    from trainer_helpers import micro_moe_dir

    from roll.config import IPAConfig, TrainConfig
    from roll.workers.trainer import Trainer

    micro_moe_dir(tmp_path)
    cfg = TrainConfig(lr=3e-2, mode="async", max_staleness=2, ipa=IPAConfig(ratio_low=0.99, ratio_high=1.01))
    trainer = Trainer(str(tmp_path), cfg)

    def traj(tid, reward, group, seed, version=0):
        return Trajectory(trajectory_id=tid, task_id=f"task{group}", family="f", split="train", reward=reward,
                          status="resolved" if reward else "unresolved", chunks=_chunks_of(tid, seed, version),
                          group=group)  # fmt: skip

    # all sampled by version 0, recorded now (before any update)
    first = [_recorded(trainer, traj("ok", 1.0, 0, 1)), _recorded(trainer, traj("bad", 0.0, 0, 2))]
    stale = [_recorded(trainer, traj("stale_ok", 1.0, 1, 3)), _recorded(trainer, traj("stale_bad", 0.0, 1, 4), 0.5)]
    s1 = trainer.step(first)
    assert not s1["skipped"] and s1["mismatch_chunks"] == 0 and trainer.version == 1
    s2 = trainer.step(stale)
    assert s2["stale_chunks"] == 4 and s2["stale_scored_chunks"] == 4 and "stale_unscored_chunks" not in s2
    assert s2["mismatch_chunks"] == 2  # stale_bad's two chunks: μ disagrees with version 0 itself
    assert s2["drift_kept_chunks"] == 2  # stale_ok's: out of [0.99, 1.01] against θ, yet kept
    assert s2["pos_chunks"] == 2


@pytest.mark.slow
def test_an_update_says_where_its_seconds_went_and_the_shift_metric_costs_one_forward(tmp_path, monkeypatch):
    """The step's seconds by part (step_<part>_s); with train.logprob_shift off the step runs one forward per
    micro-batch instead of two and reports no delta_logp; train.threads sets the torch threads (the bench's
    settings, roll/workers/trainer.py)."""
    from trainer_helpers import micro_moe_dir

    from roll.config import TrainConfig
    from roll.workers.trainer import Trainer, _ResponseLogprobs

    micro_moe_dir(tmp_path)
    threads = torch.get_num_threads()
    try:  # train.threads: the rank's torch threads
        torch.set_num_threads(2)
        trainer = Trainer(str(tmp_path), TrainConfig(lr=1e-2, mode="async", max_staleness=2, threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    forwards = []
    forward = _ResponseLogprobs.forward
    monkeypatch.setattr(_ResponseLogprobs, "forward", lambda self, *a: (forwards.append(1), forward(self, *a))[1])

    def batch(tag):  # sampled by the current version: no stale chunk to score under an older one
        return [Trajectory(trajectory_id=f"{tag}{i}", task_id="t", family="f", split="train", reward=float(i),
                           status="resolved" if i else "unresolved", group=0,
                           chunks=_chunks_of(f"{tag}{i}", i, trainer.version)) for i in (0, 1)]  # fmt: skip

    with_shift = trainer.step(batch("a"))
    n_with = len(forwards)
    trainer.cfg.logprob_shift = False
    forwards.clear()
    without = trainer.step(batch("b"))
    assert "delta_logp_pos" in with_shift and "delta_logp_pos" not in without
    assert n_with == 2 * len(forwards) > 0
    parts = {"step_snapshot_s", "step_forward_s", "step_stale_s", "step_backward_s", "step_optimizer_s"}
    assert parts | {"step_shift_s"} <= set(with_shift) and parts <= set(without) and "step_shift_s" not in without
    assert all(without[k] >= 0 for k in parts) and without["step_backward_s"] > 0


@pytest.mark.slow
@pytest.mark.docker
def test_roll_train_async_end_to_end(tmp_path, docker_client):
    """Real `roll train` in async mode (vLLM, iflow in ROCK sandboxes, DeepSpeed, in-memory syncs; about 3-4
    minutes): every attempt trained once, chunks stamped by the engine's version, the bound kept, every chunk
    taken from the gateway's stream as it was recorded (none refetched)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    argv = [str(Path(sys.executable).with_name("roll")), "train", "configs/rl/tiny-cpu.yaml", "name=async",
            f"runs_dir={tmp_path}", f"model.dir={tmp_path}/init", "curriculum.enabled=false", "train.mode=async",
            "train.iterations=4", "train.max_staleness=1", "train.lr=1e-3", "tasks.families=[create_file]",
            "tasks.train_per_family=4", "rollout.tasks_per_iteration=1", "rollout.group_size=2",
            "rollout.oracle_per_group=0", "rollout.resample.enabled=false", "agent.max_turns=2",
            "agent.max_tokens=16",
            # vLLM's start takes ~1 min on 2 quiet cores and once took over 600 s beside a training and the suite
            "inference.startup_timeout_s=1500"]  # fmt: skip
    proc = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "async"
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (run_dir / "trajectories.jsonl").read_text().splitlines()]
    ids = [r["trajectory_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 8 == sum(m["batch_trajectories"] for m in steps)
    assert steps[-1]["attempts_launched"] == steps[-1]["attempts_trained"] == 8
    assert all(m["staleness_max"] <= 1 and not m["skipped"] for m in steps)
    assert [m["policy_version"] for m in steps] == list(range(1, len(steps) + 1))  # one sync per update
    assert "chunk stream open" in proc.stdout
    # every recorded chunk reached the trainer through the stream (roll/rollout/stream.py), none was refetched
    assert sum(m["chunks_streamed"] for m in steps) == sum(len(r["chunks"]) for r in rows) > 0
    assert all(m["chunks_refetched"] == 0 for m in steps)
    lags = [m["stream_lag_max_s"] for m in steps if m["stream_lag_max_s"] is not None]
    assert lags and max(lags) < 5.0  # record to buffer: seconds at most, on a loaded 2-core machine
    chunks = [(r["iteration"], c) for r in rows for c in r["chunks"] if c["response_token_ids"]]
    assert chunks and all(c["policy_version"] is not None for _, c in chunks)
    # what a batch trained was sampled at most one version before it: the engine's stamp, per chunk
    assert all(steps[it - 1]["policy_version"] - 1 - c["policy_version"] <= 1 for it, c in chunks)
    # two groups may be launched and untrained at once (the bound): the last group starts after an update
    assert max(c["policy_version"] for _, c in chunks) >= 1  # so it sampled the updated weights
