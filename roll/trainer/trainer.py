"""The supervised trainer on DeepSpeed: `SupervisedTrainer(model_dir, cfg, out_dir).fit(sequences, steps=N)`
(`.venv/bin/pytest tests/roll/test_trainer_sft.py tests/roll/test_trainer_resume.py`).

One code path for both devices: DeepSpeed with the CPU accelerator and gloo (float32) or CUDA and NCCL
(bfloat16), ZeRO stage from the config. One optimizer step is one configured batch of `batch_sequences`
sequences however long they are: the batch is cut into micro-batches by a padded-token budget and their
gradients accumulate (DeepSpeed's unmanaged accumulation: `backward` per micro-batch, one `step`). The loss is
the token mean over the whole step (each micro-batch's NLL sum divided by the step's loss-token count), so
the cut does not change the gradient.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from roll.algo.packing import PackedSequence
from roll.trainer import checkpoint
from roll.trainer.config import TrainerConfig, lr_at
from roll.trainer.errors import CheckpointError, DivergedError, NoDataError, TrainerError
from roll.trainer.forward import MicroBatch, load_balancing_loss, microbatch_nll, plan_microbatches
from roll.trainer.metrics import MetricsLog, Progress
from roll.trainer.sampler import EpochSampler

# The non-weight files of a model dir (tokenizer, chat template, generation config) copied into every export,
# so that an exported dir is a complete model that vLLM and transformers load on their own.
_SIDE_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken")
_WEIGHT_FILES = ("config.json", "model.safetensors.index.json")


STALE_LOCK_S = 600.0  # an op build takes ~25 s on 2 cores: a build lock this old was left by a killed process


def extensions_dir() -> Path:
    """Where DeepSpeed's JIT-built ops (the CPU shm comm op) live: under this venv, not in the user's shared
    ~/.cache/torch_extensions, where each venv (its DeepSpeed sources at another path) rebuilt the op on every
    switch; and a build `lock` older than STALE_LOCK_S removed (PyTorch's loader waits forever while one exists, and
    a process killed inside a build leaves it)."""
    root = Path(os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions")))
    for lock in root.glob("*/lock"):
        try:
            if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
                lock.unlink()
        except OSError:
            pass  # gone meanwhile, or not ours to remove: the loader reports what it finds
    return root


def init_distributed(device: str) -> None:
    """One process of a DeepSpeed world (torchrun/deepspeed launchers set RANK etc.; alone: rank 0 of 1)."""
    os.environ.setdefault("DS_ACCELERATOR", device)  # read when deepspeed is first imported
    extensions_dir()
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)
    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if not torch.distributed.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        if os.environ.get("MASTER_ADDR") and int(os.environ["WORLD_SIZE"]) > 1:
            torch.distributed.init_process_group(backend)
        else:
            # A file rendezvous, not a port picked free: another process can take that port before the store
            # binds it (seen on a busy machine). DeepSpeed adopts the existing process group.
            store = Path(tempfile.mkdtemp(prefix="roll-dist-")) / "store"
            torch.distributed.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)


class _LossModule(torch.nn.Module):
    """The model under DeepSpeed: a micro-batch in, per-sequence NLL sums and loss-token counts out."""

    def __init__(self, model, slice_len: int, pad_id: int, balance_top_k: int = 0):
        super().__init__()
        self.model, self.slice_len, self.pad_id, self.balance_top_k = model, slice_len, pad_id, balance_top_k

    def forward(self, mb: MicroBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(per-sequence NLL sums, loss-token counts, the routers' load-balancing loss or None)."""
        routers: list | None = [] if self.balance_top_k else None
        nll, counts = microbatch_nll(self.model, mb, self.slice_len, self.pad_id, routers)
        return nll, counts, load_balancing_loss(routers, self.balance_top_k) if routers is not None else None


def router_aux_coef(cfg: TrainerConfig, model_config) -> float:
    """The load-balancing loss's weight for this model: 0 for a dense model, else the trainer's setting or the
    model config's `router_aux_loss_coef`."""
    if not getattr(model_config, "num_experts", None) or not getattr(model_config, "num_experts_per_tok", None):
        return 0.0
    return (
        cfg.router_aux_coef if cfg.router_aux_coef is not None else getattr(model_config, "router_aux_loss_coef", 0.0)
    )


