"""Training checkpoints under out_dir/checkpoints/step-N: DeepSpeed's model + optimizer files, and
trainer_state.json (step, run length, data position, model shape) + rng.pt beside them.

A checkpoint is written under a temporary name and renamed into place, then `latest` (a one-line file naming
it) is replaced last: a `kill -9` at any moment leaves `latest` pointing at a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

from roll.trainer.errors import CheckpointError

SHAPE_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "moe_intermediate_size",
    "num_experts",
    "num_experts_per_tok",
)


def model_shape(model) -> dict:
    """The architecture numbers that decide whether saved weights fit `model`, plus its parameter count."""
    cfg = model.config.to_dict()
    shape = {k: cfg[k] for k in SHAPE_KEYS if k in cfg}
    shape["parameters"] = sum(p.numel() for p in model.parameters())
    return shape


def _shape_text(shape: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in shape.items())


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


def latest(root: Path, marker: str = "trainer_state.json") -> Path | None:
    """The newest complete checkpoint dir under `root` (the one its `latest` file names, holding `marker`), or None."""
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not (path / marker).is_file():
        raise CheckpointError(f"{pointer} names {path.name}, which has no {marker}; the checkpoint is damaged")
    return path


def save(engine, root: Path, step: int, state: dict, keep: int) -> Path:
    """Write checkpoint step-`step` atomically and point `latest` at it; keep the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    name, tmp_name = f"step-{step}", f".tmp-step-{step}"
    shutil.rmtree(root / tmp_name, ignore_errors=True)
    engine.save_checkpoint(str(root), tag=tmp_name, save_latest=False)
    tmp = root / tmp_name
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    pointer_tmp = root / ".latest.tmp"
    pointer_tmp.write_text(name + "\n")
    os.replace(pointer_tmp, root / "latest")
    steps = sorted(int(p.name[5:]) for p in root.glob("step-*") if p.name[5:].isdigit())
    for old in steps[:-keep]:
        shutil.rmtree(root / f"step-{old}", ignore_errors=True)
    return final


def load(engine, path: Path, shape: dict) -> dict:
    """Restore model, optimizer and RNG from checkpoint `path`; refuse one made for another model shape."""
    state = json.loads((path / "trainer_state.json").read_text())
    if state["model_shape"] != shape:
        raise CheckpointError(
            f"checkpoint {path} is for model shape [{_shape_text(state['model_shape'])}]"
            f" but the model has shape [{_shape_text(shape)}]"
        )
    loaded, _ = engine.load_checkpoint(
        str(path.parent), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if loaded is None:
        raise CheckpointError(f"checkpoint {path}: DeepSpeed found no model files in it")
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return state


def clean_partial(root: Path) -> None:
    """Drop checkpoints a killed run left half-written."""
    for p in root.glob(".tmp-step-*"):
        shutil.rmtree(p, ignore_errors=True)
