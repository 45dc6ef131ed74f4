"""Hugging Face model dirs on disk: write one atomically (used by `rome init` and `rome convert`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Files of a model dir that are not weights: copied as they are when only the weights change.
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


def write_model_dir(
    out_dir: str | Path, model, tokenizer=None, generation_config=None, copy_from: str | Path | None = None
) -> Path:
    """Save model (+ tokenizer, generation config, or the side files of copy_from) to out_dir, atomically.

    The dir is written under a temporary name beside out_dir and renamed into place, so a crash
    never leaves a half-written model that later loads as garbage; an existing out_dir is replaced.
    """
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if generation_config is not None:
        generation_config.save_pretrained(tmp)
    if copy_from is not None:
        for name in SIDE_FILES:
            if (Path(copy_from) / name).is_file():
                shutil.copy2(Path(copy_from) / name, tmp / name)
    _swap_into_place(tmp, out)
    return out


def _swap_into_place(tmp: Path, out: Path) -> None:
    # rename() cannot replace a non-empty dir: move the old one aside first, drop it after.
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
