"""The single controller of an RL run: `roll train configs/rl/tiny-cpu.yaml [key=value ...]`.

Per iteration: rollouts (iflow in ROCK sandboxes, sampling from the inference worker), one trainer
update on the recorded chunks, weights saved and loaded into the inference worker; the next iteration's
chunks carry the new policy_version. Everything it starts (sandboxes, rock server, Ray actors) is
stopped in `finally`, also on Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rock.contracts import Chunk, Trajectory
from roll.algo import group_advantages
from roll.config import RunConfig
from roll.errors import PreflightError
from roll.rollout import AgentOptions, SandboxTracker, iflow_source_dir, run_attempt
from roll.tasks.spec import TaskSpec


def log(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class Attempt:
    task: TaskSpec
    group: int  # attempts at the same task share a group: their mean reward is the baseline
    trajectory_id: str = field(default_factory=lambda: f"traj-{uuid.uuid4().hex[:12]}")


def train_tasks(cfg: RunConfig) -> list[TaskSpec]:
    """The train split of the configured suite families."""
    from roll.tasks.suite import generate_suite

    return generate_suite(cfg.tasks.families, split="train", train_per_family=cfg.tasks.train_per_family)


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
    chosen = rng.sample(tasks, cfg.rollout.tasks_per_iteration)
    return [Attempt(task=t, group=g) for g, t in enumerate(chosen) for _ in range(cfg.rollout.group_size)]


def run_attempts(client, attempts: list[Attempt], cfg: RunConfig, tracker: SandboxTracker, attempts_dir: Path,
                 on_done: Callable[[Trajectory], None] = lambda t: None) -> list[Trajectory]:  # fmt: skip
    """Run all attempts at once, iflow on the rock server's default upstream (the inference worker); one thread
    each, since the work happens in the sandboxes and the engine. Infrastructure failures raise."""
    options = AgentOptions(max_turns=cfg.agent.max_turns, max_tokens=cfg.agent.max_tokens, timeout_s=cfg.agent.timeout_s,
                           iflow_mount=cfg.sandbox.iflow_mount)  # fmt: skip
    source = iflow_source_dir()
    pool = ThreadPoolExecutor(max_workers=len(attempts), thread_name_prefix="rollout")
    try:
        futures = [
            pool.submit(
                run_attempt,
                client,
                a.task,
                "iflow",
                attempt_dir=attempts_dir / a.trajectory_id,
                trajectory_id=a.trajectory_id,
                group=a.group,
                options=options,
                tracker=tracker,
                iflow_source=source,
            )  # fmt: skip
            for a in attempts
        ]
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
    """Every trainable chunk with the advantage of its trajectory (reward minus its task group's mean)."""
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
        self.ray_started = False

    def start(self, model_dir: Path) -> None:
        import ray

        from roll.workers.inference import InferenceServer
        from roll.workers.trainer import Trainer

        cfg = self.cfg
        # A run's records start afresh; re-running a name overwrites its policies too (the initial model stays).
        for name in ("metrics.jsonl", "trajectories.jsonl"):
            (self.run_dir / name).unlink(missing_ok=True)
        t = time.monotonic()
        # Actor output (vLLM and DeepSpeed start-up chatter) goes to Ray's session logs, not the console;
        # an actor's failure still reaches the driver as the exception of the ray.get that awaited it.
        ctx = _start_ray()
        self.ray_started = True
        # ray.init installs a native SIGTERM handler that aborts the process; put ours back on top.
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        log(f"ray started; worker logs in {ctx.address_info.get('session_dir', '?')}/logs")
        env = {"DS_ACCELERATOR": "cpu", "VLLM_CPU_KVCACHE_SPACE": str(cfg.inference.kvcache_gb),
               "OMP_NUM_THREADS": str(os.cpu_count() or 1), "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
        # num_cpus=0: on a 2-core machine both actors must coexist; the OS time-shares them.
        opts = {"num_cpus": 0, "runtime_env": {"env_vars": env}}
        self.inference = (
            ray.remote(InferenceServer)
            .options(**opts)
            .remote(str(model_dir), cfg.inference.engine, cfg.inference.kvcache_gb)
        )
        tc = cfg.train
        self.trainer = (
            ray.remote(Trainer)
            .options(**opts)
            .remote(str(model_dir), tc.lr, tc.zero_stage, tc.grad_clip, tc.clip_low, tc.clip_high, tc.seed)
        )
        log(f"starting the inference worker ({cfg.inference.engine}) and the trainer worker (DeepSpeed) ...")
        url = ray.get(self.inference.url.remote(), timeout=cfg.inference.startup_timeout_s)
        log(f"inference worker ({cfg.inference.engine}) serving {url}")
        ray.get(self.trainer.__ray_ready__.remote())
        log(f"trainer worker ready (DeepSpeed ZeRO-{tc.zero_stage}, CPU)  [{time.monotonic() - t:.0f}s]")

        from rock.launch import RockProcess

        self.rock = RockProcess(
            model_upstream=url, allow_mounts=[str(iflow_source_dir())], state_dir=str(self.run_dir / "rock"),
            on_exit="remove",
        )  # fmt: skip
        self.rock.__enter__()
        self.client = self.rock.client()  # one for the run: `close` still needs it to delete sandboxes
        log(f"rock server at {self.rock.url}")

    def iteration(self, it: int, tasks, rng: random.Random) -> dict:
        import ray

        cfg, n = self.cfg, self.cfg.train.iterations
        attempts = pick_attempts(tasks, cfg, rng)
        log(f"iteration {it}/{n}: rollout of {len(attempts)} attempts at {cfg.rollout.tasks_per_iteration} tasks")
        done = []

        def progress(traj: Trajectory) -> None:
            done.append(traj)
            log(f"  [{len(done)}/{len(attempts)}] {traj.task_id}: reward {traj.reward:.0f} ({traj.status}), "
                f"{len(traj.chunks)} chunks, {traj.seconds:.0f}s")  # fmt: skip

        t0 = time.monotonic()
        trajectories = run_attempts(self.client, attempts, cfg, self.tracker, self.run_dir / "attempts" / f"it{it}",
                                    progress)  # fmt: skip
        t1 = time.monotonic()
        chunks, advantages = chunk_advantages(trajectories)
        metrics = {
            "iteration": it,
            "reward_mean": sum(t.reward for t in trajectories) / len(trajectories),
            "chunks": len(chunks),
            "prompt_tokens": sum(len(c.prompt_token_ids or []) for c in chunks),
            "response_tokens": sum(len(c.response_token_ids) for c in chunks),
            "policy_versions": sorted({c.policy_version for c in chunks}, key=str),
            "rollout_s": round(t1 - t0, 1),
        }
        if not chunks:
            log("  no chunks with response tokens were recorded: skipping the update")
            metrics.update(train_s=0.0, sync_s=0.0)
            self._write(trajectories, metrics)
            return metrics
        metrics.update(ray.get(self.trainer.step.remote(chunks, advantages)))
        path = ray.get(self.trainer.save.remote(str(self.run_dir / "policy" / f"v{it}")))
        t2 = time.monotonic()
        ray.get(self.inference.load_weights.remote(path, it))
        t3 = time.monotonic()
        metrics.update(train_s=round(t2 - t1, 1), sync_s=round(t3 - t2, 1), policy_dir=path)
        self._write(trajectories, metrics)
        return metrics

    def _write(self, trajectories: list[Trajectory], metrics: dict) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        with open(self.run_dir / "trajectories.jsonl", "a") as f:
            for t in trajectories:
                f.write(json.dumps({"iteration": metrics["iteration"], **t.model_dump(mode="json")}) + "\n")

    def close(self) -> None:
        """Stop everything, in reverse order; each step runs even if an earlier one fails."""
        left = self.tracker.delete_all()
        if left:
            log(f"could not delete sandboxes {left}; the rock server removes them on exit")
        if self.client is not None:
            self.client.close()
        if self.rock is not None:
            try:
                self.rock.stop()
            except Exception as e:
                log(f"stopping the rock server failed: {e}")
        if self.ray_started:
            import ray

            if self.inference is not None:
                try:
                    ray.get(self.inference.stop.remote(), timeout=10)
                except Exception:
                    pass  # the actor is killed next anyway
            for actor in (self.inference, self.trainer):
                if actor is not None:
                    ray.kill(actor)
            ray.shutdown()


def format_metrics(m: dict) -> str:
    line = (f"  reward {m['reward_mean']:.2f} | chunks {m['chunks']} | tokens prompt {m['prompt_tokens']} "
            f"response {m['response_tokens']} | policy_version {m['policy_versions']} | "
            f"time rollout {m['rollout_s']:.1f}s train {m['train_s']:.1f}s sync {m['sync_s']:.1f}s")  # fmt: skip
    if "loss" in m:
        line += f" | loss {m['loss']:.4f} grad_norm {m['grad_norm']:.3f} ratio {m['ratio_mean']:.3f}"
    return line


def train(cfg: RunConfig) -> int:
    """Run `cfg.train.iterations` iterations; returns the process exit status."""
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    run = Run(cfg)
    history = []
    start = time.monotonic()
    try:
        tasks = train_tasks(cfg)
        if len(tasks) < cfg.rollout.tasks_per_iteration:
            raise ValueError(f"only {len(tasks)} train tasks for rollout.tasks_per_iteration")
        preflight(tasks)
        model_dir = ensure_model(cfg)
        run.start(model_dir)
        rng = random.Random(cfg.tasks.seed)
        for it in range(1, cfg.train.iterations + 1):
            history.append(run.iteration(it, tasks, rng))
            log(format_metrics(history[-1]))
    except KeyboardInterrupt:
        log("interrupted: removing sandboxes and stopping workers")
        return 130
    finally:
        run.close()
        signal.signal(signal.SIGTERM, previous)
    total = time.monotonic() - start
    log(f"done: {len(history)} iterations in {total:.0f}s, chunks {[m['chunks'] for m in history]}, "
        f"reward {[round(m['reward_mean'], 2) for m in history]}, metrics in {run.run_dir / 'metrics.jsonl'}")  # fmt: skip
    return 0
