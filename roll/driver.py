"""The single controller of an RL run: `roll train configs/rl/tiny-cpu.yaml [key=value ...]`
(`.venv/bin/pytest tests/roll/test_roll_driver.py`; end to end: `-m docker tests/roll/test_rl_e2e.py`).

Per iteration: rollouts (iflow in ROCK sandboxes, sampling from the inference worker; with
`rollout.oracle_per_group` some group members are played by the oracle teacher, a replayed success; with
`rollout.resample` a share of the policy's attempts start from a reference's prefix at the chunk the rollback
schedule picks, roll/rollout/resample.py and roll/algo/rollback.py), one
trainer update on the recorded chunks with `train.algorithm` (IPA by default, token-level GRPO / PPO-clip for
comparison; roll/workers/trainer.py), the new weights handed to the inference worker in memory (no restart, no
disk read) and saved as policy/v<N>; the next iteration's chunks carry policy_version N. A NaN/Inf loss applies
no update and is reported; `train.max_skipped_steps` of them in a row stop the run. With `train.mode=async`
(`.venv/bin/pytest tests/roll/test_async.py`) the same groups run through roll/rollout/scheduler.py instead:
attempts run on while the trainer trains on the groups that finished, each chunk within `train.max_staleness`
policy versions of its sampler, one update per batch. With `train.mode=colocated` (roll/colocate.py,
`.venv/bin/pytest tests/roll/test_colocated.py`) sync mode's iterations run through one state machine on shared
devices (rollout -> train -> sync: the engines paused on CPU, asleep on CUDA, while the trainer trains), with the
seconds of each phase and the busy fraction of each resource in the metrics. Everything it starts
(sandboxes, rock server, teacher, Ray actors) is stopped in `finally`, also on Ctrl-C and SIGTERM; a worker that
dies is named (WorkerDied), never waited for. Every completed iteration (async: update; with
`train.checkpoint_every` K every K-th and the last) is checkpointed atomically (roll/resume.py, `.venv/bin/pytest
tests/roll/test_resume.py`): `roll train ... --resume` carries on after the last one, the unfinished iterations'
trajectories discarded. Chunks reach the driver as they are recorded: one
subscriber per run files them into a buffer keyed by trajectory (roll/rollout/stream.py, `.venv/bin/pytest
tests/roll/test_stream.py -m docker`), and an attempt's trajectory is assembled from it when the attempt ends;
chunks_streamed, chunks_refetched and the record-to-buffer seconds are in the metrics. With
`train.straggler_budget_s` an async batch goes on without a group running past the budget (deferred, trained
when it ends).
"""

from __future__ import annotations

import json
import random
import signal
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rock.contracts import Chunk, Trajectory
from roll.algo import group_advantages
from roll.config import RunConfig, check_train_workers
from roll.errors import PreflightError, RollError
from roll.resume import DriverState, ResumePoint, record_bytes, roll_back, start_fresh, trained_groups, write_checkpoint
from roll.resume import check as check_resume
from roll.resume import check_model as check_resume_model
from roll.resume import history as resumed_history
from roll.rollout import AgentOptions, SandboxTracker, iflow_source_dir, run_attempt
from roll.tasks.spec import TaskSpec


def log(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class Attempt:
    task: TaskSpec
    group: int  # attempts at the same task share a group: their mean reward is the baseline
    oracle: bool = False  # played by the oracle teacher (a reference trajectory), not sampled by the policy
    reference: Trajectory | None = None  # set: a resampled attempt from the state before chunk `start_chunk` of it
    start_chunk: int = 0
    trajectory_id: str = field(default_factory=lambda: f"traj-{uuid.uuid4().hex[:12]}")


def train_tasks(cfg: RunConfig) -> list[TaskSpec]:
    """The train split of the configured suite families."""
    from roll.tasks.suite import generate_suite

    return generate_suite(
        cfg.tasks.families,
        split="train",
        train_per_family=cfg.tasks.train_per_family,
        train_start=cfg.tasks.train_start,
    )


def ensure_model(cfg: RunConfig) -> Path:
    """The initial policy dir; created with rome init (tokenizer, chat template, random weights) if missing."""
    model_dir = cfg.model.dir.resolve()
    if (model_dir / "config.json").is_file():
        return model_dir
    from rome.init import init_model

    log(f"creating ROME-{cfg.model.init_config} in {model_dir} (rome init)")
    t = time.monotonic()
    model_dir = Path(init_model(model_dir, config=cfg.model.init_config, seed=cfg.model.init_seed)).resolve()
    log(f"  done in {time.monotonic() - t:.0f}s")
    return model_dir


def preflight(tasks: list[TaskSpec]) -> None:
    """Fail in a second, before minutes of model loading, when Docker or a task's image is missing."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:
        raise PreflightError(f"no Docker engine answers ({type(e).__name__}); start one with `make docker`") from e
    try:
        for image in sorted(
            {t.environment.image for t in tasks if t.environment.image and not t.environment.dockerfile}
        ):
            client.images.get(image)
    except docker.errors.ImageNotFound as e:
        raise PreflightError(f"sandbox image {image} is missing; build it with `make images`") from e
    finally:
        client.close()


def _start_ray(attempts: int = 3):
    """ray.init of a fresh local cluster, retried: Ray gives its raylet a fixed 30 s to register, which a
    loaded 2-core machine sometimes misses ("The current node timed out during startup")."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            # address="local": always a cluster of our own, never one a `ray start` left running here.
            return ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=False,
                            configure_logging=False)  # fmt: skip
        except Exception as e:
            if "timed out during startup" not in str(e) or attempt == attempts:
                raise
            log(f"ray start-up timed out (attempt {attempt}/{attempts}); retrying")
            ray.shutdown()


