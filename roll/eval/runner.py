"""Evaluate an agent on tasks: `roll eval --tasks ale --split heldout --agent oracle` runs `evaluate`
(`.venv/bin/pytest tests/roll/test_eval.py tests/roll/test_eval_docker.py`).

Each (task, attempt) runs `roll.rollout.run_attempt` in its own sandbox, `concurrency` at a time. Every
finished attempt is appended to `<out_dir>/attempts.jsonl` at once, so a run stopped by Ctrl-C or a kill
resumes where it was: the same call skips the attempts recorded there. On Ctrl-C every sandbox the run
made is deleted (the tracker here, and the on-exit sweep of the rock server when the run started it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from rock.contracts import Trajectory
from roll.eval.results import AttemptRecord, EvalReport
from roll.rollout.attempt import AGENTS, AgentOptions, SandboxTracker, iflow_source_dir, run_attempt
from roll.tasks.spec import TaskSpec

ATTEMPTS_LOG = "attempts.jsonl"
RUN_FILE = "run.json"


def read_done(out_dir: Path) -> dict[tuple[str, int], AttemptRecord]:
    """The attempts recorded by earlier runs in `out_dir` (a torn last line from a kill is ignored)."""
    done: dict[tuple[str, int], AttemptRecord] = {}
    path = out_dir / ATTEMPTS_LOG
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = AttemptRecord.model_validate_json(line)
            except ValueError:
                continue
            done[(rec.task_id, rec.attempt)] = rec
    return done


def _check_run(out_dir: Path, agent: str, model: str | None) -> None:
    """One out dir holds one agent's (and model's) run: resuming another's would mix their results."""
    path = out_dir / RUN_FILE
    mine = {"agent": agent, "model": model}
    if path.is_file():
        theirs = json.loads(path.read_text())
        if {k: theirs.get(k) for k in mine} != mine:
            raise ValueError(f"{out_dir} holds a run of agent {theirs.get('agent')} with model {theirs.get('model')}; "
                             "choose another --out-dir")  # fmt: skip
    else:
        path.write_text(json.dumps(mine) + "\n")


class _Progress:
    """A rich progress bar, else tqdm, else one line per attempt; `None` when disabled."""

    def __init__(self, total: int, enabled: bool, log: Callable[[str], None]):
        self.bar = self.tqdm = None
        self.log, self.resolved, self.done = log, 0, 0
        if not enabled:
            return
        try:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]eval[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn())  # fmt: skip
            self.task = self.bar.add_task("", total=total)
            self.bar.start()
            self.log = self.bar.console.print
        except ImportError:
            try:
                from tqdm import tqdm

                self.tqdm = tqdm(total=total, desc="eval", unit="attempt")
                self.log = self.tqdm.write
            except ImportError:
                pass

    def advance(self, line: str, resolved: bool) -> None:
        self.done += 1
        self.resolved += resolved
        desc = f"resolved {self.resolved}/{self.done}"
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=desc)
        elif self.tqdm is not None:
            self.tqdm.update(1)
            self.tqdm.set_postfix_str(desc)
        self.log(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif self.tqdm is not None:
            self.tqdm.close()


def evaluate(
    tasks: list[TaskSpec],
    *,
    agent: str,
    out_dir: Path,
    model_url: str | None = None,
    concurrency: int = 4,
    attempts: int = 1,
    client=None,
    progress: bool = True,
    agent_options: dict | None = None,
    model_name: str | None = None,
    warm_pool: int | None = None,
    log: Callable[[str], None] = print,
) -> EvalReport:
    """Run `attempts` attempts of `agent` at every task, `concurrency` at once; results in `out_dir`.
    Without `client` a `rock serve` of its own is started (state in `<out_dir>/rock`) and stopped after.
    `model_name` identifies the model in run.json (default `model_url`); `warm_pool` containers are kept
    started by that server (default: `concurrency` for the oracle and no-op agents, which can use them)."""
    if agent not in AGENTS:
        raise ValueError(f"unknown agent {agent!r}; choose one of {', '.join(AGENTS)}")
    if concurrency < 1 or attempts < 1:
        raise ValueError("concurrency and attempts must be at least 1")
    if agent == "iflow" and not model_url and client is None:
        raise ValueError("the iflow agent needs a model: pass model_url (--model-url URL or --model DIR)")
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"task id {dup} appears more than once")
    # Absolute: the rock server started below keeps its sandboxes' model sockets under it, and docker
    # refuses a relative bind-mount source (every iflow attempt failed with the default runs/eval/...).
    out_dir = Path(out_dir).resolve()
    options = AgentOptions(**(agent_options or {}))
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_run(out_dir, agent, (model_name or model_url) if agent == "iflow" else None)
    start = time.monotonic()
    done = read_done(out_dir)
    wanted = [(t, k) for t in tasks for k in range(attempts)]
    todo = [(t, k) for t, k in wanted if (t.id, k) not in done]
    skipped = len(wanted) - len(todo)
    if skipped:
        log(
            f"resuming: {skipped} attempts already recorded in {out_dir / ATTEMPTS_LOG} are skipped; {len(todo)} to run"
        )
    failed = _run_all(todo, agent, out_dir, model_url, concurrency, client, progress, options, warm_pool, log, done)
    records = [done[(t.id, k)] for t, k in wanted if (t.id, k) in done]
    report = EvalReport(agent=agent, records=records, trajectories=[r.trajectory() for r in records], skipped=skipped,
                        failed=failed, seconds=time.monotonic() - start)  # fmt: skip
    (out_dir / "results.json").write_text(json.dumps(report.to_json(), indent=1) + "\n")
    return report


