"""Create a fresh ROME checkpoint: `rome init --config tiny --out runs/rome-tiny [--corpus FILES]`.

Trains the tokenizer on the corpus (by default the built-in agentic corpus), random-initialises
the weights from a seed, and saves a Hugging Face model dir (safetensors, config.json, tokenizer with
chat template, generation_config.json), atomically (rome.checkpoint.write_model_dir).
"""

from __future__ import annotations

from pathlib import Path

from rome.checkpoint import write_model_dir
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


def init_model(
    out_dir: str | Path, config: str = "tiny", corpus: list[str | Path] | None = None, seed: int = 0
) -> Path:
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
    return write_model_dir(out_dir, model, tokenizer=tokenizer, generation_config=generation)


def given_or_tiny(model_dir: str | Path | None, work_dir: str | Path) -> Path:
    """`model_dir` resolved, or a fresh ROME-tiny created under `work_dir` when none is given (the benches)."""
    if model_dir:
        return Path(model_dir).resolve()
    return Path(init_model(Path(work_dir) / "rome-tiny")).resolve()
