"""Loss (and held-out pass rate) curves as a PNG: `plot_curves("runs/x/metrics.jsonl", "runs/x/loss.png")`."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl (one JSON object per optimizer step). A last line without its newline is
    left out: a run killed while writing it leaves it half-written (and a resumed run trains that step again)."""
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().split("\n")[:-1] if line.strip()]


def plot_curves(
    metrics: str | Path | Sequence[dict],
    out_png: str | Path,
    *,
    pass_rates: Sequence[tuple[int, float]] | None = None,
    title: str | None = None,
) -> Path:
    """Training loss by step (skipped NaN steps left out), with held-out pass rates (step, rate in 0..1) on a
    second axis when given. `metrics` is a metrics.jsonl path or its rows. Written atomically; returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # no display here, and never a window popping up under a training run
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics) if isinstance(metrics, (str, Path)) else list(metrics)
    points = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None and math.isfinite(r["loss"])]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if points:
        ax.plot(*zip(*points, strict=True), color="tab:blue", linewidth=1.2, label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean NLL per target token)", color="tab:blue")
    ax.grid(alpha=0.3)
    if pass_rates:
        ax2 = ax.twinx()
        steps, rates = zip(*pass_rates, strict=True)
        ax2.plot(steps, [100 * r for r in rates], "o-", color="tab:green", label="held-out pass rate")
        ax2.set_ylabel("held-out pass@1 (%)", color="tab:green")
        ax2.set_ylim(0, 100)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out