def _run_all(
    todo, agent, out_dir, model_url, concurrency, client, progress, options, warm_pool, log, done
) -> list[str]:
    """Run the attempts; records land in `done` and attempts.jsonl as each finishes. Returns the failures."""
    if not todo:
        return []
    rock = None
    if client is None:
        from rock.launch import RockProcess

        pool = warm_pool if warm_pool is not None else (0 if agent == "iflow" else concurrency)
        mounts = [str(iflow_source_dir())] if agent == "iflow" else []
        rock = RockProcess(model_upstream=model_url, allow_mounts=mounts, state_dir=out_dir / "rock", on_exit="remove",
                           warm_pool=pool).start()  # fmt: skip
        client = rock.client()
    tracker = SandboxTracker()
    bar = _Progress(len(todo), progress, log)
    failed: list[str] = []
    executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eval")
    try:
        futures: dict[Future, tuple[TaskSpec, int, Path]] = {}
        for task, k in todo:
            log_dir = out_dir / "logs" / task.id / f"attempt-{k}"
            fut = executor.submit(run_attempt, client, task, agent, model_url=model_url, attempt_dir=log_dir,
                                  options=options, tracker=tracker)  # fmt: skip
            futures[fut] = (task, k, log_dir)
        with open(out_dir / ATTEMPTS_LOG, "a") as journal:
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    task, k, log_dir = futures[fut]
                    try:
                        traj: Trajectory = fut.result()
                    except Exception as e:  # the infrastructure, not the task: not recorded, so a re-run retries it
                        failed.append(f"{task.id}#{k}: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
                        bar.advance(f"[{task.id}#{k}] failed: {failed[-1]}", False)
                        continue
                    rec = AttemptRecord.of(traj, k, log_dir)
                    journal.write(rec.model_dump_json() + "\n")
                    journal.flush()
                    done[(task.id, k)] = rec
                    why = f" ({rec.error})" if rec.error else ""
                    bar.advance(f"{task.id}#{k}: {rec.status} in {rec.seconds:.1f}s{why}", rec.status == "resolved")
    except BaseException:
        # Ctrl-C or a kill: do not wait for the running attempts; delete their sandboxes now.
        executor.shutdown(wait=False, cancel_futures=True)
        tracker.close()
        left = tracker.delete_all()
        if left:
            log(f"could not delete sandboxes {left}; the rock server removes them on exit")
        raise
    finally:
        bar.close()
        executor.shutdown(wait=False, cancel_futures=True)
        if rock is not None:
            client.close()
            rock.stop()
    return failed
