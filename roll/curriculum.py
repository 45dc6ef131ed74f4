"""`roll train CONFIG` as the whole curriculum (`make train-rl`; `.venv/bin/pytest tests/roll/test_curriculum.py`).

synthesis → CPT → SFT → RL. CPT and SFT run by their own configs (`curriculum.cpt`, `curriculum.sft`, e.g.
configs/cpt/tiny-cpu.yaml; `roll.stages.run`), under the RL config's runs_dir, SFT starting from CPT's model
and RL from SFT's. A stage is reused when its config and the weights it starts from are those of its last
completed run (kept in runs/<stage>/curriculum.json); the dataset is reused by its own inputs' hash
(roll/stages/data.py), and a held-out measurement of the same weights is never repeated (roll/stages/heldout.py:
SFT's "before" is CPT's "after", RL's "before" SFT's "after"). At the end runs/<name>/summary.json holds the
held-out pass rates before and after each stage by family and split, the RL iterations' metrics and every
stage's settings, and runs/<name>/curves.png plots held-out pass rate through the stages and the RL rollouts'
reward and pass rate by iteration.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from roll.config import RunConfig, load_config

KEY_FILE = "curriculum.json"


def _say(msg: str) -> None:
    print(f"roll: {msg}", flush=True)


def stage_key(cfg) -> dict:
    """What a stage's result is a function of: its config (but how it is evaluated) and the weights it starts from."""
    from roll.stages.heldout import weights_digest

    return {
        "config": cfg.model_dump(mode="json", exclude={"eval"}),
        "weights_in": weights_digest(cfg.model.dir.resolve()),
    }


def _reusable(cfg, key: dict) -> dict | None:
    """The summary of the stage's last run when it was made from exactly these inputs and its model is there.

    A run without our key file (`roll cpt` / `roll sft` by hand) counts when its summary's settings are this config
    and its model is newer than the weights it would start from; the key file is written then."""
    run_dir, model = cfg.run_dir, cfg.run_dir / "model" / "config.json"
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not model.is_file():
        return None
    try:
        return summary if json.loads((run_dir / KEY_FILE).read_text()) == key else None
    except (OSError, ValueError):
        pass
    settings = {k: v for k, v in (summary.get("settings") or {}).items() if k != "eval"}
    newest_in = max((f.stat().st_mtime for f in cfg.model.dir.glob("*.safetensors")), default=0.0)
    if settings != key["config"] or model.stat().st_mtime < newest_in:
        return None
    (run_dir / KEY_FILE).write_text(json.dumps(key, indent=1) + "\n")
    return summary


def run_stage(kind: str, path: Path, overrides: list[str]) -> tuple[dict, object]:
    """Run (or reuse) one supervised stage; returns its summary (with `reused`) and its validated config."""
    from roll.stages.config import CptConfig, SftConfig
    from roll.stages.run import run_cpt, run_sft

    cfg = load_config(path, overrides, CptConfig if kind == "cpt" else SftConfig)
    if kind == "cpt" and not (cfg.model.dir / "config.json").is_file():
        from rome.init import init_model

        _say(f"creating {cfg.model.dir} with rome init --config {cfg.model.init_config}")
        init_model(cfg.model.dir, cfg.model.init_config, seed=cfg.model.init_seed)
    key = stage_key(cfg)
    if (summary := _reusable(cfg, key)) is not None:
        _say(f"{kind}: reusing {cfg.run_dir}/model (same config and starting weights as its last run)")
        return summary | {"reused": True}, cfg
    _say(f"{kind}: {path} -> {cfg.run_dir}/model")
    summary = (run_cpt if kind == "cpt" else run_sft)(cfg)
    (cfg.run_dir / KEY_FILE).write_text(json.dumps(key, indent=1) + "\n")
    return summary | {"reused": False}, cfg


def _stage_entry(summary: dict) -> dict:
    keys = ("stage", "reused", "model_in", "model", "before", "after", "wall_s", "settings")
    return {k: summary.get(k) for k in keys} | {"summary": str(Path(summary["run_dir"]) / "summary.json")}


