"""Reading synthesised trajectories: `.venv/bin/pytest tests/roll/test_sft_data.py -k load`.

`roll data synth` writes `all.jsonl` (every attempt, failures included: CPT's data) and `verified.jsonl`
(attempts its tests resolved: SFT's), one `rock.contracts.Trajectory` per line. Nothing here loads a model, so a
dataset that cannot be used is refused before any model is.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from rock.contracts import Trajectory
from roll.errors import RollError

ALL, VERIFIED = "all.jsonl", "verified.jsonl"


class DataError(RollError):
    """A dataset that cannot be used: missing, unreadable, or without what the stage needs."""


class NoVerifiedDataError(DataError):
    """SFT asked for verified trajectories and the dataset holds none."""


def dataset_file(path: str | Path, verified: bool) -> Path:
    """The JSON-lines file: `path` itself, or in a synth out dir its verified.jsonl (or all.jsonl)."""
    path = Path(path)
    if path.is_dir():
        name = VERIFIED if verified and (path / VERIFIED).is_file() else ALL
        if not (path / name).is_file():
            raise DataError(f"{path}: no {ALL} or {VERIFIED} in this folder; make one: roll data synth --out {path}")
        return path / name
    if not path.is_file():
        raise DataError(f"{path}: no such dataset file; make one: roll data synth --out DIR")
    return path


def load_trajectories(path: str | Path, *, verified: bool = False) -> list[Trajectory]:
    """The trajectories of a dataset file or synth out dir; `verified=True` keeps the resolved ones and
    refuses a dataset with none (NoVerifiedDataError, one line)."""
    file = dataset_file(path, verified)
    out = []
    for n, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Trajectory.model_validate_json(line))
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"]) or "line"
            raise DataError(f"{file}:{n}: not a Trajectory ({where}: {err['msg']})") from None
    if verified:
        out = [t for t in out if t.resolved]
        if not out:
            raise NoVerifiedDataError(
                f"{file}: no verified trajectories (none resolved by its tests); SFT needs some: "
                "synthesise more (roll data synth --attempts N) or check the teacher"
            )
    return out
