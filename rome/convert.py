"""DeepSpeed ZeRO checkpoint -> HF model dir:
`rome convert --checkpoint runs/ckpt --model runs/rome-tiny --out runs/rome-tiny-step100`.

DeepSpeed's zero_to_fp32 merges the partitioned fp32 master weights (ZeRO 1/2/3) into one state
dict; it is loaded into the architecture of the reference model dir (whose tokenizer, chat template
and generation config are copied) and saved in HF safetensors format, which vLLM reads.
"""

from __future__ import annotations

from pathlib import Path

from rome.checkpoint import write_model_dir
from rome.errors import RomeError
from rome.serving.engine import check_model_dir


def _strip_prefix(state: dict) -> dict:
    # Engines wrapped the model (`module.`); HF names start at `model.` / `lm_head.`.
    return {k.removeprefix("module."): v for k, v in state.items()}


def convert_zero_checkpoint(
    checkpoint_dir: str | Path, model_dir: str | Path, out_dir: str | Path, tag: str | None = None
) -> Path:
    """Write the fp32 weights of a ZeRO checkpoint as an HF model dir at out_dir; returns its path."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoModelForCausalLM

    ckpt = Path(checkpoint_dir)
    if not ckpt.is_dir():
        raise RomeError(f"checkpoint dir not found: {ckpt}")
    if tag is None and not (ckpt / "latest").is_file():
        raise RomeError(
            f"{ckpt}: no `latest` file; pass --tag (one of: "
            f"{', '.join(sorted(p.name for p in ckpt.iterdir() if p.is_dir())) or 'none'})"
        )
    ref = check_model_dir(model_dir)
    try:
        state = _strip_prefix(get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=tag))
    except (FileNotFoundError, ValueError) as e:
        raise RomeError(f"{ckpt}: not a readable ZeRO checkpoint ({e})") from e
    config = AutoConfig.from_pretrained(ref)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = _mismatch(model, state)
    if missing or unexpected:
        raise RomeError(
            f"{ckpt}: weights do not match {ref}/config.json (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.load_state_dict(state, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    return write_model_dir(out_dir, model, copy_from=ref)


def _mismatch(model, state: dict) -> tuple[list[str], list[str]]:
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected or state[k].shape != expected[k]]
    if model.config.tie_word_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    return missing, unexpected
