"""One attempt at one task in a fresh ROCK sandbox: the runner behind `roll eval`, `roll data synth` and
`roll train` (`.venv/bin/pytest tests/roll/test_eval.py tests/roll/test_eval_docker.py`).

Per attempt: build or pick the task's image, create a sandbox (on the model network with the iflow
source mounted read-only when the agent is iflow), run the task's setup in its workdir, run the agent,
then copy in the tests and run them in a fresh shell of the same sandbox, grade them, take the recorded
chunks (from the run's stream buffer when given, roll/rollout/stream.py: they arrived as they were recorded;
else pulled from the sandbox now), and delete the sandbox in `finally`. Few calls per attempt (one create, one
exec per stage, one upload per file) because eval runs hundreds of them and the per-attempt overhead is what
concurrency cannot hide on two cores.

Agents: `iflow` (`python3 -m iflow_cli -p INSTRUCTION --yolo` on the image's bare python3, its model behind
the in-sandbox ModelProxy), `oracle` (runs the task's golden solution from /solution), `noop` (nothing).
Failures of the task or the agent become a status of the returned Trajectory; failures of the
infrastructure (the rock server gone) raise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rock import errors as rock_errors
from rock.contracts import Chunk, Trajectory, link_tool_results, versions_of
from roll.rollout.stream import ChunkStream
from roll.tasks.spec import TaskSpec

AGENTS = ("iflow", "oracle", "noop")
AgentName = Literal["iflow", "oracle", "noop"]
AGENT_SRC_ROOT = "/opt/ale"  # PYTHONPATH inside the sandbox; the iflow_cli package is mounted under it
INFO_PATH = "/tmp/iflow-info.json"
TESTS_DIR = "/tests"
SOLUTION_DIR = "/solution"
REWARD_FILE = "/logs/verifier/reward.txt"

# iflow's termination_reason (iflow_cli/agent.py RunResult, cli.py) -> our status when the tests fail.
# finished / max_turns / context_limit are the agent's own end: the tests' verdict stands (unresolved).
REASON_STATUS = {
    "timeout": "agent_timeout",
    "model_error": "model_error",
    "format_error": "parse_error",
    "config_error": "agent_error",
    "interrupted": "agent_error",
}


class AgentOptions(BaseModel):
    """How the agent runs; `timeout_s=None` takes the task's own `agent_timeout_s`."""

    model_config = ConfigDict(extra="forbid")
    max_turns: int = Field(10, ge=1, description="iflow --max-turns: model calls before it stops")
    max_tokens: int | None = Field(None, ge=1, description="IFLOW_MAX_TOKENS: cap on each completion")
    temperature: float | None = Field(
        None,
        ge=0,
        le=2,
        description="IFLOW_TEMPERATURE: sampling temperature "
        "(None: the server's default, 1.0 for rome serve; 0: greedy)",
    )
    timeout_s: float | None = Field(None, gt=0, description="wall-clock limit of the agent (default: the task's)")
    iflow_mount: str = Field(f"{AGENT_SRC_ROOT}/iflow_cli", description="where the iflow_cli source is mounted")


class SandboxTracker:
    """Every sandbox a run created and has not yet deleted, so the run can remove them all in `finally`."""

    def __init__(self):
        self._live: dict[str, object] = {}
        self._lock = threading.Lock()
        self._closed = False

    def add(self, sandbox) -> None:
        with self._lock:
            if not self._closed:
                self._live[sandbox.id] = sandbox
                return
        # Created while the run was being stopped: remove it at once, and stop this attempt.
        sandbox.delete()
        raise RuntimeError(f"sandbox {sandbox.id} was created after the run was stopped; deleted")

    def close(self) -> None:
        """No more sandboxes: any added from now on is deleted at once."""
        with self._lock:
            self._closed = True

    def delete(self, sandbox) -> None:
        try:
            sandbox.delete()
        except rock_errors.NotFound:
            pass  # already removed (by delete_all after Ctrl-C, or its ttl)
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

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)