def _raise_keyboard_interrupt(signum, frame):
    # SIGTERM takes the same path as Ctrl-C, so the `finally` blocks remove what the run started.
    raise KeyboardInterrupt(f"signal {signum}")


def pick_attempts(tasks, cfg: RunConfig, rng: random.Random) -> list[Attempt]:
    """`tasks_per_iteration` tasks, `group_size` attempts each; the last `oracle_per_group` of a group are the oracle's."""
    chosen = rng.sample(tasks, cfg.rollout.tasks_per_iteration)
    n, oracle = cfg.rollout.group_size, cfg.rollout.oracle_per_group
    return [Attempt(task=t, group=g, oracle=i >= n - oracle) for g, t in enumerate(chosen) for i in range(n)]


def attempt_runner(client, attempts: list[Attempt], cfg: RunConfig, tracker: SandboxTracker, attempts_dir: Path,
                   teacher_url: str | None = None, snapshots=None,
                   stream=None) -> Callable[[Attempt], Trajectory]:  # fmt: skip
    """The function that runs one of `attempts`: iflow on the rock server's default upstream (the inference
    worker), an oracle attempt on `teacher_url`, a resampled one from its reference's prefix. `stream`: the run's
    chunk buffer (roll/rollout/stream.py) the attempts take their chunks from (None: pulled after each ends)."""
    options = AgentOptions(max_turns=cfg.agent.max_turns, max_tokens=cfg.agent.max_tokens, timeout_s=cfg.agent.timeout_s,
                           iflow_mount=cfg.sandbox.iflow_mount)  # fmt: skip
    oracle_options = options
    if any(a.oracle for a in attempts):
        if teacher_url is None:
            raise ValueError("oracle attempts need the teacher's URL")
        from roll.data.synth import oracle_turns

        # The oracle's plan (look, act, check, answer) takes more calls than a policy attempt may have.
        turns = max(cfg.agent.max_turns, oracle_turns([a.task for a in attempts if a.oracle]))
        oracle_options = options.model_copy(update={"max_turns": turns, "max_tokens": None})
    source = iflow_source_dir()

    def run(a: Attempt) -> Trajectory:
        common = {"attempt_dir": attempts_dir / a.trajectory_id, "trajectory_id": a.trajectory_id, "group": a.group,
                  "tracker": tracker, "iflow_source": source}  # fmt: skip
        if a.reference is not None:
            from roll.rollout.resample import resampled_attempt

            # its sampled chunks come from the stream too (joined to its reference's prefix)
            return resampled_attempt(client, a.task, a.reference, a.start_chunk, options, snapshots=snapshots,
                                     stream=stream, **common)  # fmt: skip
        return run_attempt(client, a.task, "iflow", model_url=teacher_url if a.oracle else None,
                           options=oracle_options if a.oracle else options, stream=stream, **common)  # fmt: skip

    return run


def run_attempts(client, attempts: list[Attempt], cfg: RunConfig, tracker: SandboxTracker, attempts_dir: Path,
                 on_done: Callable[[Trajectory], None] = lambda t: None, teacher_url: str | None = None,
                 snapshots=None, stream=None) -> list[Trajectory]:  # fmt: skip
    """Run all attempts at once, one thread each, since the work happens in the sandboxes and the engine
    (`attempt_runner`). Infrastructure failures raise."""
    run = attempt_runner(client, attempts, cfg, tracker, attempts_dir, teacher_url, snapshots, stream)
    pool = ThreadPoolExecutor(max_workers=len(attempts), thread_name_prefix="rollout")
    try:
        futures = [pool.submit(run, a) for a in attempts]
        trajectories = []
        for future in as_completed(futures):
            trajectories.append(future.result())
            on_done(trajectories[-1])
    finally:
        # On error or Ctrl-C do not wait for the agents: the driver deletes their sandboxes next.
        pool.shutdown(wait=False, cancel_futures=True)
    order = {a.trajectory_id: i for i, a in enumerate(attempts)}
    return sorted(trajectories, key=lambda t: order[t.trajectory_id])


def chunk_advantages(trajectories: list[Trajectory]) -> tuple[list[Chunk], list[float]]:
    """Every chunk with response tokens and its trajectory's reward advantage (reward minus its group's mean):
    what one iteration offers the update (the trainer computes its own per-chunk targets, roll/algo/returns.py)."""
    rewards = torch.tensor([t.reward for t in trajectories])
    groups = torch.tensor([t.group for t in trajectories])
    advantages = group_advantages(rewards, groups).tolist()
    chunks, chunk_adv = [], []
    for traj, adv in zip(trajectories, advantages, strict=True):
        for chunk in traj.chunks:
            if chunk.response_token_ids:  # a call that failed upstream has nothing to train on
                chunks.append(chunk)
                chunk_adv.append(adv)
    return chunks, chunk_adv