class SupervisedTrainer:
    """DeepSpeed engine over the HF model in `model_dir`; writes metrics, checkpoints and plots under `out_dir`.

    `resume=True` restores the latest checkpoint under out_dir/checkpoints (model, optimizer, RNG, step, data
    position) when there is one, else starts fresh: the same command serves the first run and the one after a
    crash. Without it, a run replaces whatever checkpoints and metrics an earlier run left in out_dir.
    """

    def __init__(self, model_dir: str | Path, cfg: TrainerConfig | None = None, out_dir: str | Path = "runs/sft", *,
                 resume: bool = False):  # fmt: skip
        self.cfg = cfg or TrainerConfig()
        self.model_dir, self.out_dir = Path(model_dir), Path(out_dir)
        if not (self.model_dir / "config.json").is_file():
            raise TrainerError(f"{self.model_dir}: not an HF model dir (no config.json)")
        if self.cfg.device == "cuda" and not torch.cuda.is_available():
            raise TrainerError("device cuda asked for, but torch sees no CUDA device")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        init_distributed(self.cfg.device)
        import deepspeed
        from deepspeed.utils import logger as ds_logger
        from transformers import AutoModelForCausalLM

        ds_logger.setLevel("WARNING")  # its per-init INFO lines would bury the progress bar
        random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)
        dtype = getattr(torch, self.cfg.torch_dtype)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype)
        self.pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        self.shape = checkpoint.model_shape(model)
        ds_config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            # backward() per micro-batch only accumulates; our step() is the boundary, however many there were
            "managed_gradient_accumulation": False,
            "optimizer": {
                "type": "AdamW",
                "params": {
                    "lr": self.cfg.lr,
                    "betas": list(self.cfg.betas),
                    "eps": 1e-8,
                    "weight_decay": self.cfg.weight_decay,
                    "torch_adam": True,
                },
            },
            "zero_optimization": {"stage": self.cfg.zero_stage},
            "gradient_clipping": self.cfg.grad_clip,
            "bf16": {"enabled": self.cfg.torch_dtype == "bfloat16"},
            "fp16": {"enabled": False},
            "steps_per_print": 1 << 30,
        }
        self.aux_coef = router_aux_coef(self.cfg, model.config)
        module = _LossModule(model, self.cfg.logprob_slice, self.pad_id,
                             model.config.num_experts_per_tok if self.aux_coef else 0)  # fmt: skip
        self.engine, *_ = deepspeed.initialize(model=module, model_parameters=module.parameters(), config=ds_config)
        self.engine.train()
        # ZeRO-3 reduces a parameter's gradient per use of its module, and the shared prefix runs the model twice
        # in one backward (prefix, then suffixes): DeepSpeed 0.19 asserts on the repeated parameter. Off there.
        self._shared_prefix = self.cfg.shared_prefix and self.cfg.zero_stage < 3
        self.step = 0  # optimizer steps taken, over all fits of this trainer (the x axis of its metrics)
        self._fit_start = 0  # where the next fit starts: fits run one after another (curriculum phases)
        self._resumed: dict | None = None
        root = self.out_dir / "checkpoints"
        checkpoint.clean_partial(root)
        if not resume:
            # A fresh run replaces the one that was here (as its metrics.jsonl does): old step-N dirs kept beside
            # the new ones would outnumber them when pruning and leave `latest` naming a deleted checkpoint.
            shutil.rmtree(root, ignore_errors=True)
        elif (ck := checkpoint.latest(root)) is not None:
            self._resumed = checkpoint.load(self.engine, ck, self.shape)
            self.step = self._resumed["step"]

    @property
    def model(self):
        """The HF model being trained (its parameters are partitioned under ZeRO-3)."""
        return self.engine.module.model

    def total_steps(self, n_sequences: int, steps: int | None, epochs: float | None) -> int:
        """The number of optimizer steps a fit will take: `steps`, or `epochs` passes over the data."""
        if (steps is None) == (epochs is None):
            raise TrainerError("give fit exactly one of steps= and epochs=")
        if steps is not None:
            if steps < 1:
                raise TrainerError(f"steps must be >= 1, got {steps}")
            return steps
        if epochs <= 0:
            raise TrainerError(f"epochs must be > 0, got {epochs}")
        return max(1, math.ceil(epochs * n_sequences / self.cfg.batch_sequences))

    def fit(
        self,
        sequences: Sequence[PackedSequence],
        *,
        steps: int | None = None,
        epochs: float | None = None,
        sampler=None,
        on_step: Callable[[dict], None] | None = None,
    ) -> dict:
        """Train `steps` optimizer steps (or `epochs` passes over `sequences`); returns a summary dict.

        `sampler` picks each step's sequences (default: shuffled epochs, see `roll.trainer.sampler`);
        `on_step(row)` gets each step's metrics row (step, loss, lr, tokens (loss-bearing), input_tokens,
        tokens_per_s, samples (the indices trained), skipped).
        Several fits run one after another (phases of a curriculum), each with its own schedule over its own
        steps, the step count carried on. Resumed, a fit that ended before the checkpoint returns at once and
        the fit the checkpoint was taken in continues from it: re-running the same script finishes the job.
        """
        if not sequences:
            raise NoDataError("no sequences to train on")
        if not any(bool(s.loss_mask.any()) for s in sequences):
            raise NoDataError(f"none of the {len(sequences)} sequences has a loss-bearing token")
        total = self.total_steps(len(sequences), steps, epochs)
        # A resumed trainer replays the fits of the run it resumes; otherwise a fit starts where training stands.
        start = self._fit_start if self._resumed is not None else self.step
        end = self._fit_start = start + total
        sampler = sampler if sampler is not None else EpochSampler(len(sequences), self.cfg.seed)
        if self._resumed is not None and self.step >= end:
            return {"steps": 0, "total_steps": total, "global_step": self.step, "final_loss": None, "tokens": 0,
                    "tokens_per_s": 0.0, "wall_s": 0.0, "skipped_steps": 0, "already_done": True}  # fmt: skip
        if self._resumed is not None:
            ck, self._resumed = self._resumed, None
            if (ck["fit_start"], ck["total_steps"]) != (start, total):
                raise CheckpointError(
                    f"checkpoint at step {self.step} is of a {ck['total_steps']}-step run from step {ck['fit_start']};"
                    f" this fit asks for {total} steps from step {start} (the learning-rate schedule would change)"
                )
            sampler.load_state_dict(ck["sampler"])
        log = MetricsLog(self.out_dir, start_step=self.step, config=self.cfg.model_dump())
        progress = Progress(total, self.step - start, self.cfg.progress)
        started, tokens_done, bad_steps, first = time.perf_counter(), 0, [], self.step
        try:
            while self.step < end:
                indices = sampler.next_batch(self.cfg.batch_sequences)
                lr = lr_at(self.cfg, self.step - start, total)
                t0 = time.perf_counter()
                loss, n_tokens, seq_losses, balance = self._train_step([sequences[i] for i in indices], lr)
                seconds = time.perf_counter() - t0
                self.step += 1
                skipped = not math.isfinite(loss)
                tokens_done += n_tokens
                # tokens: the loss-bearing targets trained; input_tokens: all the model read (prompts included)
                input_tokens = sum(len(sequences[i]) for i in indices)
                row = {"step": self.step, "loss": loss if not skipped else None, "lr": lr, "tokens": n_tokens,
                       "tokens_per_s": n_tokens / seconds, "input_tokens": input_tokens,
                       "input_tokens_per_s": input_tokens / seconds, "seconds": seconds, "skipped": skipped,
                       "samples": indices}  # fmt: skip
                if self.aux_coef:
                    row["router_balance"] = balance  # k when the experts share evenly, up to E
                log.log(row)
                progress.update(loss, input_tokens / seconds)
                if on_step is not None:
                    on_step(row)
                if skipped:
                    bad_steps.append(self.step)
                    if len(bad_steps) >= self.cfg.max_bad_steps:
                        raise DivergedError(
                            f"NaN/Inf loss at {len(bad_steps)} steps in a row ({bad_steps}); stopped with the"
                            f" weights of step {bad_steps[0] - 1} (no update was applied on a bad step)"
                        )
                    continue
                bad_steps = []
                if hasattr(sampler, "update"):
                    sampler.update(indices, seq_losses)
                if self.step == end or (self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0):
                    self.save_checkpoint(sampler, start, total)
        finally:
            progress.close()
            log.close()
        plot = self._plot(log.rows)
        wall = time.perf_counter() - started
        mine = [r for r in log.rows if r["step"] > start]
        finite = [r["loss"] for r in mine if r["loss"] is not None]
        return {
            "steps": self.step - start,
            "total_steps": total,
            "global_step": self.step,
            "resumed_at": first if first > start else None,
            "final_loss": finite[-1] if finite else None,
            "tokens": tokens_done,
            "tokens_per_s": tokens_done / wall if wall > 0 else 0.0,
            "wall_s": wall,
            "skipped_steps": sum(1 for r in mine if r["skipped"]),
            "metrics": str(log.path),
            "plot": str(plot),
        }

    def _train_step(self, seqs: list[PackedSequence], lr: float) -> tuple[float, int, list[float], float]:
        """One optimizer step over `seqs`: (token-mean loss or NaN when skipped, loss tokens, per-sequence loss, the
        routers' load-balancing loss, each micro-batch's by its share of the step's tokens; 0 without it)."""
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        n_tokens = int(sum(int(s.loss_mask.sum()) for s in seqs))
        seq_nll = torch.zeros(len(seqs))
        if n_tokens == 0:
            return 0.0, 0, [0.0] * len(seqs), 0.0  # nothing to learn from: no update (Adam would still move weights)
        plan = plan_microbatches(seqs, self.cfg.micro_batch_tokens, self._shared_prefix, self.cfg.min_shared_prefix)
        step_balance, n_routed = 0.0, sum(len(s) for s in seqs)  # every token of the step goes through the routers
        for mb in plan:
            nll, _, balance = self.engine(mb)
            loss = nll.sum() / n_tokens
            if balance is not None:
                share = sum(len(s) for s in mb.sequences) / n_routed
                loss = loss + self.aux_coef * share * balance
                step_balance += share * float(balance.detach())
            if not torch.isfinite(loss):
                self._discard_gradients()
                return math.nan, n_tokens, [], step_balance
            self.engine.backward(loss, scale_wrt_gas=False)
            seq_nll[mb.indices] = nll.detach().float().cpu()
        self.engine.step()
        counts = [max(1, int(s.loss_mask.sum())) for s in seqs]
        seq_losses = [float(v) / c for v, c in zip(seq_nll, counts, strict=True)]
        return float(seq_nll.sum()) / n_tokens, n_tokens, seq_losses, step_balance

    def _discard_gradients(self) -> None:
        # A bad micro-batch poisons the whole step: drop what the earlier micro-batches accumulated, no update.
        if self.cfg.zero_stage > 0:
            self.engine.optimizer.zero_grad(set_to_none=True)
        self.engine.zero_grad()
        self.engine._unmanaged_backward_count = 0

    def save_checkpoint(self, sampler, fit_start: int, total_steps: int) -> Path:
        """Model, optimizer, RNG, step and data position under out_dir/checkpoints/step-N (atomically)."""
        state = {"step": self.step, "fit_start": fit_start, "total_steps": total_steps, "sampler": sampler.state_dict(),
                 "model_shape": self.shape, "config": self.cfg.model_dump(mode="json")}  # fmt: skip
        return checkpoint.save(self.engine, self.out_dir / "checkpoints", self.step, state, self.cfg.keep_checkpoints)

    def _plot(self, rows: list[dict]) -> Path:
        from roll.trainer.plots import plot_curves

        return plot_curves(rows, self.out_dir / "loss.png", title=f"{self.out_dir.name}: training loss")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The full HF state dict of the model (gathered from the partitions under ZeRO-3)."""
        if self.cfg.zero_stage == 3:
            full = self.engine._zero3_consolidated_16bit_state_dict()
            return {k.removeprefix("model."): v for k, v in full.items()}
        return self.model.state_dict()

    def save_hf(self, out_dir: str | Path) -> Path:
        """Write the model as an HF dir (safetensors + tokenizer + chat template), atomically; returns its path."""
        return export_hf(self.model, self.model_dir, out_dir, state_dict=self.state_dict())


def export_hf(model, source_dir: str | Path, out_dir: str | Path, state_dict: dict | None = None) -> Path:
    """`model` (or `state_dict` in its layout) as a complete HF dir at `out_dir`: weights, and the tokenizer, chat
    template and generation config of `source_dir`. Written beside and renamed into place: a reader (vLLM
    loading a new policy) sees the old dir or the new one, never half of one."""
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    for f in Path(source_dir).iterdir():
        if f.is_file() and f.suffix in _SIDE_SUFFIXES and f.name not in _WEIGHT_FILES:
            shutil.copy2(f, tmp / f.name)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)  # rename() cannot replace a non-empty dir
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out
