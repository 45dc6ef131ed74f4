"""The CPT and SFT stages: `roll cpt configs/cpt/tiny-cpu.yaml`, `roll sft configs/sft/tiny-cpu.yaml`
(`.venv/bin/pytest tests/roll/test_stages.py`; the learning run: `make train-sft`).

Each stage: the dataset (synthesised once, reused while its inputs are unchanged), the model it starts from
(CPT: rome init when missing; SFT: CPT's output), held-out pass rates before, training on the DeepSpeed
trainer, the HF model in runs/<name>/model, held-out pass rates after, then runs/<name>/summary.json (pass
rates by family and split before and after, the settings, wall times) and runs/<name>/curves.png (loss and
held-out pass rate). A dataset that cannot be trained on is refused in one line before any model is loaded.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import time
from pathlib import Path

from roll.errors import ConfigError
from roll.stages.config import CptConfig, SftConfig
from roll.stages.data import ensure_dataset, inputs, trained_families


def _say(msg: str) -> None:
    print(f"roll: {msg}", flush=True)


def _trajectories(cfg, *, verified: bool):
    """The stage's trajectories (a given dataset checked before any model exists), and the dataset path."""
    from roll.sft.data import DataError, NoVerifiedDataError, load_trajectories

    if cfg.data.path is not None:
        trajs = load_trajectories(cfg.data.path)
    else:
        path, _ = ensure_dataset(cfg.data, cfg.model.dir, _say)
        trajs = load_trajectories(path)
    where = cfg.data.path or path
    if not trajs:
        raise DataError(f"{where}: no trajectories; make some: roll data synth --out DIR")
    if verified and not any(t.resolved for t in trajs):
        raise NoVerifiedDataError(
            f"{where}: no verified trajectories (none of {len(trajs)} resolved by its tests); SFT needs some: "
            "synthesise more (roll data synth --attempts N) or check the teacher"
        )
    return trajs, where


def _evaluate(cfg, model_dir: Path, label: str, log_dir: Path) -> dict | None:
    if not cfg.eval.enabled:
        return None
    from roll.stages.heldout import heldout_pass_rates

    return heldout_pass_rates(model_dir, cfg.eval, trained_families(cfg.data.families), log_dir / label, _say)


def _data_summary(trajs, where, report) -> dict:
    return {"path": str(where), "trajectories": len(trajs), "verified": sum(t.resolved for t in trajs),
            "families": sorted({t.family for t in trajs}), "report": report.model_dump()}  # fmt: skip


def _write_summary(cfg, run_dir: Path, summary: dict, rows: list[dict], steps: int) -> dict:
    from roll.trainer.plots import plot_curves

    points = [(s, r["pass_rate"]) for s, r in ((0, summary["before"]), (steps, summary["after"])) if r]
    summary["plot"] = str(plot_curves(rows, run_dir / "curves.png", pass_rates=points or None,
                                      title=f"{cfg.name}: loss and held-out pass@1"))  # fmt: skip
    summary["settings"] = cfg.model_dump(mode="json")
    tmp = run_dir / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    tmp.replace(run_dir / "summary.json")
    return summary


def _fit(model_dir: Path, trainer_cfg, out_dir: Path, sequences, steps: int, resume: bool, sampler=None):
    """Train and export: (fit result, metrics rows, the exported model dir)."""
    from roll.trainer import SupervisedTrainer
    from roll.trainer.plots import read_metrics

    trainer = SupervisedTrainer(model_dir, trainer_cfg, out_dir, resume=resume)
    result = trainer.fit(sequences, steps=steps, sampler=sampler)
    exported = trainer.save_hf(out_dir / "model")
    del trainer
    gc.collect()  # the engine's optimizer state goes before the model server starts
    return result, read_metrics(out_dir / "metrics.jsonl"), exported


