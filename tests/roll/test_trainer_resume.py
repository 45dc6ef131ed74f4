"""Resume after `kill -9` (`.venv/bin/pytest tests/roll/test_trainer_resume.py`): a run killed mid-way and
started again with resume=True sees the same samples in the same steps, ends at the same step with the same
losses and weights as a run never interrupted, and its metrics.jsonl has every step exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from trainer_helpers import make_sequences, small_model_dir

from roll.trainer import CheckpointError, SupervisedTrainer, TrainerConfig
from roll.trainer.plots import read_metrics

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
STEPS = 8

SCRIPT = """
import sys, time
sys.path.insert(0, {helpers!r})
from trainer_helpers import make_sequences
from roll.trainer import SupervisedTrainer, TrainerConfig
cfg = TrainerConfig(batch_sequences=3, micro_batch_tokens=200, lr=3e-3, warmup_steps=2, min_lr=3e-4,
                    checkpoint_every=2, keep_checkpoints=2, min_shared_prefix=16, progress=False)
trainer = SupervisedTrainer(sys.argv[1], cfg, sys.argv[2], resume=True)
delay = float(sys.argv[3])
# two phases, as a curriculum runs them: the kill lands in the second; re-run, the first returns at once
first = trainer.fit(make_sequences(10, seed=1), steps=3, on_step=lambda row: time.sleep(delay))
second = trainer.fit(make_sequences(10), steps={steps} - 3, on_step=lambda row: time.sleep(delay))
assert second["global_step"] == {steps}, second
trainer.save_hf(sys.argv[2] + "/final")
"""


def rows(out: Path) -> list[dict]:
    return read_metrics(out / "metrics.jsonl")  # complete lines only: the run may be writing the next one


def start(script: Path, model: Path, out: Path, delay: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(script), str(model), str(out), str(delay)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-3000:]


def test_resume_after_kill_9_continues_exactly_where_the_checkpoint_stood(tmp_path):
    from safetensors.torch import load_file

    model = small_model_dir(tmp_path / "models")
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(helpers=str(Path(__file__).parent), steps=STEPS))
    killed, straight = tmp_path / "killed", tmp_path / "straight"

    proc = start(script, model, killed, delay=1.0)
    deadline = time.monotonic() + 300
    while len(rows(killed)) < 5:  # step 5 logged: the checkpoint of step 4 is complete, steps 5.. are not
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and len(rows(killed)) < STEPS
    assert (killed / "checkpoints/latest").read_text().strip() == "step-4"

    finish(start(script, model, killed, delay=0.0))  # the same command again: resumes from step-4
    finish(start(script, model, straight, delay=0.0))

    resumed, reference = rows(killed), rows(straight)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))  # step 5 of the killed run was dropped
    assert [r["samples"] for r in resumed] == [r["samples"] for r in reference]
    assert [r["lr"] for r in resumed] == [r["lr"] for r in reference]
    for a, b in zip(resumed, reference, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a["step"]
    seen = [i for r in resumed[3:] for i in r["samples"]]  # phase 2: 15 draws, epoch 1 (10) then 5 of epoch 2
    assert sorted(seen[:10]) == list(range(10)) and len(set(seen[10:])) == 5
    assert resumed[3]["lr"] == resumed[0]["lr"] < resumed[4]["lr"]  # each phase warms up over its own steps
    a, b = load_file(killed / "final/model.safetensors"), load_file(straight / "final/model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["latest", "step-6", "step-8"]

    cfg = TrainerConfig(batch_sequences=3, micro_batch_tokens=200, progress=False, min_shared_prefix=16)
    trainer = SupervisedTrainer(model, cfg, killed, resume=True)
    assert trainer.step == STEPS
    assert trainer.fit(make_sequences(10, seed=1), steps=3)["already_done"]
    with pytest.raises(CheckpointError, match="5-step run from step 3; this fit asks for 10 steps from step 3"):
        trainer.fit(make_sequences(10), steps=10)  # the second phase, asked for another length