def iflow_source_dir() -> Path:
    """The iflow_cli package dir, mounted read-only into every iflow sandbox (rock serve must allow it)."""
    spec = importlib.util.find_spec("iflow_cli")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the iflow_cli package is not importable; run `make install`")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


class EnvironmentFailed(Exception):
    """The task's image could not be had or built, or its setup failed: the attempt is environment_error."""


# ---- grading ------------------------------------------------------------------------------------

PYTEST_LINE = re.compile(r"^(PASSED|FAILED|ERROR|XPASS|XFAIL|SKIPPED)\b", re.M)
PYTEST_TOTALS = re.compile(r"(\d+) (passed|failed|errors?)\b")


def pytest_passed(output: str) -> bool:
    """Terminal-Bench 1.x grading: the `pytest -rA` short summary lists passes and no failure or error.
    Falls back to the final `N passed, M failed` line when the summary section is missing (no -rA)."""
    kinds = (
        PYTEST_LINE.findall(output.split("short test summary info")[-1]) if "short test summary info" in output else []
    )
    if kinds:
        return "PASSED" in kinds and "FAILED" not in kinds and "ERROR" not in kinds
    totals: dict[str, int] = {}
    for n, kind in PYTEST_TOTALS.findall(output):
        totals[kind.rstrip("s") if kind.startswith("error") else kind] = int(n)
    return totals.get("passed", 0) > 0 and not totals.get("failed") and not totals.get("error")


def decide_status(agent: str, agent_run, info: dict | None, test_run, passed: bool) -> tuple[str, str]:
    """(status, one-line error) of an attempt whose environment came up; see rock.contracts.Status."""
    if test_run.timed_out:
        return "test_timeout", "the tests ran past the task's test timeout"
    if passed:
        return "resolved", ""
    if agent_run is not None and agent_run.timed_out:
        return "agent_timeout", "the agent ran past its timeout"
    if agent == "iflow":
        if info is None:
            return "agent_error", f"iflow wrote no execution info (exit {agent_run.exit_code}): {last_line(agent_run)}"
        reason = str(info.get("termination_reason", ""))
        if reason in REASON_STATUS:
            return REASON_STATUS[reason], f"iflow stopped: {reason}: {one_line(info.get('error') or '')}".rstrip(": ")
        return "unresolved", ""
    if agent == "oracle" and agent_run is not None and agent_run.exit_code != 0:
        return "agent_error", f"the solution exited {agent_run.exit_code}: {last_line(agent_run)}"
    return "unresolved", ""


def one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def last_line(result) -> str:
    lines = ((result.stderr or "") + "\n" + (result.stdout or "")).strip().splitlines()
    errs = (result.stderr or "").strip().splitlines()
    return one_line((errs or lines or [""])[-1])


# ---- images -------------------------------------------------------------------------------------

_build_locks: dict[str, threading.Lock] = {}
_build_locks_guard = threading.Lock()


def task_image(client, task: TaskSpec) -> str:
    """The image to run: the formats helper's `ensure_image` (builds a Dockerfile once, cached by content
    hash), else `environment.image`. Concurrent attempts of one Dockerfile wait for one build."""
    env = task.environment
    try:
        from roll.tasks.environment import ensure_image
    except ImportError:
        ensure_image = None
    if ensure_image is None:
        if not env.image:
            raise EnvironmentFailed("the task needs its Dockerfile built and no image builder is installed")
        return env.image
    key = hashlib.sha256(json.dumps([env.image, env.dockerfile, env.files], sort_keys=True).encode()).hexdigest()
    with _build_locks_guard:
        lock = _build_locks.setdefault(key, threading.Lock())
    with lock:
        try:
            return ensure_image(client, task)
        except rock_errors.RockError as e:
            raise EnvironmentFailed(f"image build failed: {e}") from e
        except (ValueError, OSError) as e:
            raise EnvironmentFailed(f"image: {e}") from e


# ---- the attempt --------------------------------------------------------------------------------


