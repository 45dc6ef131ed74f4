"""Create a fresh ROME checkpoint: `rome init --config tiny --out runs/rome-tiny [--corpus FILES]`.

Trains the tokenizer on the corpus (by default the built-in agentic corpus), random-initialises
the weights from a seed, and saves a Hugging Face model dir (safetensors, config.json, tokenizer with
chat template, generation_config.json). The dir is written under a temporary name and renamed into
place, so a crash never leaves a half-written model that later loads as garbage.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rome.configs import load_config
from rome.errors import RomeError


def _read_corpus(files: list[str | Path]) -> list[str]:
    texts = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise RomeError(f"corpus file not found: {path}")
        texts.extend(line for line in path.read_text(errors="replace").splitlines() if line.strip())
    if not texts:
        raise RomeError(f"corpus is empty: {', '.join(map(str, files))}")
    return texts


def init_model(out_dir: str | Path, config: str = "tiny", corpus: list[str | Path] | None = None, seed: int = 0) -> Path:
    """Write a random-init ROME model dir at out_dir (replacing one that is there) and return its path."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from rome.tokenizer.corpus import agentic_corpus
    from rome.tokenizer.train import train_tokenizer

    cfg = load_config(config)
    texts = _read_corpus(list(corpus)) if corpus else agentic_corpus(seed)
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    ids = {
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "bos_token_id": None,
    }
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg.to_hf(**ids), dtype=torch.float32)
    generation = GenerationConfig(
        eos_token_id=[ids["eos_token_id"], ids["pad_token_id"]], pad_token_id=ids["pad_token_id"], do_sample=True
    )
    out = Path(out_dir).resolve()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    generation.save_pretrained(tmp)
    _swap_into_place(tmp, out)
    return out


def _swap_into_place(tmp: Path, out: Path) -> None:
    # rename() cannot replace a non-empty dir: move the old one aside first, drop it after.
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
