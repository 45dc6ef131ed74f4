"""Chunk-level initialized resampling: an iflow attempt that starts at the state before chunk k of a reference
trajectory (`.venv/bin/pytest tests/roll/test_resample_docker.py`; `roll resample --task multi_step_chain-0
--agent oracle` shows it).

`resampled_attempt(client, task, reference, k)`:
1. The environment as the reference left it after chunks 0..k-1: a fork of the snapshot taken at that chunk
   boundary when the `SnapshotCache` holds one, else a fresh sandbox where the task's setup runs and then
   the prefix's recorded tool calls are replayed the way iflow's tools ran them (iflow's own Toolbox over
   the sandbox: shell commands by exec, write_file/replace by upload; the read-only tools change nothing and
   are skipped). The replayed state is then snapshotted into the cache, so the next attempts at (reference,
   k) fork it instead of replaying. A replayed call whose outcome differs from the recorded one (it fails
   where it succeeded, or the reverse) means the reference no longer reproduces: the attempt is
   `environment_error` with the reason, and the caller goes on with its other references.
2. The real iflow agent with `--history`: the messages of the reference's chunk k after its system prompt
   (the task, the prefix's replies and observations); the system prompt is iflow's own, so the policy's
   first prompt is the reference's chunk-k prompt and the policy samples only chunks k.. .
3. The task's tests, as in `run_attempt`. The returned Trajectory holds the reference's chunks 0..k-1
   (given) then the sampled ones (taken from the run's stream buffer when given, as `run_attempt` does; else
   pulled from the sandbox now), renumbered k.., with `start_chunk=k` and `reference_id`: the trainer
   puts an imitation term on `chunks[:start_chunk]` and the RL term on the rest.

Snapshots keep files, not processes: a task whose setup or prefix starts a background process (`setsid`,
`nohup`, `&`) is always replayed. Where the environment comes from is not in the Trajectory (the contract
has no field for it); the attempt log folder's `restore.log` says.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from iflow_cli.agent import TEXT_CALL
from iflow_cli.executors import ExecResult, Executor
from iflow_cli.tools import Toolbox, ToolError
from rock import errors as rock_errors
from rock.contracts import Chunk, ToolResult, Trajectory, link_tool_results, versions_of
from roll.errors import RollError
from roll.rollout.attempt import (
    INFO_PATH,
    TESTS_DIR,
    AgentOptions,
    EnvironmentFailed,
    SandboxTracker,
    _chunks,
    _graded,
    _Logs,
    _upload,
    decide_status,
    iflow_sandbox,
    last_line,
    one_line,
    task_image,
)
from roll.rollout.stream import ChunkStream
from roll.tasks.spec import TaskSpec

HISTORY_PATH = "/tmp/iflow-history.json"
READ_ONLY_TOOLS = {"read_file", "list_directory", "glob", "search_file_content"}
# A command that leaves a process running: a snapshot would not hold it, so such prefixes are replayed.
BACKGROUND = re.compile(r"\b(setsid|nohup|disown|daemon)\b|&\s*$|&\s*(#.*)?\n", re.M)


class BadReference(RollError):
    """A reference that cannot be resampled at all (no chunk k, another task, no recorded prompt)."""


class ReplayMismatch(Exception):
    """A replayed call came out otherwise than recorded: the reference no longer reproduces its state."""


@dataclass
class PrefixCall:
    """One tool call of the reference's prefix, with what it did when recorded (None: not recorded)."""

    chunk: int
    tool: str
    args: dict | None  # None: the arguments did not parse (the agent ran nothing)
    recorded: ToolResult | None

    def describe(self) -> str:
        shown = json.dumps(self.args, ensure_ascii=False) if self.args is not None else "(unparsed)"
        return f"chunk {self.chunk} {self.tool} {one_line(shown, 120)}"


# ---- the reference ------------------------------------------------------------------------------


