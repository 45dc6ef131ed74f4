"""`roll train CONFIG --resume` after `kill -9` or Ctrl-C (`.venv/bin/pytest tests/roll/test_resume.py`).

After every `train.checkpoint_every`-th completed iteration (async mode: update; default every one) and after the
last, the driver writes one checkpoint,
`<run_dir>/checkpoints/it-N/`: the trainer's DeepSpeed model and optimizer state and RNG (`trainer/`), and the
driver's state (`driver.json`: iteration, policy version, skipped steps, the task-drawing RNG, how many bytes of
metrics.jsonl and trajectories.jsonl the completed iterations wrote; `resampler.pkl`: the
rollback schedules and references). It is written under a temporary name and renamed into place, then `latest`
(one line naming it) is replaced: a kill at any moment leaves `latest` naming a complete checkpoint.

Resuming truncates the two jsonl files to the checkpoint's lengths and moves the attempts of the iterations that
did not complete to attempts/discarded/ (their trajectories are never trained on; the run says how many), loads
the trainer state and hands its weights to the inference worker under the checkpoint's policy version. The
config must be the run's own (run_config.json) but for the keys in `MAY_CHANGE`; anything else is refused, naming
what differs. Without --resume, a run dir that holds completed iterations is refused, not overwritten.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from roll.config import RunConfig
from roll.errors import RollError

CONFIG_FILE = "run_config.json"
RECORDS = ("metrics.jsonl", "trajectories.jsonl")
# Keys that may differ on --resume: how long the run is and how patient it is, not what it learns.
MAY_CHANGE = (
    "train.iterations",
    "train.checkpoint_every",
    "inference.startup_timeout_s",
    "inference.kvcache_gb",
    "agent.timeout_s",
    "sandbox.create_timeout_s",
    "cluster.ray_address",
    "curriculum.heldout_after",
)


class ResumeError(RollError):
    """A run dir that cannot be resumed (nothing to resume, another config), or one that must not be overwritten."""


@dataclass
class DriverState:
    """What the driver needs, beside the trainer's state, to carry on after iteration (async: update) `iteration`."""

    iteration: int
    mode: str
    policy_version: int
    skipped_in_row: list[int]
    rng: list  # random.Random.getstate(), tuples as lists
    record_bytes: dict[str, int]  # RECORDS -> bytes the completed iterations wrote
    written_at: float = field(default_factory=time.time)

    def random(self) -> random.Random:
        version, internal, gauss = self.rng
        rng = random.Random()
        rng.setstate((version, tuple(internal), gauss))
        return rng


