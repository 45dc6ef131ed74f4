"""One task attempt = one ROCK sandbox running iflow; many run concurrently (driven by `roll train CONFIG`).

Per attempt: create a sandbox on the model network with the iflow source mounted read-only, run the
task's setup, run `python3 -m iflow_cli -p INSTRUCTION --yolo` on the image's bare python3 (its model
calls go through the in-sandbox proxy and are recorded as chunks by the gateway), run the task's test
for the reward, pull the chunks, delete the sandbox. Failures of the agent are zero reward; failures of
the infrastructure raise.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from roll.config import AgentConfig, SandboxConfig
from roll.tasks import TaskInstance

AGENT_SRC_ROOT = "/opt/ale"  # PYTHONPATH inside the sandbox; the iflow_cli package is mounted under it


@dataclass
class Attempt:
    task: TaskInstance
    group: int  # attempts at the same task share a group: their mean reward is the baseline
    trajectory_id: str = field(default_factory=lambda: f"traj-{uuid.uuid4().hex[:12]}")


@dataclass
class Trajectory:
    """ARCHITECTURE's trajectory: the ordered chunks of one attempt plus its task, reward and status."""

    trajectory_id: str
    sandbox_id: str
    task_id: str
    group: int
    chunks: list[dict]
    reward: float
    status: str  # "resolved" | "unresolved"
    agent_exit_code: int | None  # None when the agent was killed by the timeout
    agent_timed_out: bool
    seconds: float
    agent_output_tail: str = ""


class SandboxTracker:
    """Every sandbox this run created and has not yet deleted, so the driver can remove them all in `finally`."""

    def __init__(self):
        self._live: dict[str, object] = {}
        self._lock = threading.Lock()

    def add(self, sandbox) -> None:
        with self._lock:
            self._live[sandbox.id] = sandbox

    def delete(self, sandbox) -> None:
        try:
            sandbox.delete()
        finally:
            with self._lock:
                self._live.pop(sandbox.id, None)

    def delete_all(self) -> list[str]:
        """Delete what is left; returns the ids that could not be deleted (their errors are swallowed)."""
        with self._lock:
            live = list(self._live.values())
        failed = []
        for sandbox in live:
            try:
                self.delete(sandbox)
            except Exception:  # the manager may already be gone; its on-exit sweep removes the container
                failed.append(sandbox.id)
        return failed


def _check(result, what: str, task: TaskInstance) -> None:
    if result.exit_code != 0:
        out = (result.stderr or result.stdout or "").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"{what} of task {task.id} failed with exit {result.exit_code}: {out[0]}")


def run_attempt(client, attempt: Attempt, sandbox_cfg: SandboxConfig, agent: AgentConfig,
                iflow_source: Path, tracker: SandboxTracker) -> Trajectory:  # fmt: skip
    start = time.monotonic()
    task = attempt.task
    sandbox = client.create_sandbox(
        image=sandbox_cfg.image,
        network="model",
        mounts=[{"source": str(iflow_source), "target": sandbox_cfg.iflow_mount, "read_only": True}],
        trajectory_id=attempt.trajectory_id,
        env={"PYTHONPATH": AGENT_SRC_ROOT, "IFLOW_MAX_TOKENS": str(agent.max_tokens)},
    )
    tracker.add(sandbox)
    try:
        _check(sandbox.exec(task.setup, timeout=60), "setup", task)
        argv = ["python3", "-m", "iflow_cli", "-p", task.instruction, "--yolo", "--max-turns", str(agent.max_turns)]
        run = sandbox.exec(argv, timeout=agent.timeout_s, cwd="/root")
        test = sandbox.exec(task.test, timeout=60)
        chunks = sandbox.trajectory()
    finally:
        tracker.delete(sandbox)
    reward = 1.0 if test.exit_code == 0 else 0.0
    return Trajectory(
        trajectory_id=attempt.trajectory_id,
        sandbox_id=sandbox.id,
        task_id=task.id,
        group=attempt.group,
        chunks=chunks,
        reward=reward,
        status="resolved" if reward else "unresolved",
        agent_exit_code=run.exit_code,
        agent_timed_out=bool(run.timed_out),
        seconds=time.monotonic() - start,
        agent_output_tail=((run.stderr or "") + (run.stdout or ""))[-400:],
    )


def run_attempts(client, attempts: list[Attempt], sandbox_cfg: SandboxConfig, agent: AgentConfig,
                 iflow_source: Path, tracker: SandboxTracker,
                 on_done: Callable[[Trajectory], None] = lambda t: None) -> list[Trajectory]:  # fmt: skip
    """Run all attempts at once (one thread each: the work happens in the sandboxes and the engine)."""
    pool = ThreadPoolExecutor(max_workers=len(attempts), thread_name_prefix="rollout")
    try:
        futures = [pool.submit(run_attempt, client, a, sandbox_cfg, agent, iflow_source, tracker) for a in attempts]
        trajectories = []
        for future in as_completed(futures):
            trajectories.append(future.result())
            on_done(trajectories[-1])
    finally:
        # On error or Ctrl-C do not wait for the agents: the driver deletes their sandboxes next.
        pool.shutdown(wait=False, cancel_futures=True)
    order = {a.trajectory_id: i for i, a in enumerate(attempts)}
    return sorted(trajectories, key=lambda t: order[t.trajectory_id])