def check_reference(task: TaskSpec, reference: Trajectory, start_chunk: int) -> None:
    """Raises BadReference unless `reference` is a trajectory of `task` with a recorded chunk `start_chunk`."""
    if reference.task_id != task.id:
        raise BadReference(f"reference {reference.trajectory_id} is of task {reference.task_id}, not {task.id}")
    if not 0 <= start_chunk < len(reference.chunks):
        raise BadReference(
            f"start chunk {start_chunk} is not a chunk of reference {reference.trajectory_id} "
            f"({len(reference.chunks)} chunks)"
        )
    messages = reference.chunks[start_chunk].messages
    if not messages or messages[0].get("role") != "system" or len(messages) < 2:
        raise BadReference(
            f"chunk {start_chunk} of reference {reference.trajectory_id} has no chat prompt (system, task, ...) "
            "to start from"
        )
    if messages[1].get("role") != "user" or messages[1].get("content") != task.instruction:
        raise BadReference(f"chunk {start_chunk} of reference {reference.trajectory_id} does not begin with the task")


def reference_history(reference: Trajectory, start_chunk: int) -> list[dict]:
    """The conversation before chunk `start_chunk`: its recorded prompt after the system prompt."""
    return list(reference.chunks[start_chunk].messages or [])[1:]


def chunk_calls(chunk: Chunk) -> list[tuple[str, dict | None, str | None]]:
    """(tool, arguments or None where they did not parse, call id) of each call iflow made of this reply: its
    native tool calls, else the `<tool_call>` blocks of its text (iflow acts on those in either mode)."""
    if chunk.response.tool_calls:
        return [(c.function.get("name", ""), _arguments(c.function.get("arguments")), c.id)
                for c in chunk.response.tool_calls]  # fmt: skip
    calls: list[tuple[str, dict | None, str | None]] = []
    for block in TEXT_CALL.findall(chunk.response.text or ""):
        try:
            data = json.loads(block)
            name, raw = str(data["name"]), data.get("arguments", {})
        except (json.JSONDecodeError, KeyError, TypeError):
            calls.append(("?", None, None))
            continue
        calls.append((name, raw if isinstance(raw, dict) else _arguments(raw), None))
    return calls


def prefix_calls(reference: Trajectory, start_chunk: int) -> list[PrefixCall]:
    """The tool calls of chunks 0..start_chunk-1 in order, each with its recorded result (by call id, else
    the chunk's results in order)."""
    out = []
    for chunk in reference.chunks[:start_chunk]:
        results = [r for r in reference.tool_results if r.chunk_index == chunk.index]
        by_id = {r.call_id: r for r in results if r.call_id}
        for i, (tool, args, call_id) in enumerate(chunk_calls(chunk)):
            recorded = by_id.get(call_id) if call_id in by_id else results[i] if i < len(results) else None
            out.append(PrefixCall(chunk.index, tool, args, recorded))
    return out


def _arguments(raw) -> dict | None:
    """A call's arguments as iflow reads them: JSON text of an object (empty: none), else None."""
    if isinstance(raw, dict):
        return raw
    try:
        args = json.loads(raw or "{}")
    except (json.JSONDecodeError, TypeError):
        return None
    return args if isinstance(args, dict) else None


def starts_processes(task: TaskSpec, calls: list[PrefixCall]) -> bool:
    """Whether the setup or a replayed command may leave a process running (which no snapshot holds)."""
    commands = [task.environment.setup] + [str((c.args or {}).get("command", "")) for c in calls]
    return any(BACKGROUND.search(c.strip()) for c in commands)


# ---- replay -------------------------------------------------------------------------------------


class SandboxExecutor(Executor):
    """iflow's executor over a rock SDK sandbox, so iflow's own tools replay the prefix."""

    def __init__(self, sandbox, cwd: str):
        self.sandbox, self.cwd = sandbox, cwd

    def run(self, command: str, timeout: float, cwd: str | None = None) -> ExecResult:
        r = self.sandbox.exec(["bash", "-c", command], timeout=timeout, cwd=self.resolve(cwd or "."))
        return ExecResult(r.exit_code, r.stdout, r.stderr, r.duration_s, r.timed_out)

    def read_bytes(self, path: str) -> bytes:
        try:
            return self.sandbox.read_file(self.resolve(path))
        except rock_errors.NotFound as e:
            raise FileNotFoundError(f"no such file: {self.resolve(path)}") from e

    def write_bytes(self, path: str, data: bytes) -> None:
        target = self.resolve(path)
        self.sandbox.exec(["mkdir", "-p", target.rsplit("/", 1)[0] or "/"], timeout=30)
        self.sandbox.write_file(target, data, mode=0o644)

    def fs_call(self, op: str, args: dict) -> dict:  # only the read-only tools use it, and replay skips them
        return {"error": f"{op} is not replayed"}


