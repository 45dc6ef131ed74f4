"""DeepSpeed trainer over a Hugging Face causal LM (`pytest tests/roll/test_roll_trainer.py`).

One `step` per iteration on the recorded chunks, then `save` writes HF safetensors that the inference
worker loads. On CPU: DS_ACCELERATOR=cpu, gloo, ZeRO-2 with torch's Adam, fp32. Run inside a Ray actor
by the driver; a single process (RANK 0 of WORLD_SIZE 1) per trainer for now.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import torch

from roll.algo import collate_chunks, policy_gradient_loss, token_logprobs

# Files of the source HF dir that are not weights; copied next to each saved policy so that every
# policy dir is a complete model (tokenizer and chat template included) that vLLM and transformers load.
_NON_WEIGHT_SUFFIXES = (".json", ".jinja", ".txt", ".model")
_WEIGHT_FILES = ("config.json", "model.safetensors.index.json")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process_dist_env() -> None:
    # DeepSpeed reads the torch.distributed env contract (RANK, WORLD_SIZE, ...) even for one process.
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)


class Trainer:
    """Holds the DeepSpeed engine of one policy. Methods run synchronously; under Ray, call `.remote`."""

    def __init__(
        self,
        model_dir: str,
        lr: float = 1e-4,
        zero_stage: int = 2,
        grad_clip: float = 1.0,
        clip_low: float = 0.2,
        clip_high: float = 0.28,
        seed: int = 0,
    ):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # must precede the deepspeed import
        _single_process_dist_env()
        import deepspeed
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        self.model_dir = Path(model_dir)
        self.clip_low, self.clip_high = clip_low, clip_high
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.pad_id = model.config.pad_token_id or 0
        if not torch.distributed.is_initialized():
            # A file rendezvous, not MASTER_PORT: a port picked free can be taken by another process before
            # the TCP store binds it (seen on a busy machine). DeepSpeed adopts the existing process group.
            store = Path(tempfile.mkdtemp(prefix="roll-dist-")) / "store"
            torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        deepspeed.init_distributed(dist_backend="gloo")
        ds_config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "optimizer": {"type": "Adam", "params": {"lr": lr, "weight_decay": 0.0, "torch_adam": True}},
            "zero_optimization": {"stage": zero_stage},
            "gradient_clipping": grad_clip,
            "fp16": {"enabled": False},
            "bf16": {"enabled": False},
        }
        self.engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
        self.engine.train()

    def step(self, chunks: list, advantages: list[float]) -> dict[str, float]:
        """One optimizer update on all chunks (`rock.contracts.Chunk`) at once (`advantages[i]` belongs to chunk i)."""
        batch = collate_chunks(chunks, advantages, pad_id=self.pad_id)
        logits = self.engine(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # [B, T, V]
        new_logp = token_logprobs(logits[:, :-1], batch.targets)  # [B, T-1]
        loss, stats = policy_gradient_loss(
            new_logp, batch.old_logprobs, batch.response_mask, batch.advantages, self.clip_low, self.clip_high
        )
        self.engine.backward(loss)
        self.engine.step()
        grad_norm = self.engine.get_global_grad_norm()
        mask = batch.response_mask.bool()
        return {
            "loss": loss.item(),
            "grad_norm": float(grad_norm) if grad_norm is not None else 0.0,
            # how far the trainer's logprobs are from the sampler's on the same tokens
            "logprob_abs_diff": (new_logp.detach() - batch.old_logprobs)[mask].abs().mean().item(),
            **stats,
        }

    def save(self, out_dir: str) -> str:
        """Write the policy as an HF dir, atomically: a reader sees either nothing or the complete dir."""
        out = Path(out_dir)
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # ZeRO-2 partitions optimizer state and gradients only; every rank holds full fp32 parameters.
        self.engine.module.save_pretrained(tmp, safe_serialization=True)
        for f in self.model_dir.iterdir():
            if f.is_file() and f.suffix in _NON_WEIGHT_SUFFIXES and f.name not in _WEIGHT_FILES:
                shutil.copy2(f, tmp / f.name)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        return str(out)
