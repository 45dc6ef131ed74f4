"""Where a run's numbers go: metrics.jsonl (the record resume carries on), TensorBoard event files under
out_dir/tb, Weights & Biases when installed and configured by env (WANDB_PROJECT), and a rich progress bar
with loss, tokens/s and ETA on stderr.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from roll.trainer.plots import read_metrics


class MetricsLog:
    """Appends one row per optimizer step to every sink; `start_step` > 0 resumes (later rows are dropped)."""

    def __init__(self, out_dir: Path, start_step: int = 0, config: dict | None = None):
        self.path = out_dir / "metrics.jsonl"
        rows = [r for r in read_metrics(self.path) if r["step"] <= start_step]
        # Rows after the checkpoint were written by the run that died; those steps are trained again.
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(self.path)
        self.rows = rows
        self._file = self.path.open("a")
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=start_step + 1 if start_step else None)
        self.wandb = _wandb_run(out_dir, config)

    def log(self, row: dict) -> None:
        self.rows.append(row)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        step = row["step"]
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tb.add_scalar(f"train/{key}", value, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        self._file.close()
        self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_run(out_dir: Path, config: dict | None):
    # Only when a person asked for it: the package installed and WANDB_PROJECT set (WANDB_MODE=offline works too).
    if not os.environ.get("WANDB_PROJECT"):
        return None
    try:
        import wandb
    except ImportError:
        return None
    return wandb.init(dir=str(out_dir), config=config or {}, name=out_dir.name)


class Progress:
    """A rich progress bar over optimizer steps: loss, tokens/s and ETA. A no-op when disabled."""

    def __init__(self, total: int, done: int, enabled: bool):
        self._bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = self._bar.add_task("train", total=total, completed=done, loss="-", tps="-")
        self._bar.start()

    def update(self, loss: float, tokens_per_s: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, loss=f"{loss:.4f}", tps=f"{tokens_per_s:,.0f}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