def replay(sandbox, task: TaskSpec, calls: list[PrefixCall], shell_timeout: float = 120.0) -> list[str]:
    """Run the prefix's state-changing calls in `sandbox`; returns one log line per call. Raises
    ReplayMismatch when a call's outcome (ok or not) differs from the recorded one."""
    toolbox = Toolbox(SandboxExecutor(sandbox, task.workdir), "yolo", shell_timeout=shell_timeout)
    lines = []
    for call in calls:
        if call.tool in READ_ONLY_TOOLS or call.args is None:
            lines.append(f"skip {call.describe()}")
            continue
        try:
            result = toolbox.call(call.tool, call.args)
        except ToolError as e:  # unknown tool or bad arguments: iflow ran nothing either
            lines.append(f"skip {call.describe()}: {e}")
            continue
        lines.append(f"ran  {call.describe()}: ok={result.ok} exit={result.exit_code}")
        if call.recorded is not None and call.recorded.ok != result.ok:
            was = "succeeded" if call.recorded.ok else f"failed ({call.recorded.error or call.recorded.exit_code})"
            now = f"failed ({result.error or first_line(result.output)})" if not result.ok else "succeeded"
            raise ReplayMismatch(f"replayed {call.describe()} {now} where the reference's {was}")
    return lines


def first_line(text: str) -> str:
    return one_line(next((ln for ln in text.splitlines() if ln.strip()), ""), 200)


# ---- snapshots ----------------------------------------------------------------------------------