class _Logs:
    """The attempt's log folder (nothing is written when it is None)."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, text: str) -> None:
        if self.folder is not None:
            (self.folder / name).write_text(text, encoding="utf-8", errors="replace")

    def exec(self, name: str, result) -> None:
        if result is not None:
            head = f"# exit {result.exit_code}, {result.duration_s:.2f}s, timed_out={result.timed_out}\n"
            self.write(
                f"{name}.log", head + (result.stdout or "") + ("\n# stderr\n" + result.stderr if result.stderr else "")
            )


def _upload(sandbox, root: str, files: dict[str, str]) -> None:
    # One PUT per file (a tar entry each, parents created by the engine): no exec, no tar in the image.
    for rel, text in files.items():
        sandbox.write_file(f"{root}/{rel}", text, mode=0o755 if rel.endswith(".sh") else 0o644)


def _chunks(raw) -> list[Chunk]:
    # The SDK returns Chunk models (dicts before the contract landed everywhere); accept both.
    chunks = [c if isinstance(c, Chunk) else Chunk.model_validate(c) for c in raw]
    return sorted(chunks, key=lambda c: c.index)


def iflow_sandbox(image: str, trajectory_id: str, options: AgentOptions, model_url: str | None = None,
                  iflow_source: Path | None = None) -> dict:  # fmt: skip
    """The create body of a sandbox that runs iflow: the model network, iflow's settings in its environment, the
    agent's source mounted read-only, and the model upstream when given."""
    env = {"PYTHONPATH": AGENT_SRC_ROOT}
    if options.max_tokens:
        env["IFLOW_MAX_TOKENS"] = str(options.max_tokens)
    if options.temperature is not None:
        env["IFLOW_TEMPERATURE"] = str(options.temperature)
    source = iflow_source or iflow_source_dir()
    create: dict = {"image": image, "trajectory_id": trajectory_id, "network": "model", "env": env,
                    "mounts": [{"source": str(source), "target": options.iflow_mount, "read_only": True}]}  # fmt: skip
    if model_url:
        create["model_upstream"] = model_url
    return create


def run_attempt(
    client,
    task: TaskSpec,
    agent: AgentName,
    *,
    model_url: str | None = None,
    attempt_dir: str | Path | None = None,
    trajectory_id: str | None = None,
    group: int | None = None,
    options: AgentOptions | None = None,
    tracker: SandboxTracker | None = None,
    iflow_source: Path | None = None,
    stream: ChunkStream | None = None,
) -> Trajectory:
    """Run `agent` on `task` in a fresh sandbox of `client`'s rock server; the verdict is in `.status`.
    `model_url` is the iflow agent's upstream (default: the rock server's). Logs go to `attempt_dir`.
    `stream`: the run's chunk buffer, which the trajectory's chunks are taken from."""
    if agent not in AGENTS:
        raise ValueError(f"unknown agent {agent!r}; choose one of {', '.join(AGENTS)}")
    options = options or AgentOptions()
    tracker = tracker or SandboxTracker()
    logs = _Logs(Path(attempt_dir) if attempt_dir is not None else None)
    start = time.monotonic()
    base = {
        "trajectory_id": trajectory_id or f"traj-{uuid.uuid4().hex[:12]}",
        "task_id": task.id,
        "family": task.family,
        "split": task.split,
        "agent": agent,
        "group": group,
    }

    def failed(status: str, error: str, sandbox_id: str | None = None) -> Trajectory:
        traj = Trajectory(**base, reward=0.0, status=status, error=one_line(error), sandbox_id=sandbox_id,
                          seconds=time.monotonic() - start)  # fmt: skip
        logs.write("trajectory.json", traj.model_dump_json(indent=1))
        return traj

    try:
        image = task_image(client, task)
    except EnvironmentFailed as e:
        logs.write("environment.log", str(e) + "\n")
        return failed("environment_error", str(e))
    if agent == "iflow":
        create = iflow_sandbox(image, base["trajectory_id"], options, model_url, iflow_source)
    else:
        create = {"image": image, "trajectory_id": base["trajectory_id"]}
    try:
        sandbox = client.create_sandbox(**create)
    except (rock_errors.ImageNotFound, rock_errors.ValidationFailed) as e:
        logs.write("environment.log", f"{type(e).__name__}: {e}\n")
        return failed("environment_error", f"sandbox of image {image}: {e}")
    tracker.add(sandbox)
    try:
        return _run_in(sandbox, task, agent, options, logs, base, start, stream)
    except EnvironmentFailed as e:
        return failed("environment_error", str(e), sandbox.id)
    finally:
        tracker.delete(sandbox)
        if stream is not None:
            stream.discard(base["trajectory_id"])  # taken already, or nothing to take