def run_train(cfg: RunConfig, resume: bool = False) -> int:
    """The curriculum then the RL iterations (`resume`: after the RL run's last checkpoint); returns the exit status."""
    from roll.driver import train

    start = time.monotonic()
    run_dir = cfg.run_dir
    stages: dict[str, dict] = {}
    model_dir, sft_cfg = None, None
    cur = cfg.curriculum
    if cur.enabled and (cur.cpt or cur.sft):
        common = [f"runs_dir={cfg.runs_dir}"]
        if cur.cpt:
            summary, cpt_cfg = run_stage("cpt", cur.cpt, common + cur.cpt_overrides)
            stages["cpt"], model_dir = _stage_entry(summary), Path(summary["model"])
        if cur.sft:
            given = [f"model.dir={model_dir}"] if model_dir is not None else []
            summary, sft_cfg = run_stage("sft", cur.sft, common + given + cur.sft_overrides)
            stages["sft"], model_dir = _stage_entry(summary), Path(summary["model"])
    _say(f"RL ({cfg.train.algorithm}) from {model_dir or cfg.model.dir}")
    t = time.monotonic()
    rc, history = train(cfg, model_dir, resume=resume)
    if rc != 0:
        return rc
    rl = {"stage": "rl", "algorithm": cfg.train.algorithm, "model_in": str(model_dir or cfg.model.dir),
          "model": next((m["policy_dir"] for m in reversed(history) if m.get("policy_dir")), None),
          "before": None, "after": None, "iterations": history,
          "wall_s": {"train": round(time.monotonic() - t, 1)}}  # fmt: skip
    if sft_cfg is not None and cur.heldout_after and sft_cfg.eval.enabled:
        rl["before"], rl["after"] = _heldout(sft_cfg, model_dir, rl["model"], run_dir)
    stages["rl"] = rl
    summary = write_summary(cfg, stages, time.monotonic() - start)
    _say(f"{cfg.name}: held-out pass@1 {_progression(stages)}; {run_dir}/summary.json, {summary['plot']}")
    return 0


def _heldout(sft_cfg, before_dir: Path, after_dir: str | None, run_dir: Path) -> tuple[dict | None, dict | None]:
    """Held-out pass rates of RL's starting model (SFT's "after", not measured twice) and of its last policy."""
    from roll.stages.data import trained_families
    from roll.stages.heldout import heldout_pass_rates

    families = trained_families(sft_cfg.data.families)
    before = heldout_pass_rates(before_dir, sft_cfg.eval, families, run_dir / "eval" / "before", _say)
    after = (
        heldout_pass_rates(Path(after_dir), sft_cfg.eval, families, run_dir / "eval" / "after", _say)
        if after_dir
        else None
    )
    return before, after


def _progression(stages: dict) -> str:
    points = heldout_points(stages)
    return " -> ".join(f"{label} {rate:.1%}" for label, rate in points) if points else "not measured"


def heldout_points(stages: dict) -> list[tuple[str, float]]:
    """(label, held-out pass rate) through the curriculum: the start, then after each stage that measured it."""
    points: list[tuple[str, float]] = []
    for name, entry in stages.items():
        if not points and entry.get("before"):
            points.append(("start", entry["before"]["pass_rate"]))
        if entry.get("after"):
            points.append((f"after {name.upper()}", entry["after"]["pass_rate"]))
    return points


def write_summary(cfg: RunConfig, stages: dict, wall_s: float) -> dict:
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = {"name": cfg.name, "run_dir": str(run_dir), "stages": stages,
               "heldout": [{"point": label, "pass_rate": rate} for label, rate in heldout_points(stages)],
               "settings": cfg.model_dump(mode="json"), "wall_s": round(wall_s, 1)}  # fmt: skip
    summary["plot"] = str(plot_run(stages, run_dir / "curves.png", cfg.name))
    tmp = run_dir / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    tmp.replace(run_dir / "summary.json")
    return summary


def plot_run(stages: dict, out_png: Path, title: str) -> Path:
    """Left: held-out pass@1 through the curriculum. Right: the RL rollouts' reward and pass rate by iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    points = heldout_points(stages)
    if points:
        labels, rates = zip(*points, strict=True)
        left.plot(range(len(points)), [100 * r for r in rates], "o-", color="tab:green")
        left.set_xticks(range(len(points)), labels)
    left.set_ylim(0, 100)
    left.set_ylabel("held-out pass@1 (%)")
    left.set_title("through the curriculum")
    left.grid(alpha=0.3)
    history = stages.get("rl", {}).get("iterations", [])
    if history:
        its = [m["iteration"] for m in history]
        right.plot(its, [m["reward_mean"] for m in history], "o-", color="tab:blue", label="reward (mean)")
        right.plot(
            its, [m["pass_rate"] for m in history], "s--", color="tab:orange", label="pass rate (whole attempts)"
        )
        resampled = [
            (m["iteration"], m["resampled_pass_rate"]) for m in history if m.get("resampled_pass_rate") is not None
        ]
        if resampled:
            right.plot(*zip(*resampled, strict=True), "^:", color="tab:purple", label="pass rate (resampled)")
        right.set_xticks(its)
        right.legend()
    right.set_ylim(-0.05, 1.05)
    right.set_xlabel("RL iteration")
    right.set_title(f"RL ({stages.get('rl', {}).get('algorithm', '?')})")
    right.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png