class Resampler:
    """Initialized resampling across iterations (`rollout.resample`): one reference per task (the oracle's replay,
    or the first success), a rollback schedule per reference (roll/algo/rollback.py), the snapshot cache of the
    restored states. `plan` turns a share of each group's policy attempts into resampled ones where the schedule
    says; `observe` feeds the outcomes back. A reference that no longer reproduces is dropped (reported), the
    others go on."""

    def __init__(self, cfg: RunConfig):
        from roll.algo.rollback import RollbackConfig
        from roll.rollout.resample import SnapshotCache

        self.cfg = cfg.rollout.resample
        self.rollback = RollbackConfig(**self.cfg.model_dump(exclude={"enabled", "references", "share"}))
        self.n_tasks = cfg.rollout.tasks_per_iteration
        self.references: dict[str, Trajectory] = {}  # task id -> reference trajectory
        self.schedules: dict[str, object] = {}  # reference id -> its schedule
        self.snapshots = SnapshotCache()

    def oracle_attempts(self, attempts: list[Attempt]) -> list[Attempt]:
        """With oracle references: the attempts to run first so that every group's task has one (the group's
        oracle members, or one extra oracle attempt for a group with none)."""
        if self.cfg.references != "oracle":
            return []
        first = []
        for g in dict.fromkeys(a.group for a in attempts):
            members = [a for a in attempts if a.group == g]
            if members[0].task.id in self.references:
                continue
            first += [a for a in members if a.oracle] or [Attempt(task=members[0].task, group=g, oracle=True)]
        return first

    def plan(self, attempts: list[Attempt]) -> None:
        """Start a share of each group's policy attempts from its reference (in place; start 0 = a whole attempt)."""
        from roll.algo.rollback import make_schedule
        from roll.rollout.resample import BadReference, check_reference

        for g in dict.fromkeys(a.group for a in attempts):
            policy = [a for a in attempts if a.group == g and not a.oracle]
            ref = self.references.get(policy[0].task.id) if policy else None
            if ref is None:
                continue
            schedule = self.schedules.setdefault(ref.trajectory_id, make_schedule(len(ref.chunks), self.rollback))
            n = max(1, round(self.cfg.share * len(policy)))
            for a, k in zip(policy[-n:], schedule.next_starts(n), strict=True):
                try:
                    check_reference(a.task, ref, k)
                except BadReference as e:
                    log(f"  resampling: {e}; reference dropped")
                    self.references.pop(a.task.id, None)
                    break
                if k > 0:  # baselines among attempts from the same start
                    a.reference, a.start_chunk, a.group = ref, k, g + self.n_tasks * k

    def observe(self, attempts: list[Attempt], trajectories: list[Trajectory]) -> dict:
        """Outcomes into the schedules, new references from resolved whole attempts; returns the metrics."""
        by_id = {a.trajectory_id: a for a in attempts}
        resampled = [t for t in trajectories if by_id[t.trajectory_id].reference is not None]
        for t in resampled:
            a = by_id[t.trajectory_id]
            if t.status == "environment_error":  # e.g. the prefix's calls no longer reproduce its state
                log(f"  resampling: reference {a.reference.trajectory_id} of {t.task_id} at chunk {a.start_chunk}: "
                    f"{t.error}; reference dropped")  # fmt: skip
                self.references.pop(t.task_id, None)
                continue
            self.schedules[a.reference.trajectory_id].record(a.start_chunk, t.resolved)
        for t in trajectories:
            a = by_id[t.trajectory_id]
            wanted = a.oracle if self.cfg.references == "oracle" else a.reference is None
            if wanted and t.resolved and t.task_id not in self.references and t.chunks:
                self.references[t.task_id] = t
        return {
            "resampled_attempts": len(resampled),
            "resampled_pass_rate": sum(t.resolved for t in resampled) / len(resampled) if resampled else None,
            "resampled_starts": sorted(by_id[t.trajectory_id].start_chunk for t in resampled),
            "rollback": {task: self.state(ref) for task, ref in self.references.items()},
        }

    def state_dict(self) -> dict:
        """What carries over a resume: the references and their schedules (the snapshot cache does not)."""
        return {"references": self.references, "schedules": self.schedules}

    def load_state_dict(self, state: dict) -> None:
        self.references, self.schedules = state["references"], state["schedules"]

    def state(self, ref: Trajectory) -> dict:
        """Where the reference's schedule stands: the next start (sequential), the critical chunks, its decisions."""
        from roll.algo.rollback import SequentialRollback

        out = {"reference": ref.trajectory_id, "chunks": len(ref.chunks)}
        schedule = self.schedules.get(ref.trajectory_id)
        if schedule is not None:
            sequential = isinstance(schedule, SequentialRollback)
            out |= {"next_start": schedule.next_starts(1)[0] if sequential else None,
                    "critical": schedule.critical, "events": list(schedule.events)}  # fmt: skip
        return out


class TrainingDiverged(RollError):
    """`train.max_skipped_steps` updates in a row had a NaN/Inf loss; the policy is the last good one."""


class WorkerDied(RollError):
    """A Ray worker of the run (the trainer, the inference engine) died; the run stopped."""


def _who(worker: str) -> str:
    """'trainer' -> 'the trainer worker'; a pool's engine is named whole ('inference engine 2 of 3')."""
    return worker if " " in worker else f"the {worker} worker"


def _why(error: BaseException) -> str:
    """The first line that says something of a Ray error (they run over many lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:300]


def iteration_metrics(it: int, trajectories: list[Trajectory], reference: set[str]) -> dict:
    """What one iteration's rollouts say, the policy's attempts apart from the oracle's."""
    sampled = [t for t in trajectories if t.trajectory_id not in reference]
    policy = [t for t in sampled if not t.start_chunk]  # whole attempts (resampled ones are reported apart)
    chunks = [c for t in sampled for c in t.chunks[t.start_chunk :] if c.response_token_ids]
    return {
        "iteration": it,
        "reward_mean": sum(t.reward for t in policy) / max(1, len(policy)),
        "pass_rate": sum(t.resolved for t in policy) / max(1, len(policy)),
        "attempts": len(policy),
        "oracle_attempts": len(trajectories) - len(sampled),
        "oracle_pass_rate": (sum(t.resolved for t in trajectories if t.trajectory_id in reference) / len(reference))
        if reference else None,
        "policy_chunks": len(chunks),
        "prompt_tokens": sum(len(c.prompt_token_ids or []) for c in chunks),
        "response_tokens": sum(len(c.response_token_ids) for c in chunks),
        "policy_versions": sorted({c.policy_version for c in chunks}, key=str),
    }  # fmt: skip


