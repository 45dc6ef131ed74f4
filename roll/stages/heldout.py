"""Held-out pass rates of a model dir, as `roll eval --agent iflow --model DIR` measures them
(`.venv/bin/pytest tests/roll/test_stages.py`; the learning run itself: `make train-sft`).

The model is served by `rome serve` (vLLM by default), the real iflow agent runs each held-out instance in a
fresh ROCK sandbox, and the task's tests grade it (`roll.eval.runner.evaluate`). The result is the summary's
`before`/`after` entry: pass rate overall, on the training families and on the held-out-only families apart,
every family listed, and the failed tool calls (a call that did not parse or ran and failed).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from roll.errors import RollError
from roll.stages.config import EvalConfig


def eval_families(cfg: EvalConfig, trained: list[str]) -> tuple[list[str], list[str]]:
    """(training families evaluated, held-out-only families evaluated)."""
    from roll.tasks.suite import FAMILIES

    train = list(cfg.families or trained)
    extra = [f for f, info in FAMILIES.items() if info.heldout_only] if cfg.heldout_only else []
    return train, [f for f in extra if f not in train]


def weights_digest(model_dir: Path) -> str:
    """A hash of the weights files: an evaluation of the same weights with the same settings is reused."""
    h = hashlib.sha256()
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _rate(rows: list[dict]) -> float | None:
    n = sum(r["attempts"] for r in rows)
    return round(sum(r["resolved"] for r in rows) / n, 4) if n else None


def summarize(report, trained: list[str], heldout_only: list[str]) -> dict:
    """Pass rates by family (and split), the training families and the held-out-only ones apart, tool calls."""
    rows = [r for r in report.table() if r["family"] != "all"]
    calls = [c for t in report.trajectories for c in t.tool_results]
    failed = [c for c in calls if not (c.parsed and c.ok)]
    return {
        "pass_rate": round(report.pass_rate, 4),
        "trained_families": _rate([r for r in rows if r["family"] in trained]),
        "heldout_only_families": _rate([r for r in rows if r["family"] in heldout_only]),
        "by_family": {
            r["family"]: {
                "split": r["split"],
                "attempts": r["attempts"],
                "resolved": r["resolved"],
                "pass_rate": r["pass_rate"],
                "statuses": r["statuses"],
            }
            for r in rows
        },  # fmt: skip
        "attempts": len(report.records),
        "tool_calls": len(calls),
        "failed_tool_calls": len(failed),
        "unparsed_tool_calls": sum(not c.parsed for c in calls),
        "infrastructure_failures": len(report.failed),
        "seconds": round(report.seconds, 1),
    }


def heldout_pass_rates(model_dir: Path, cfg: EvalConfig, trained: list[str], out_dir: Path, log=print) -> dict:
    """Serve `model_dir`, run iflow on the held-out instances, and return the summary entry (cached in
    out_dir/heldout.json under the weights' digest and the settings, so a re-run does not measure twice)."""
    from roll.eval.cli import first_per_group
    from roll.tasks.suite import generate_suite

    # Absolute: rock bind-mounts each sandbox's model socket from under out_dir, and docker refuses relative paths.
    model_dir, out_dir = Path(model_dir).resolve(), Path(out_dir).resolve()
    train, extra = eval_families(cfg, trained)
    settings = cfg.model_dump(mode="json", exclude={"enabled", "before"})  # what changes the measurement
    key = {"weights": weights_digest(model_dir), "eval": settings, "families": train + extra}
    cache = out_dir / "heldout.json"
    # The stage before measured these weights already (CPT's "after" is SFT's "before"): not measured twice.
    for earlier in (cache, model_dir.parent / "eval" / "after" / "heldout.json"):
        saved = json.loads(earlier.read_text()) if earlier.is_file() else {}
        if saved.get("key") == key:
            return saved["result"] | {"from": str(earlier)}
    tasks = generate_suite(families=train + extra, split=cfg.split, heldout_per_family=cfg.per_family)
    tasks = first_per_group(tasks, cfg.per_family)
    from roll.eval.model_server import RomeServer
    from roll.eval.runner import evaluate

    start = time.monotonic()
    log(f"held-out eval of {model_dir}: {len(tasks)} tasks, iflow on rome serve ({cfg.engine}) ...")
    with RomeServer(model_dir, out_dir / "rome-serve.log", engine=cfg.engine) as url:
        report = evaluate(tasks, agent="iflow", out_dir=out_dir / f"attempts-{key['weights']}", model_url=url,
                          concurrency=cfg.concurrency, model_name=f"{model_dir.resolve()}@{key['weights']}",
                          agent_options={"max_turns": cfg.max_turns, "max_tokens": cfg.max_tokens,
                                         "temperature": cfg.temperature}, progress=False,
                          log=log)  # fmt: skip
    if report.failed:
        # Not a measurement: attempts the infrastructure could not run. Not cached; a re-run retries them.
        raise RollError(f"held-out eval of {model_dir}: {len(report.failed)} attempts could not run, e.g. "
                        f"{report.failed[0]} (logs in {out_dir}); run the same command again to retry them")  # fmt: skip
    result = summarize(report, train, extra) | {"wall_s": round(time.monotonic() - start, 1)}
    cache.write_text(json.dumps({"key": key, "result": result}, indent=1) + "\n")
    log(f"held-out pass rate {result['pass_rate']:.1%} (training families {result['trained_families']}, "
        f"held-out-only {result['heldout_only_families']}) in {result['wall_s']:.0f}s")  # fmt: skip
    return result