def _settle(run_dir: Path, exported: Path) -> Path:
    """The stage's model at run_dir/model (a copy that replaces an older one)."""
    final = run_dir / "model"
    tmp = run_dir / f".model.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(exported, tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def run_cpt(cfg: CptConfig, resume: bool = False) -> dict:
    """CPT over every synthesised trajectory; returns the summary written to runs/<name>/summary.json."""
    start = time.monotonic()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.data.path is not None:  # a given dataset is checked before anything is created or loaded
        _trajectories(cfg, verified=False)
    if not (cfg.model.dir / "config.json").is_file():
        from rome.init import init_model

        _say(f"creating {cfg.model.dir} with rome init --config {cfg.model.init_config}")
        init_model(cfg.model.dir, cfg.model.init_config, seed=cfg.model.init_seed)
    trajs, where = _trajectories(cfg, verified=False)
    setup_s = time.monotonic() - start
    from roll.sft.cpt import cpt_dataset

    data = cpt_dataset(trajs, cfg.model.dir, cfg.cpt)
    _say(f"CPT on {len(data.sequences)} sequences from {len(trajs)} trajectories ({data.report.sequences})")
    before = _evaluate(cfg, cfg.model.dir, "before", run_dir / "eval") if cfg.eval.before else None
    t = time.monotonic()
    result, rows, exported = _fit(cfg.model.dir, cfg.trainer, run_dir / "train", data.sequences, cfg.steps, resume)
    train_s = time.monotonic() - t
    model = _settle(run_dir, exported)
    after = _evaluate(cfg, model, "after", run_dir / "eval")
    from roll.stages.probe import copy_probe

    probe = copy_probe(model, sorted(set(data.families)))
    _say(f"copy probe (held-out task alone -> first call, greedy): {probe['overall']} % {probe['by_family']}")
    for miss in probe["misses"][:8]:
        _say(f"  missed {miss['instruction']!r}: wrote {miss['wrote'][-40:]!r}, wanted {miss['wanted']!r}")
    if len(probe["misses"]) > 8:
        _say(f"  ... {len(probe['misses']) - 8} more misses in summary.json (copy_probe.misses)")
    summary = {"stage": "cpt", "name": cfg.name, "run_dir": str(run_dir), "model_in": str(cfg.model.dir), "model": str(model),
               "data": _data_summary(trajs, where, data.report) | {"inputs": inputs(cfg.data)}, "train": result,
               "before": before, "after": after, "copy_probe": probe,
               "wall_s": {"total": round(time.monotonic() - start, 1), "setup": round(setup_s, 1),
                          "train": round(train_s, 1)}}  # fmt: skip
    return _write_summary(cfg, run_dir, summary, rows, cfg.steps)


def _phase2_sampler(cfg: SftConfig, data, before: dict | None):
    from roll.sft import AdaptiveSampler

    rates = None
    if cfg.phase2.pass_rates and before:
        rates = {f: r["pass_rate"] for f, r in before["by_family"].items()}
    return AdaptiveSampler(data.sequences, data.families, pass_rates=rates, seed=cfg.trainer.seed)


def run_sft(cfg: SftConfig, resume: bool = False) -> dict:
    """Phase 1 then phase 2 from CPT's model; returns the summary written to runs/<name>/summary.json."""
    start = time.monotonic()
    run_dir = cfg.run_dir
    if cfg.data.path is not None:
        _trajectories(cfg, verified=True)  # before any model is looked at
    if not (cfg.model.dir / "config.json").is_file():
        raise ConfigError(f"model.dir {cfg.model.dir}: no model there; make it with roll cpt configs/cpt/tiny-cpu.yaml")
    run_dir.mkdir(parents=True, exist_ok=True)
    trajs, where = _trajectories(cfg, verified=True)
    setup_s = time.monotonic() - start
    from roll.sft.sft import sft_dataset

    data = sft_dataset(trajs, cfg.model.dir, cfg.sft, phase=1)
    _say(f"SFT on {len(data.sequences)} sequences from {data.report.kept}/{len(trajs)} trajectories "
         f"(dropped {data.report.dropped}, masked chunks {data.report.masked_chunks})")  # fmt: skip
    before = _evaluate(cfg, cfg.model.dir, "before", run_dir / "eval") if cfg.eval.before else None
    t = time.monotonic()
    result, rows, model = _fit(cfg.model.dir, cfg.trainer, run_dir / "phase1", data.sequences, cfg.steps, resume)
    phases = {"phase1": result}
    if cfg.phase2.steps:
        trainer2 = cfg.trainer.model_copy(update={"lr": cfg.phase2.lr or cfg.trainer.lr, "warmup_steps": 0})
        sampler = _phase2_sampler(cfg, data, before)
        result2, rows2, model = _fit(model, trainer2, run_dir / "phase2", data.sequences, cfg.phase2.steps, resume,
                                     sampler)  # fmt: skip
        phases["phase2"] = result2
        rows = rows + [r | {"step": r["step"] + cfg.steps} for r in rows2]
    train_s = time.monotonic() - t
    final = _settle(run_dir, model)
    after = _evaluate(cfg, final, "after", run_dir / "eval")
    summary = {"stage": "sft", "name": cfg.name, "run_dir": str(run_dir), "model_in": str(cfg.model.dir), "model": str(final),
               "data": _data_summary(trajs, where, data.report), "train": phases, "before": before, "after": after,
               "wall_s": {"total": round(time.monotonic() - start, 1), "setup": round(setup_s, 1),
                          "train": round(train_s, 1)}}  # fmt: skip
    return _write_summary(cfg, run_dir, summary, rows, cfg.steps + cfg.phase2.steps)