class Run:
    """Holds what a run started so that `close` can stop all of it, whatever state it reached."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.run_dir = cfg.run_dir.resolve()
        self.tracker = SandboxTracker()
        self.rock = None
        self.client = None
        self.inference = None
        self.trainer = None
        self.teacher = None
        self.resampler = Resampler(cfg) if cfg.rollout.resample.enabled else None
        self.ray_started = False
        self.version = 0  # the policy version the inference worker serves
        self.skipped_in_row: list[int] = []
        self.scheduler = None  # train.mode=async: the AsyncRollout
        self.stream = None  # the run's chunk buffer (roll/rollout/stream.py), opened before the first attempt
        self.stream_tried = False
        self.completed = 0  # the last iteration (async: update) checkpointed

    def start(self, model_dir: Path, tasks: list[TaskSpec], point: ResumePoint | None = None) -> None:
        """Ray, the workers, the teacher and the rock server; with `point`, the state of that checkpoint."""
        import ray

        from roll.workers.inference import InferenceServer
        from roll.workers.placement import actor_options
        from roll.workers.pool import InferencePool
        from roll.workers.trainer import deepspeed_setup
        from roll.workers.trainer_group import TrainerGroup

        cfg = self.cfg
        check_train_workers(cfg)  # what train.workers cannot do yet is refused, never silently dropped
        ds = deepspeed_setup(cfg.train, cfg.device)  # cpu: gloo, float32; cuda: NCCL, bf16 on the actor's GPU
        if point is None:
            start_fresh(cfg)  # a new run's records start empty (train() refused to overwrite completed iterations)
        else:
            self._roll_back(point)
        t = time.monotonic()
        # Actor output (vLLM and DeepSpeed start-up chatter) goes to Ray's session logs, not the console;
        # an actor's failure still reaches the driver as the exception of the ray.get that awaited it.
        ctx = _start_ray()
        self.ray_started = True
        # ray.init installs a native SIGTERM handler that aborts the process; put ours back on top.
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        log(f"ray started; worker logs in {ctx.address_info.get('session_dir', '?')}/logs")
        opts = actor_options(cfg)  # cpu: num_cpus=0 for all; cuda: GPUs per role (roll/workers/placement.py)
        inf = cfg.inference
        engine = ray.remote(InferenceServer).options(**opts["inference"])
        actors = [engine.remote(str(model_dir), inf.engine, inf.kvcache_gb) for _ in range(inf.engines)]
        self.inference = InferencePool(actors, self._get, inf.router_timeout_s)  # `close` stops what started
        # train.workers DeepSpeed ranks, one actor each, one process group (roll/workers/trainer_group.py)
        self.trainer = TrainerGroup(str(model_dir), cfg.train, cfg.device, opts["trainer"], self._get)
        ranks = "the trainer worker" if len(self.trainer) == 1 else f"{len(self.trainer)} trainer ranks"
        log(f"starting {inf.engines} inference worker(s) ({inf.engine}) and {ranks} (DeepSpeed) ...")
        url = self.inference.wait_ready(inf.startup_timeout_s)
        if inf.engines == 1:
            log(f"inference worker ({inf.engine}) serving {url}")
        else:
            log(f"inference pool of {inf.engines} {inf.engine} engines ({', '.join(self.inference.engine_urls)}) "
                f"behind the router at {url} (sticky per trajectory, least-loaded)")  # fmt: skip
        self.trainer.ready()
        log(f"{ranks} ready ({cfg.train.algorithm}, DeepSpeed ZeRO-{cfg.train.zero_stage}, {ds.describe()})  "
            f"[{time.monotonic() - t:.0f}s]")  # fmt: skip
        if point is not None:
            self._restore(point)
        if cfg.rollout.oracle_per_group or (self.resampler and self.resampler.cfg.references == "oracle"):
            from roll.data.teacher import OracleTeacher

            # mistake_rate 0: the replayed success is a clean one (its recovery steps are SFT's business).
            self.teacher = OracleTeacher(tasks, tokenizer=model_dir, mistake_rate=0.0, seed=cfg.tasks.seed).serve()
            log(f"oracle teacher at {self.teacher.url} ({cfg.rollout.oracle_per_group} attempt(s) per group, "
                f"references for resampling: {bool(self.resampler)})")  # fmt: skip

        from rock.launch import RockProcess

        self.rock = RockProcess(
            model_upstream=url, allow_mounts=[str(iflow_source_dir())], state_dir=str(self.run_dir / "rock"),
            on_exit="remove",
        )  # fmt: skip
        self.rock.__enter__()
        self.client = self.rock.client()  # one for the run: `close` still needs it to delete sandboxes
        log(f"rock server at {self.rock.url}")

    def chunk_stream(self):
        """The run's one chunk subscriber (roll/rollout/stream.py), opened on first use; None when the rock server
        has no stream (said in a log line; attempts then pull their chunks after they end)."""
        if not self.stream_tried:
            from roll.rollout.stream import ChunkStream

            self.stream_tried = True
            self.stream = ChunkStream.open(self.client.url, self.client.token, keepalive_s=5.0, log=log)
        return self.stream

    def stream_metrics(self) -> dict:
        """chunks_streamed, chunks_refetched and the record-to-buffer seconds since the last call."""
        return self.stream.metrics() if self.stream is not None else {}

    def rollout(self, it: int, tasks, rng: random.Random) -> tuple[list[Trajectory], list[Attempt], dict]:
        """The iteration's attempts and their trajectories (same order), and the resampling and chunk stream
        metrics. With oracle references for resampling, the oracle attempts of tasks without one run first."""
        cfg = self.cfg
        attempts = pick_attempts(tasks, cfg, rng)
        first = self.resampler.oracle_attempts(attempts) if self.resampler else []
        attempts = first + [a for a in attempts if a not in first]
        log(f"iteration {it}/{cfg.train.iterations}: rollout of {len(attempts)} attempts at "
            f"{cfg.rollout.tasks_per_iteration} tasks (policy version {self.version})")  # fmt: skip
        done = []

        def progress(traj: Trajectory) -> None:
            done.append(traj)
            a = next(a for a in attempts if a.trajectory_id == traj.trajectory_id)
            who = "oracle" if a.oracle else f"policy from chunk {a.start_chunk}" if a.start_chunk else "policy"
            log(f"  [{len(done)}/{len(attempts)}] {traj.task_id} ({who}): reward {traj.reward:.0f} ({traj.status}), "
                f"{len(traj.chunks)} chunks, {traj.seconds:.0f}s")  # fmt: skip

        teacher_url = self.teacher.url if self.teacher is not None else None
        out_dir = self.run_dir / "attempts" / f"it{it}"
        snapshots = self.resampler.snapshots if self.resampler else None
        stream = self.chunk_stream()
        with self.rock_alive():
            trajectories = (
                run_attempts(self.client, first, cfg, self.tracker, out_dir, progress, teacher_url, stream=stream)
                if first else []
            )  # fmt: skip
            rest = attempts[len(first) :]
            if self.resampler:
                self.resampler.observe(first, trajectories)  # the references the rest may start from
                self.resampler.plan(rest)
            trajectories += run_attempts(self.client, rest, cfg, self.tracker, out_dir, progress, teacher_url,
                                         snapshots, stream)  # fmt: skip
        resampling = self.resampler.observe(rest, trajectories[len(first) :]) if self.resampler else {}
        self.check_inference()
        return trajectories, attempts, resampling | self.stream_metrics()

    def iteration(self, it: int, tasks, rng: random.Random) -> dict:
        t0 = time.monotonic()
        trajectories, attempts, resampling = self.rollout(it, tasks, rng)
        t1 = time.monotonic()
        reference = {a.trajectory_id for a in attempts if a.oracle}
        given = {a.trajectory_id: a.start_chunk for a in attempts if a.start_chunk}
        metrics = iteration_metrics(it, trajectories, reference) | resampling | {"rollout_s": round(t1 - t0, 1)}
        step = self.trainer.call("step", trajectories, sorted(reference), given)
        t2 = time.monotonic()
        metrics.update(step, train_s=round(t2 - t1, 1), sync_s=0.0, policy_version=self.version)
        if self.note_step(it, step):
            self._sync(it, metrics)
        self._write(trajectories, reference, metrics)
        metrics["checkpoint_s"] = self.checkpoint(it, rng, last=it == self.cfg.train.iterations)
        self.stop_if_diverged()
        return metrics

    def run_async(self, tasks, rng: random.Random, history: list[dict]) -> None:
        """`train.mode=async`: the `train.iterations` x `tasks_per_iteration` groups (drawn as sync mode draws
        them) run through roll/rollout/scheduler.py while the trainer trains on the groups that finished; one
        update (and weight sync) per batch, until every group launched was trained."""
        from roll.rollout.scheduler import AsyncRollout

        cfg, n = self.cfg, self.cfg.rollout.tasks_per_iteration
        groups: list[list[Attempt]] = []
        for it in range(cfg.train.iterations):
            attempts = pick_attempts(tasks, cfg, rng)
            for a in attempts:
                a.group += it * n  # one advantage baseline per group across the whole run
            groups += [[a for a in attempts if a.group == it * n + g] for g in range(n)]
        trained = trained_groups(self.run_dir) if self.completed else set()
        groups = [g for g in groups if g[0].group not in trained]  # a resumed run: the groups left
        if not groups:
            log(f"async rollout: all {cfg.train.iterations * n} groups were trained before; nothing left")
            return
        every = [a for g in groups for a in g]
        teacher_url = self.teacher.url if self.teacher is not None else None
        run = attempt_runner(self.client, every, cfg, self.tracker, self.run_dir / "attempts" / "async", teacher_url,
                             stream=self.chunk_stream())  # fmt: skip
        in_flight = cfg.in_flight_cap
        budget = cfg.train.straggler_budget_s
        self.scheduler = AsyncRollout(groups, run, batch_groups=n, max_staleness=cfg.train.max_staleness,
                                      max_in_flight=in_flight, version=self.version,
                                      straggler_budget_s=budget)  # fmt: skip
        log(f"async rollout: {len(every)} attempts in {len(groups)} groups, batches of {n} groups, at most "
            f"{in_flight} attempts in flight, max_staleness {cfg.train.max_staleness}"
            + (f", stragglers deferred after {budget}s" if budget else ""))  # fmt: skip
        self.scheduler.start()
        step = self.completed
        with self.rock_alive():
            while (batch := self.scheduler.next_batch()) is not None:
                step += 1
                history.append(self.async_step(step, batch))
                log(format_metrics(history[-1]))
        if step > self.completed:  # the last update, when train.checkpoint_every skipped it
            history[-1]["checkpoint_s"] += self.checkpoint(step, None, last=True)
        c = self.scheduler.counts()
        lost = c["launched"] - c["trained"]
        log(f"async rollout: {c['launched']} attempts launched, {c['trained']} trained, {lost} lost; "
            f"{c['deferred_groups']} straggler group(s) deferred past the budget and trained later")  # fmt: skip
        if lost:  # next_batch ends only when every launched group was trained: this is a scheduler bug
            raise RuntimeError(f"async rollout lost {lost} attempts ({c})")

    def async_step(self, step: int, batch) -> dict:
        """One update on a batch of finished groups, then the weights to the engine while attempts run on."""
        reference = set(batch.reference)
        t1 = time.monotonic()
        self.check_inference()
        metrics = iteration_metrics(step, batch.trajectories, reference) | batch.metrics() | self.stream_metrics()
        result = self.trainer.call("step", batch.trajectories, sorted(reference), {})
        t2 = time.monotonic()
        metrics.update(result, rollout_s=round(batch.waited_s, 1), train_s=round(t2 - t1, 1), sync_s=0.0,
                       policy_version=self.version)  # fmt: skip
        if self.note_step(step, result):
            self._sync(step, metrics)
        self.scheduler.set_version(self.version)  # also after a skipped update: launches held during it resume
        busy = time.monotonic() - t1
        metrics["trainer_idle_frac"] = round(batch.waited_s / max(1e-9, batch.waited_s + busy), 3)
        metrics |= {f"attempts_{k}": v for k, v in self.scheduler.counts().items()}
        self._write(batch.trajectories, reference, metrics)
        metrics["checkpoint_s"] = self.checkpoint(step, None)
        self.stop_if_diverged()
        return metrics

    # -- train.mode=colocated (roll/colocate.py)
    def run_colocated(self, tasks, rng: random.Random, history: list[dict]) -> None:
        """Sync mode's iterations through the colocated state machine; the run's busy fraction at the end."""
        from roll.colocate import ActorTrainer, Colocation

        cfg = self.cfg
        engines = self.inference.colocated_engines(lambda name: lambda ref: self._get(name, ref, timeout=600))
        # rank 0 stands for the group: on cpu the trainer is never moved (ActorTrainer only reads its state), and on
        # cuda colocated runs one rank (roll.config.check_train_workers)
        trainer = ActorTrainer(self.trainer.actors[0], lambda ref: self._get(self.trainer.names[0], ref, timeout=600))
        self.colocation = Colocation(cfg.device, engines, trainer)
        for it in range(self.completed + 1, cfg.train.iterations + 1):
            history.append(self.colocated_iteration(it, tasks, rng))
            log(format_metrics(history[-1]))
        m = self.colocation.totals()
        log(f"colocated: the shared device busy {m['busy_frac_shared']:.0%} of {m['wall_s']:.0f}s (rollout "
            f"{m['rollout_s']:.0f}s, train {m['train_s']:.0f}s, sync {m['sync_s']:.0f}s, idle {m['idle_s']:.0f}s)")  # fmt: skip

    def colocated_iteration(self, it: int, tasks, rng: random.Random) -> dict:
        """One iteration as `iteration`, each part in its phase; rollout_s, train_s and sync_s (the weight update
        and the policy save) are the phases' seconds as the machine charged them, idle_s what was between."""
        machine = self.colocation
        machine.enter("rollout")
        trajectories, attempts, resampling = self.rollout(it, tasks, rng)
        machine.enter("train")
        reference = {a.trajectory_id for a in attempts if a.oracle}
        given = {a.trajectory_id: a.start_chunk for a in attempts if a.start_chunk}
        machine.require("train")
        step = self.trainer.call("step", trajectories, sorted(reference), given)
        metrics = iteration_metrics(it, trajectories, reference) | resampling | step | {"policy_version": self.version}
        if self.note_step(it, step):
            machine.enter("sync")
            self._sync(it, metrics)
        machine.enter("idle")
        metrics |= machine.lap()
        self._write(trajectories, reference, metrics)
        metrics["checkpoint_s"] = self.checkpoint(it, rng, last=it == self.cfg.train.iterations)
        self.stop_if_diverged()
        return metrics

    def note_step(self, it: int, step: dict) -> bool:
        """Whether the update was applied (then the weights go to the inference worker); a skipped one is counted."""
        if step["skipped"]:
            self.skipped_in_row.append(it)
            log(f"  update skipped: {step['error']}; policy version stays {self.version}")
            return False
        self.skipped_in_row = []
        if not step["chunks"]:
            log("  no trainable chunks were recorded: no update")
        return bool(step["chunks"])

    def stop_if_diverged(self) -> None:
        if len(self.skipped_in_row) >= self.cfg.train.max_skipped_steps:
            raise TrainingDiverged(
                f"NaN/Inf loss in iterations {self.skipped_in_row} in a row (train.max_skipped_steps="
                f"{self.cfg.train.max_skipped_steps}); stopped with policy version {self.version}, no update was "
                "applied on a bad step; lower train.lr or check the rollouts' logprobs"
            )  # fmt: skip

    def _sync(self, it: int, metrics: dict) -> None:
        """The new weights into every inference engine at once (in memory, no restart) and to disk as policy/v<N>;
        the version counts once every engine serves it."""
        t = time.monotonic()
        version = self.version + 1
        buckets = self.trainer.first_ref("weight_buckets")  # an ObjectRef: Ray hands the bytes actor to actor
        result = self.inference.update_weights(buckets, version)
        self.version = version
        t2 = time.monotonic()
        path = self.trainer.first("save", str(self.run_dir / "policy" / f"v{version}"))
        metrics.update(sync_s=round(t2 - t, 1), save_s=round(time.monotonic() - t2, 1), policy_version=version,
                       policy_dir=path, synced_tensors=result.get("tensors"))  # fmt: skip

    # -- fault tolerance (roll/resume.py)
    def _get(self, worker: str, ref, timeout: float | None = None):
        """ray.get of a worker's call; the worker's death is a WorkerDied naming it, never a hang or a traceback."""
        import ray

        try:
            return ray.get(ref, timeout=timeout)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, RollError):  # a user error raised in the worker: its one line, not Ray's trace
                raise e.cause from None
            raise
        except ray.exceptions.OutOfMemoryError as e:  # Ray's memory monitor killed the worker's process
            raise WorkerDied(f"{_who(worker)} was killed: out of memory ({_why(e)}); the run stopped; "
                             f"{self._resume_hint()}") from e  # fmt: skip
        except ray.exceptions.RayActorError as e:
            raise WorkerDied(f"{_who(worker)} died ({_why(e)}); the run stopped; {self._resume_hint()}") from e
        except ray.exceptions.GetTimeoutError as e:
            raise WorkerDied(f"{_who(worker)} did not answer within {timeout:.0f}s; the run stopped; "
                             f"{self._resume_hint()}") from e  # fmt: skip

    def _resume_hint(self) -> str:
        if not self.completed:
            return "no iteration had completed"
        return f"`roll train ... --resume` continues after iteration {self.completed}"

    @contextmanager
    def rock_alive(self):
        """An attempt's failure because the rock server died (its sandboxes with it) is a WorkerDied naming it, not
        the connection error's traceback from inside an attempt."""
        try:
            yield
        except Exception as e:
            proc = self.rock.proc if self.rock is not None else None
            if proc is None or proc.poll() is None or isinstance(e, RollError):
                raise
            log_file = Path(self.rock.state_dir) / "serve.log"
            raise WorkerDied(f"the rock server died (exit status {proc.returncode}, log {log_file}) and its sandboxes "
                             f"with it; the run stopped; {self._resume_hint()}") from e  # fmt: skip

    def _remove_orphans(self) -> None:
        """The rock server died: remove its containers through Docker (they carry its manager id)."""
        import docker

        try:
            manager = (Path(self.rock.state_dir) / "manager_id").read_text().strip()
            client = docker.from_env()
            try:
                for c in client.containers.list(all=True, filters={"label": f"ale.rock.manager={manager}"}):
                    c.remove(force=True)
                    log(f"removed sandbox container {c.name} of the dead rock server")
            finally:
                client.close()
        except Exception as e:
            log(f"could not remove the dead rock server's sandboxes ({e}); a `roll train ... --resume` removes them")

    def check_inference(self) -> None:
        """Every inference engine still answers: a dead engine fails every model call of the rollouts, which would
        otherwise pass for a policy that resolves nothing; an engine the router saw die or hang counts too."""
        self.inference.policy_versions(timeout=120)
        failed = self.inference.failures()
        if failed:
            raise WorkerDied(f"{'; '.join(failed)}; the run stopped; {self._resume_hint()}")

    def checkpoint(self, it: int, rng: random.Random | None, last: bool = False) -> float:
        """Iteration (async: update) `it` is complete: its checkpoint, written atomically (roll/resume.py), when
        `it` is a multiple of `train.checkpoint_every` or the `last`; returns the seconds it took."""
        if it % self.cfg.train.checkpoint_every and not last:
            return 0.0
        t = time.monotonic()
        internal = rng.getstate() if rng is not None else random.Random(self.cfg.tasks.seed).getstate()
        state = DriverState(iteration=it, mode=self.cfg.train.mode, policy_version=self.version,
                            skipped_in_row=list(self.skipped_in_row), rng=json.loads(json.dumps(internal)),
                            record_bytes=record_bytes(self.run_dir))  # fmt: skip
        resampler = self.resampler.state_dict() if self.resampler else None
        write_checkpoint(self.run_dir, state, lambda d: self.trainer.call("save_state", str(d)), resampler)
        self.completed = it
        log(f"  checkpoint {it} written ({time.monotonic() - t:.1f}s)")
        return round(time.monotonic() - t, 1)

    def _roll_back(self, point: ResumePoint) -> None:
        """Before the workers start: the records and attempts of the unfinished iteration dropped."""
        discarded, unfinished = roll_back(self.run_dir, point)
        self.completed = point.state.iteration
        log(f"resuming {self.cfg.name} after iteration {point.state.iteration} (policy version "
            f"{point.state.policy_version}): {discarded} trajectories of the unfinished iteration discarded, not "
            f"trained on ({unfinished} attempts were cut short)")  # fmt: skip

    def _restore(self, point: ResumePoint) -> None:
        """The trainer's checkpointed state, its weights into the inference worker under the checkpoint's version."""
        t = time.monotonic()
        self.trainer.call("load_state", str(point.trainer_dir))  # every rank: each reads its optimizer partition
        self.version = point.state.policy_version
        if self.version:
            self.inference.update_weights(self.trainer.first_ref("weight_buckets"), self.version)
        self.skipped_in_row = list(point.state.skipped_in_row)
        if self.resampler is not None and point.resampler is not None:
            self.resampler.load_state_dict(point.resampler)
        log(f"restored checkpoint {point.path.name}: trainer state and policy version {self.version} "
            f"[{time.monotonic() - t:.1f}s]")  # fmt: skip

    def _write(self, trajectories: list[Trajectory], reference: set[str], metrics: dict) -> None:
        if self.inference is not None:
            metrics.update(self.inference.request_counts())  # per engine, with several
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        with open(self.run_dir / "trajectories.jsonl", "a") as f:
            for t in trajectories:
                row = {"iteration": metrics["iteration"], "reference": t.trajectory_id in reference}
                f.write(json.dumps(row | t.model_dump(mode="json")) + "\n")

    def close(self) -> None:
        """Stop everything, in reverse order; each step runs even if an earlier one fails."""
        if self.stream is not None:
            self.stream.close()
        if self.scheduler is not None:
            self.scheduler.close()
        left = self.tracker.delete_all()
        if left and self.rock is not None and self.rock.proc is not None and self.rock.proc.poll() is not None:
            self._remove_orphans()
        elif left:
            log(f"could not delete sandboxes {left}; the rock server removes them on exit")
        if self.resampler is not None and self.client is not None:
            self.resampler.snapshots.delete_all(self.client)
        if self.client is not None:
            self.client.close()
        if self.rock is not None:
            try:
                self.rock.stop()
            except Exception as e:
                log(f"stopping the rock server failed: {e}")
        if self.teacher is not None:
            self.teacher.stop()
        if self.ray_started:
            import ray

            if self.inference is not None:
                self.inference.stop()  # the router, the engines' servers, the actors
            if self.trainer is not None:
                self.trainer.kill()
            ray.shutdown()