@dataclass
class ResumePoint:
    """A complete checkpoint to carry on from."""

    path: Path
    state: DriverState
    resampler: dict | None

    @property
    def trainer_dir(self) -> Path:
        return self.path / "trainer"


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of the run, or None."""
    from roll.trainer.checkpoint import CheckpointError
    from roll.trainer.checkpoint import latest as latest_in

    try:
        return latest_in(checkpoints_dir(run_dir), marker="driver.json")
    except CheckpointError as e:
        raise ResumeError(str(e)) from e


def load_point(path: Path) -> ResumePoint:
    state = DriverState(**json.loads((path / "driver.json").read_text()))
    resampler = None
    if (path / "resampler.pkl").is_file():
        with open(path / "resampler.pkl", "rb") as f:
            resampler = pickle.load(f)
    return ResumePoint(path, state, resampler)


def record_bytes(run_dir: Path) -> dict[str, int]:
    return {name: (run_dir / name).stat().st_size if (run_dir / name).is_file() else 0 for name in RECORDS}


def write_checkpoint(run_dir: Path, state: DriverState, save_trainer, resampler: dict | None = None) -> Path:
    """Checkpoint it-<state.iteration> atomically; `save_trainer(dir)` writes the trainer's state into `dir`.
    Older checkpoints are removed once `latest` names the new one."""
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"it-{state.iteration}"
    tmp, final = root / f".tmp-{name}", root / name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_trainer(tmp / "trainer")
    if resampler is not None:
        with open(tmp / "resampler.pkl", "wb") as f:
            pickle.dump(resampler, f)
    (tmp / "driver.json").write_text(json.dumps(asdict(state), indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    pointer = root / ".latest.tmp"
    pointer.write_text(name + "\n")
    os.replace(pointer, root / "latest")
    for old in root.glob("it-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _flat(data, prefix: str = "") -> dict:
    if not isinstance(data, dict):
        return {prefix: data}
    out = {}
    for k, v in data.items():
        out |= _flat(v, f"{prefix}.{k}" if prefix else k)
    return out


def config_differences(saved: dict, cfg: RunConfig) -> list[str]:
    """`key: saved -> now` for every setting that differs and may not change on resume."""
    old, new = _flat(saved), _flat(cfg.model_dump(mode="json"))
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys
            if old.get(k) != new.get(k) and not k.startswith(MAY_CHANGE)]  # fmt: skip


def completed_iterations(run_dir: Path) -> int:
    """How many iterations (async: updates) the run dir records as completed."""
    path = latest(run_dir)
    if path is not None:
        return json.loads((path / "driver.json").read_text())["iteration"]
    metrics = run_dir / "metrics.jsonl"  # a run from before checkpoints: its rows
    return sum(1 for line in metrics.read_text().splitlines() if line.strip()) if metrics.is_file() else 0


def check(cfg: RunConfig, resume: bool) -> ResumePoint | None:
    """Before anything starts: the point to resume from (with --resume), or None for a fresh run; raises
    ResumeError when the run dir cannot be resumed or must not be overwritten."""
    run_dir = cfg.run_dir.resolve()
    if not resume:
        done = completed_iterations(run_dir)
        if done:
            raise ResumeError(f"{cfg.run_dir} already holds {done} completed iteration(s); add --resume to continue "
                              f"that run, or choose another name= to start a new one")  # fmt: skip
        return None
    path = latest(run_dir)
    if path is None:
        raise ResumeError(f"--resume: nothing to resume in {cfg.run_dir} (no completed iteration, no "
                          f"{checkpoints_dir(cfg.run_dir)}/latest); run without --resume to start it")  # fmt: skip
    saved = run_dir / CONFIG_FILE
    if not saved.is_file():
        raise ResumeError(f"--resume: {saved} is missing, so the run's config cannot be compared")
    diffs = config_differences(json.loads(saved.read_text()), cfg)
    if diffs:
        raise ResumeError(f"--resume: the config differs from the run's ({saved}) in {'; '.join(diffs)}; only "
                          f"{', '.join(MAY_CHANGE)} may change on resume")  # fmt: skip
    point = load_point(path)
    if point.state.iteration >= cfg.train.iterations and cfg.train.mode != "async":
        raise ResumeError(f"--resume: {cfg.run_dir} completed all {point.state.iteration} iterations; raise "
                          f"train.iterations to train on")  # fmt: skip
    return point


def check_model(point: ResumePoint, model_dir: Path) -> None:
    """Refuse a checkpoint trained for another architecture than the model the run starts from, naming the keys."""
    from roll.trainer.checkpoint import SHAPE_KEYS

    saved = json.loads((point.trainer_dir / "trainer.json").read_text())["model_shape"]
    config = json.loads((Path(model_dir) / "config.json").read_text())
    diffs = [f"{k}: {saved[k]!r} -> {config.get(k)!r}" for k in SHAPE_KEYS if k in saved and saved[k] != config.get(k)]
    if diffs:
        raise ResumeError(f"--resume: checkpoint {point.path} is for another model shape than {model_dir}: "
                          f"{'; '.join(diffs)}")  # fmt: skip


def start_fresh(cfg: RunConfig) -> None:
    """A new run's records start empty (what a failed first iteration left is dropped); its config is kept."""
    run_dir = cfg.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in RECORDS:
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(checkpoints_dir(run_dir), ignore_errors=True)
    tmp = run_dir / f".{CONFIG_FILE}.tmp"
    tmp.write_text(json.dumps(cfg.model_dump(mode="json"), indent=1) + "\n")
    os.replace(tmp, run_dir / CONFIG_FILE)


def roll_back(run_dir: Path, point: ResumePoint) -> tuple[int, int]:
    """Drop what the unfinished iteration wrote: the records past the checkpoint, the attempts no completed
    iteration trained (moved to attempts/discarded/), policies newer than the checkpoint's. Returns the number of
    trajectories discarded (recorded, never trained) and of attempts cut short by the stop."""
    cut: set[str] = set()
    for name, size in point.state.record_bytes.items():
        path = run_dir / name
        if not path.is_file():
            continue
        with open(path, "r+b") as f:
            f.seek(size)
            tail = f.read()
            f.truncate(size)
        if name == "trajectories.jsonl":
            cut |= {row["trajectory_id"] for row in _rows(tail)}
    trained = _trained_ids(run_dir)
    recorded, unfinished = set(cut - trained), 0
    stamp = time.strftime("%Y%m%d-%H%M%S")
    attempts = run_dir / "attempts"
    for d in sorted(attempts.glob("*/*")):
        if not d.is_dir() or d.parent.name == "discarded" or d.name in trained:
            continue
        if (d / "trajectory.json").is_file():
            recorded.add(d.name)
        else:
            unfinished += 1
        target = attempts / "discarded" / stamp / d.parent.name / d.name
        target.parent.mkdir(parents=True, exist_ok=True)
        d.rename(target)
    for policy in (run_dir / "policy").glob("v*"):
        if policy.name[1:].isdigit() and int(policy.name[1:]) > point.state.policy_version:
            shutil.rmtree(policy, ignore_errors=True)
    for tmp in checkpoints_dir(run_dir).glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    return len(recorded), unfinished


def _rows(data: bytes) -> list[dict]:
    rows = []
    for line in data.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass  # a line cut short by the kill
    return rows


def _trained_ids(run_dir: Path) -> set[str]:
    path = run_dir / "trajectories.jsonl"
    return {row["trajectory_id"] for row in _rows(path.read_bytes())} if path.is_file() else set()


def trained_groups(run_dir: Path) -> set[int]:
    """Async mode: the groups whose trajectories a completed update trained (after `roll_back`)."""
    path = run_dir / "trajectories.jsonl"
    return {row["group"] for row in _rows(path.read_bytes())} if path.is_file() else set()


def history(run_dir: Path) -> list[dict]:
    """The completed iterations' metrics rows (after `roll_back`)."""
    path = run_dir / "metrics.jsonl"
    return _rows(path.read_bytes()) if path.is_file() else []
