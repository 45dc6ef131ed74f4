"""DeepSpeed trainer over a Hugging Face causal LM (`pytest tests/roll/test_roll_trainer.py`).

One `step` per iteration on the recorded chunks, then `save` writes HF safetensors that the inference
worker loads. On CPU: DS_ACCELERATOR=cpu, gloo, ZeRO-2 with torch's Adam, fp32. Run inside a Ray actor
by the driver; a single process (RANK 0 of WORLD_SIZE 1) per trainer for now.
"""

from __future__ import annotations

from pathlib import Path

import torch

from roll.algo import collate_chunks, policy_gradient_loss, token_logprobs
from roll.trainer.trainer import export_hf, init_distributed


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
        init_distributed("cpu")  # the supervised trainer's: DS_ACCELERATOR before the import, gloo, one process
        import deepspeed
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        self.model_dir = Path(model_dir)
        self.clip_low, self.clip_high = clip_low, clip_high
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.pad_id = model.config.pad_token_id or 0
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
        # ZeRO-2 partitions optimizer state and gradients only; every rank holds full fp32 parameters.
        return str(export_hf(self.engine.module, self.model_dir, out_dir))