def format_metrics(m: dict) -> str:
    line = (f"  reward {m['reward_mean']:.2f} pass {m['pass_rate']:.0%} | chunks {m.get('chunks', 0)} "
            f"(policy {m['policy_chunks']}) | sampled by policy_version {m['policy_versions']} | "
            f"time rollout {m['rollout_s']:.1f}s train {m['train_s']:.1f}s sync {m['sync_s']:.1f}s")  # fmt: skip
    if "staleness_max" in m:
        line += (f" | staleness max {m['staleness_max']} mean {m['staleness_mean']:.2f}, versions/trajectory "
                 f"{m['versions_per_trajectory_mean']:.2f}, in flight {m['in_flight']}, "
                 f"trainer idle {m['trainer_idle_frac']:.0%}")  # fmt: skip
    if "busy_frac_shared" in m:
        line += (f" | colocated: idle {m['idle_s']:.1f}s (switching {m['switch_s']:.1f}s), busy: shared device "
                 f"{m['busy_frac_shared']:.0%} (run {m['busy_frac_shared_run']:.0%}), engines "
                 f"{m['busy_frac_engines']:.0%}, trainer {m['busy_frac_trainer']:.0%}")  # fmt: skip
    if "engine_requests" in m:
        line += f" | requests per engine {m['engine_requests']}"
    if m.get("chunks_streamed") is not None:
        line += f" | streamed {m['chunks_streamed']} chunks (refetched {m['chunks_refetched']})"
        if m.get("stream_lag_max_s") is not None:
            line += f", lag p50 {m['stream_lag_p50_s']:.3f}s max {m['stream_lag_max_s']:.3f}s"
    if m.get("stragglers_deferred"):
        line += f" | {m['stragglers_deferred']} straggler group(s) deferred"
    if m.get("resampled_attempts"):
        line += f" | resampled from chunks {m['resampled_starts']}: pass {m['resampled_pass_rate']:.0%}"
    if m.get("loss") is not None:
        line += f" | {m['algorithm']} loss {m['loss']:.4f} grad_norm {m.get('grad_norm', 0):.3f}"
        if "mismatch_frac" in m:
            line += f" ratio {m.get('ratio_mean', 1):.3f} mismatch {m['mismatch_frac']:.0%}"
    return line