def _run_in(sandbox, task: TaskSpec, agent: str, options: AgentOptions, logs: _Logs, base: dict,
            start: float, stream: ChunkStream | None = None) -> Trajectory:  # fmt: skip
    wd = task.workdir
    # $0 and $1 carry the workdir and the script, so neither needs quoting.
    setup = sandbox.exec(["bash", "-c", 'mkdir -p -- "$0" && cd -- "$0" && exec bash -c "$1"', wd, task.environment.setup],
                         timeout=max(60.0, task.test_timeout_s))  # fmt: skip
    if setup.exit_code != 0:
        logs.exec("setup", setup)
        why = "timed out" if setup.timed_out else f"exited {setup.exit_code}"
        raise EnvironmentFailed(f"setup {why}" + (f": {last_line(setup)}" if last_line(setup) else ""))

    agent_timeout = options.timeout_s or task.agent_timeout_s
    run, info = None, None
    if agent == "oracle":
        _upload(sandbox, SOLUTION_DIR, {"solve.sh": task.solution, **task.solution_files})
        run = sandbox.exec(["bash", f"{SOLUTION_DIR}/solve.sh"], timeout=agent_timeout, cwd=wd)
    elif agent == "iflow":
        # iflow's own --timeout ends the session a little before ours, so it still writes its execution info.
        argv = ["python3", "-m", "iflow_cli", "-p", task.instruction, "--yolo", "--max-turns", str(options.max_turns),
                "-o", INFO_PATH, "--timeout", str(max(1.0, agent_timeout - 5))]  # fmt: skip
        run = sandbox.exec(argv, timeout=agent_timeout, cwd=wd)
        try:
            info = json.loads(sandbox.read_file(INFO_PATH))
            logs.write("execution-info.json", json.dumps(info, indent=1))
        except (rock_errors.NotFound, ValueError):
            info = None
    if run is not None:
        logs.write("agent.stdout", run.stdout or "")
        logs.write("agent.stderr", run.stderr or "")

    _upload(sandbox, TESTS_DIR, task.tests)
    test = sandbox.exec(["bash", "-c", 'mkdir -p /logs/verifier && cd -- "$0" && exec bash "$1"', wd,
                         f"{TESTS_DIR}/{task.test_entry}"], timeout=task.test_timeout_s, env={"TEST_DIR": TESTS_DIR})  # fmt: skip
    logs.exec("tests", test)
    passed = _graded(sandbox, task, test)
    status, error = decide_status(agent, run, info, test, passed)

    chunks = []
    if agent == "iflow":
        chunks = stream.take(sandbox, base["trajectory_id"]) if stream else _chunks(sandbox.trajectory())
    tool_results = link_tool_results(chunks, (info or {}).get("tool_results") or [])
    traj = Trajectory(
        **base,
        reward=1.0 if status == "resolved" else 0.0,
        status=status,
        error=error,
        sandbox_id=sandbox.id,
        chunks=chunks,
        tool_results=tool_results,
        policy_versions=versions_of(chunks),
        seconds=time.monotonic() - start,
    )
    logs.write("trajectory.json", traj.model_dump_json(indent=1))
    return traj


def _graded(sandbox, task: TaskSpec, test) -> bool:
    if test.timed_out:
        return False
    if task.grading == "exit_code":
        return test.exit_code == 0
    if task.grading == "pytest":
        return pytest_passed((test.stdout or "") + "\n" + (test.stderr or ""))
    try:  # reward_file (Harbor): the verifier writes 1 (or 1.0) when every check passed
        return float(sandbox.read_file(REWARD_FILE).decode().strip() or 0) >= 1.0
    except (rock_errors.NotFound, ValueError):
        return False
