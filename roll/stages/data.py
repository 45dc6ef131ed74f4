"""The stages' trajectories: `dataset(cfg.data, tokenizer_dir)` (`.venv/bin/pytest tests/roll/test_stages.py`).

A given `path` is used as it is. Otherwise the dataset is `roll data synth` over the suite's train split,
kept in `<dir>/<hash of its inputs>/` with those inputs in `inputs.json`: CPT and SFT with the same data
settings share one dataset, and a changed setting (families, seeds, teacher, mistake rate) makes a new one.
An interrupted synthesis resumes where it stopped (the harness's attempts.jsonl).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from roll.stages.config import DataConfig

INPUTS = "inputs.json"


def trained_families(families: list[str] | None) -> list[str]:
    """The families asked for, or every family the suite trains on (not the held-out-only ones)."""
    from roll.tasks.suite import FAMILIES

    return list(families) if families else [f for f, info in FAMILIES.items() if not info.heldout_only]


def inputs(cfg: DataConfig) -> dict:
    """What the dataset is a function of (the suite's instances are a pure function of family and seed)."""
    return {"tasks": "ale", "split": "train", "families": trained_families(cfg.families),
            "seeds": [0, cfg.train_per_family], "teacher": cfg.teacher, "attempts": cfg.attempts,
            "mistake_rate": cfg.mistake_rate, "seed": cfg.seed}  # fmt: skip


def dataset_dir(cfg: DataConfig) -> Path:
    if cfg.path is not None:
        return cfg.path
    digest = hashlib.sha256(json.dumps(inputs(cfg), sort_keys=True).encode()).hexdigest()[:12]
    return cfg.dir / digest


def ready(cfg: DataConfig) -> bool:
    """The dataset is there and was made from these inputs."""
    if cfg.path is not None:
        return True
    d = dataset_dir(cfg)
    try:
        return json.loads((d / INPUTS).read_text()) == inputs(cfg) and (d / "all.jsonl").is_file()
    except (OSError, ValueError):
        return False


def ensure_dataset(cfg: DataConfig, tokenizer_dir: Path, log=print) -> tuple[Path, float]:
    """The dataset's dir (or file), synthesised first when needed; returns it and the seconds synthesis took."""
    out = dataset_dir(cfg)
    if ready(cfg):
        return out, 0.0
    out = out.resolve()  # rock bind-mounts sandbox sockets from under it: docker refuses relative paths
    from roll.data.synth import synthesize
    from roll.tasks.suite import generate_suite

    spec = inputs(cfg)
    tasks = generate_suite(families=spec["families"], split="train", train_per_family=cfg.train_per_family)
    log(f"synthesising {len(tasks)} tasks x {cfg.attempts} attempts with the {cfg.teacher} teacher into {out} ...")
    start = time.monotonic()
    report = synthesize(tasks, teacher=cfg.teacher, out_dir=out, attempts=cfg.attempts, mistake_rate=cfg.mistake_rate,
                        concurrency=cfg.concurrency, tokenizer=tokenizer_dir, seed=cfg.seed, progress=True,
                        log=log)  # fmt: skip
    seconds = time.monotonic() - start
    log(f"{report.verified}/{report.trajectories} trajectories verified in {seconds:.0f}s")
    if report.failed:
        # Infrastructure failures are not recorded, so the dataset is short of them: not marked ready, and the
        # next run resumes the synthesis to fill them in.
        log(f"{len(report.failed)} attempts could not run; the next run retries them")
    else:
        (out / INPUTS).write_text(json.dumps(spec, indent=1) + "\n")
    return out, seconds