class SnapshotCache:
    """Snapshots of replayed states, by (task, reference, start chunk); one replay per key at a time, so a
    group of attempts at one start replays once and forks the rest. `delete_all` removes the images."""

    def __init__(self):
        self._snaps: dict[tuple[str, str, int], str] = {}
        self._locks: dict[tuple[str, str, int], threading.Lock] = {}
        self._guard = threading.Lock()

    def lock(self, key: tuple[str, str, int]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def get(self, key: tuple[str, str, int]) -> str | None:
        with self._guard:
            return self._snaps.get(key)

    def put(self, key: tuple[str, str, int], snapshot_id: str) -> None:
        with self._guard:
            self._snaps[key] = snapshot_id

    def drop(self, key: tuple[str, str, int]) -> None:
        with self._guard:
            self._snaps.pop(key, None)

    def __len__(self) -> int:
        with self._guard:
            return len(self._snaps)

    def delete_all(self, client) -> None:
        with self._guard:
            snaps, self._snaps = list(self._snaps.values()), {}
        for snap in snaps:
            try:
                client.delete_snapshot(snap)
            except rock_errors.RockError:
                pass  # already gone


# ---- the attempt --------------------------------------------------------------------------------


def resampled_attempt(
    client,
    task: TaskSpec,
    reference: Trajectory,
    start_chunk: int,
    options: AgentOptions | None = None,
    *,
    model_url: str | None = None,
    snapshots: SnapshotCache | None = None,
    attempt_dir: str | Path | None = None,
    trajectory_id: str | None = None,
    group: int | None = None,
    tracker: SandboxTracker | None = None,
    iflow_source: Path | None = None,
    stream: ChunkStream | None = None,
) -> Trajectory:
    """One iflow attempt at `task` from the state before chunk `start_chunk` of `reference` (module docstring).

    Raises BadReference for a reference that has no such chunk or is of another task; a reference whose
    prefix no longer reproduces is the returned attempt's `environment_error`. Infrastructure failures raise.
    `stream`: the run's chunk buffer (roll/rollout/stream.py), which the sampled chunks are taken from (the
    sandbox records them under the attempt's trajectory id, as `run_attempt`'s); None: pulled after the attempt.
    """
    check_reference(task, reference, start_chunk)
    options = options or AgentOptions()
    tracker = tracker or SandboxTracker()
    logs = _Logs(Path(attempt_dir) if attempt_dir is not None else None)
    start = time.monotonic()
    base = {
        "trajectory_id": trajectory_id or f"traj-{uuid.uuid4().hex[:12]}",
        "task_id": task.id,
        "family": task.family,
        "split": task.split,
        "agent": "iflow",
        "group": group,
        "start_chunk": start_chunk,
        "reference_id": reference.trajectory_id,
    }

    def failed(status: str, error: str, sandbox_id: str | None = None) -> Trajectory:
        traj = Trajectory(**base, reward=0.0, status=status, error=one_line(error), sandbox_id=sandbox_id,
                          seconds=time.monotonic() - start)  # fmt: skip
        logs.write("trajectory.json", traj.model_dump_json(indent=1))
        return traj

    try:
        calls = prefix_calls(reference, start_chunk)
        try:
            image = task_image(client, task)
        except EnvironmentFailed as e:
            logs.write("environment.log", str(e) + "\n")
            return failed("environment_error", str(e))
        create = iflow_sandbox(image, base["trajectory_id"], options, model_url, iflow_source)
        use_snapshots = snapshots is not None and not starts_processes(task, calls)
        key = (task.id, reference.trajectory_id, start_chunk)
        try:
            if use_snapshots:
                assert snapshots is not None
                with snapshots.lock(key):
                    sandbox = _restored(client, task, calls, create, tracker, logs, snapshots, key)
            else:
                sandbox = _restored(client, task, calls, create, tracker, logs, None, key)
        except (rock_errors.ImageNotFound, rock_errors.ValidationFailed) as e:
            logs.write("environment.log", f"{type(e).__name__}: {e}\n")
            return failed("environment_error", f"sandbox of image {image}: {e}")
        except _Failed as e:
            return failed("environment_error", str(e.reason), e.sandbox_id)
        try:
            return _run_from(sandbox, task, reference, start_chunk, calls, options, logs, base, start, stream)
        finally:
            tracker.delete(sandbox)
    finally:
        if stream is not None:
            stream.discard(base["trajectory_id"])  # taken already, or nothing to take


class _Failed(Exception):
    def __init__(self, reason: str, sandbox_id: str):
        super().__init__(reason)
        self.reason, self.sandbox_id = reason, sandbox_id


def _restored(client, task, calls, create, tracker, logs, snapshots: SnapshotCache | None, key):
    """A sandbox holding the state before the start chunk: forked from the cached snapshot, else set up
    and replayed (then snapshotted into the cache). Raises _Failed when setup or the replay fails."""
    snap = snapshots.get(key) if snapshots is not None else None
    if snap is not None:
        try:
            sandbox = client.create_sandbox(**create, snapshot=snap)
            tracker.add(sandbox)
            logs.write("restore.log", f"forked snapshot {snap} of the state before chunk {key[2]}\n")
            return sandbox
        except rock_errors.SnapshotNotFound:
            snapshots.drop(key)  # removed behind our back: replay again
    sandbox = client.create_sandbox(**create)
    tracker.add(sandbox)
    try:
        _setup(sandbox, task, logs)
        lines = replay(sandbox, task, calls)
        logs.write("restore.log", "".join(line + "\n" for line in lines) or "nothing to replay\n")
        if snapshots is not None:
            try:
                snapshots.put(key, sandbox.snapshot().snapshot_id)
            except rock_errors.RockError as e:  # no snapshot: the next attempt replays too
                logs.write("snapshot.log", f"{type(e).__name__}: {e}\n")
    except (EnvironmentFailed, ReplayMismatch) as e:
        logs.write("environment.log", f"{e}\n")
        tracker.delete(sandbox)
        reason = str(e) if isinstance(e, EnvironmentFailed) else f"reference does not reproduce: {e}"
        raise _Failed(reason, sandbox.id) from e
    except BaseException:
        tracker.delete(sandbox)
        raise
    return sandbox


def _setup(sandbox, task: TaskSpec, logs: _Logs) -> None:
    wd = task.workdir
    setup = sandbox.exec(["bash", "-c", 'mkdir -p -- "$0" && cd -- "$0" && exec bash -c "$1"', wd, task.environment.setup],
                         timeout=max(60.0, task.test_timeout_s))  # fmt: skip
    if setup.exit_code != 0:
        logs.exec("setup", setup)
        why = "timed out" if setup.timed_out else f"exited {setup.exit_code}"
        raise EnvironmentFailed(f"setup {why}" + (f": {last_line(setup)}" if last_line(setup) else ""))


def _run_from(sandbox, task: TaskSpec, reference: Trajectory, k: int, calls: list[PrefixCall],
              options: AgentOptions, logs: _Logs, base: dict, start: float,
              stream: ChunkStream | None = None) -> Trajectory:  # fmt: skip
    wd = task.workdir
    sandbox.write_file(HISTORY_PATH, json.dumps(reference_history(reference, k), ensure_ascii=False), mode=0o644)
    agent_timeout = options.timeout_s or task.agent_timeout_s
    argv = ["python3", "-m", "iflow_cli", "-p", task.instruction, "--yolo", "--max-turns", str(options.max_turns),
            "--history", HISTORY_PATH, "-o", INFO_PATH, "--timeout", str(max(1.0, agent_timeout - 5))]  # fmt: skip
    run = sandbox.exec(argv, timeout=agent_timeout, cwd=wd)
    try:
        info = json.loads(sandbox.read_file(INFO_PATH))
        logs.write("execution-info.json", json.dumps(info, indent=1))
    except (rock_errors.NotFound, ValueError):
        info = None
    logs.write("agent.stdout", run.stdout or "")
    logs.write("agent.stderr", run.stderr or "")

    _upload(sandbox, TESTS_DIR, task.tests)
    test = sandbox.exec(["bash", "-c", 'mkdir -p /logs/verifier && cd -- "$0" && exec bash "$1"', wd,
                         f"{TESTS_DIR}/{task.test_entry}"], timeout=task.test_timeout_s, env={"TEST_DIR": TESTS_DIR})  # fmt: skip
    logs.exec("tests", test)
    status, error = decide_status("iflow", run, info, test, _graded(sandbox, task, test))

    sampled = stream.take(sandbox, base["trajectory_id"]) if stream else _chunks(sandbox.trajectory())
    new_results = link_tool_results(sampled, (info or {}).get("tool_results") or [])
    traj = Trajectory(
        **base,
        reward=1.0 if status == "resolved" else 0.0,
        status=status,
        error=error,
        sandbox_id=sandbox.id,
        chunks=joined_chunks(reference, k, sampled, base["trajectory_id"]),
        tool_results=joined_results(reference, k, sampled, new_results),
        policy_versions=versions_of(sampled),  # the policy's own: the given chunks are not its samples
        seconds=time.monotonic() - start,
    )
    logs.write("trajectory.json", traj.model_dump_json(indent=1))
    return traj


def joined_results(reference: Trajectory, k: int, sampled: list[Chunk], new: list[ToolResult]) -> list[ToolResult]:
    """The tool results of the given chunks then of the sampled ones, their chunk_index the joined numbering
    (see joined_chunks); a result tied to no chunk of its part keeps chunk_index None."""
    given = {c.index: i for i, c in enumerate(reference.chunks[:k])}
    mine = {c.index: k + i for i, c in enumerate(sampled)}
    out = [r.model_copy(update={"chunk_index": given[r.chunk_index]}) for r in reference.tool_results
           if r.chunk_index in given]  # fmt: skip
    return out + [r.model_copy(update={"chunk_index": mine.get(r.chunk_index)}) for r in new]


def joined_chunks(reference: Trajectory, k: int, sampled: list[Chunk], trajectory_id: str) -> list[Chunk]:
    """The reference's chunks 0..k-1 (given) then the sampled ones, numbered 0.. in order, all under the new
    trajectory id (each keeps the sandbox it was recorded in)."""
    given = [
        c.model_copy(update={"trajectory_id": trajectory_id, "index": i}) for i, c in enumerate(reference.chunks[:k])
    ]
    return given + [
        c.model_copy(update={"trajectory_id": trajectory_id, "index": k + i}) for i, c in enumerate(sampled)
    ]


__all__ = [
    "BadReference",
    "SnapshotCache",
    "check_reference",
    "prefix_calls",
    "reference_history",
    "replay",
    "resampled_attempt",
]