def train(cfg: RunConfig, model_dir: Path | None = None, tasks: list[TaskSpec] | None = None,
          resume: bool = False) -> tuple[int, list[dict]]:  # fmt: skip
    """Run `cfg.train.iterations` iterations from `model_dir` (default: cfg.model.dir, made by rome init when
    missing) on `tasks` (default: the configured suite's train split); returns the process exit status and the
    per-iteration metrics (async mode: per update). `resume`: carry on after the run dir's last checkpoint
    (roll/resume.py); without it a run dir with completed iterations is refused."""
    check_train_workers(cfg)  # before anything starts
    point = check_resume(cfg, resume)
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    run = Run(cfg)
    history = []
    start = time.monotonic()
    try:
        tasks = tasks or train_tasks(cfg)
        if len(tasks) < cfg.rollout.tasks_per_iteration:
            raise ValueError(f"only {len(tasks)} train tasks for rollout.tasks_per_iteration")
        preflight(tasks)
        model_dir = model_dir or ensure_model(cfg)
        if point is not None:
            check_resume_model(point, model_dir)
        run.start(model_dir, tasks, point)
        history += resumed_history(run.run_dir) if point else []
        rng = point.state.random() if point and cfg.train.mode != "async" else random.Random(cfg.tasks.seed)
        if cfg.train.mode == "async":
            run.run_async(tasks, rng, history)
        elif cfg.train.mode == "colocated":
            run.run_colocated(tasks, rng, history)
        else:
            for it in range(run.completed + 1, cfg.train.iterations + 1):
                history.append(run.iteration(it, tasks, rng))
                log(format_metrics(history[-1]))
    except KeyboardInterrupt:
        log("interrupted: removing sandboxes and stopping workers")
        return 130, history
    finally:
        run.close()
        signal.signal(signal.SIGTERM, previous)
    total = time.monotonic() - start
    log(f"done: {len(history)} iterations in {total:.0f}s, chunks {[m.get('chunks', 0) for m in history]}, "
        f"whole-attempt reward {[round(m['reward_mean'], 2) for m in history]}"
        + (f", resampled attempts resolved {[round(m.get('resampled_pass_rate') or 0, 2) for m in history]}"
           if any(m.get("resampled_attempts") for m in history) else "")
        + f", metrics in {run.run_dir / 'metrics.jsonl'}")  # fmt: skip
    return 0, history
