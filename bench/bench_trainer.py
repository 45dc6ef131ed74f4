"""DeepSpeed trainer vs a bare PyTorch loop: `.venv/bin/python bench/bench_trainer.py [--steps 6] [--quick]`.

ROME-tiny (made by `rome init` in a temp dir), float32 on CPU. The same batches go through
`SupervisedTrainer.fit` (DeepSpeed engine, gloo, micro-batching, metrics, progress off) and through a bare loop
over a second copy of the same model: the same micro-batches and the same loss (`microbatch_nll`, token mean
over the step), `loss.backward()`, `clip_grad_norm_`, `torch.optim.AdamW`. The two are interleaved step by step
(the bare step runs inside the trainer's on_step callback) and every step trains the same batch, so each arm's
fastest step is its cost with the least interference from other processes on this shared 2-core machine (the
same work measured 0.2 s and 5 s there); the first step of each is warm-up and not counted. Prints a JSON line;
`ratio` = trainer tokens/s ÷ bare tokens/s from the fastest steps (target >= 0.9; `ratio_median` and
`ratio_mean` from the median and the sums), and `max_weight_diff` shows both did the same training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def synthetic_sequences(n: int, seed: int = 0) -> list:
    """n sequences of 160-320 tokens: a prompt without loss, then a response with loss (ids from rome's vocab)."""
    from roll.algo.packing import PackedSequence

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length, prompt = int(torch.randint(160, 321, (1,), generator=g)), int(torch.randint(60, 120, (1,), generator=g))
        ids = torch.randint(3, 1000, (length,), generator=g)
        mask = torch.zeros(length - 1, dtype=torch.bool)
        mask[prompt:] = True
        out.append(PackedSequence(f"s{i}", ids, mask, torch.where(mask, 0, -1), torch.zeros(length - 1), [0]))
    return out


class BareLoop:
    """The same training by hand: torch.optim.AdamW on a plain copy of the model."""

    def __init__(self, model_dir: Path, cfg):
        from transformers import AutoModelForCausalLM

        self.cfg = cfg
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=1e-8, weight_decay=cfg.weight_decay
        )

    def step(self, seqs: list, lr: float) -> None:
        from roll.trainer.forward import load_balancing_loss, microbatch_nll, plan_microbatches
        from roll.trainer.trainer import router_aux_coef

        for group in self.opt.param_groups:
            group["lr"] = lr
        n_tokens = sum(int(s.loss_mask.sum()) for s in seqs)
        coef, config = router_aux_coef(self.cfg, self.model.config), self.model.config
        n_routed = sum(len(s) for s in seqs)
        for mb in plan_microbatches(seqs, self.cfg.micro_batch_tokens, self.cfg.shared_prefix, 64):
            routers: list | None = [] if coef else None  # the trainer's loss: NLL + the routers' balance
            nll, _ = microbatch_nll(self.model, mb, self.cfg.logprob_slice, config.pad_token_id or 0, routers)
            loss = nll.sum() / n_tokens
            if routers:
                share = sum(len(s) for s in mb.sequences) / n_routed
                loss = loss + coef * share * load_balancing_loss(routers, config.num_experts_per_tok)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps (the first is warm-up)")
    ap.add_argument("--batch", type=int, default=4, help="sequences per step")
    ap.add_argument("--zero-stage", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="5 steps")
    args = ap.parse_args()
    steps = 5 if args.quick else args.steps
    from roll.trainer import SupervisedTrainer, TrainerConfig
    from rome.init import init_model

    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        model_dir = init_model(Path(tmp) / "rome-tiny", "tiny")
        cfg = TrainerConfig(batch_sequences=args.batch, micro_batch_tokens=2048, lr=1e-3, schedule="constant",
                            zero_stage=args.zero_stage, shared_prefix=False, progress=False)  # fmt: skip
        seqs = synthetic_sequences(args.batch)
        trainer = SupervisedTrainer(model_dir, cfg, Path(tmp) / "run")
        bare = BareLoop(model_dir, cfg)
        times = {"trainer": [], "bare": []}
        tokens: list[int] = []
        mark = [time.perf_counter()]

        def on_step(row: dict) -> None:
            times["trainer"].append(time.perf_counter() - mark[0])  # sampler, step, metrics row: all of fit's work
            t = time.perf_counter()
            bare.step([seqs[i] for i in row["samples"]], row["lr"])
            times["bare"].append(time.perf_counter() - t)
            tokens.append(sum(len(seqs[i]) for i in row["samples"]))
            mark[0] = time.perf_counter()

        class SameBatch:
            def next_batch(self, n):
                return list(range(n))

            def state_dict(self):
                return {}

        mark[0] = time.perf_counter()
        trainer.fit(seqs, steps=steps, sampler=SameBatch(), on_step=on_step)
        ours = trainer.model.state_dict()
        diff = max((ours[k] - v).abs().max().item() for k, v in bare.model.state_dict().items())
    counted = sum(tokens[1:])
    tps = {k: counted / sum(v[1:]) for k, v in times.items()}
    median = {k: statistics.median(v[1:]) for k, v in times.items()}
    best = {k: min(v[1:]) for k, v in times.items()}
    result = {
        "bench": "trainer",
        "model": "rome-tiny",
        "dtype": "float32",
        "zero_stage": args.zero_stage,
        "steps_timed": steps - 1,
        "tokens_per_step": tokens[0],
        "trainer_tokens_per_s": round(tokens[0] / best["trainer"], 1),
        "bare_tokens_per_s": round(tokens[0] / best["bare"], 1),
        "trainer_step_s": [round(t, 3) for t in times["trainer"]],
        "bare_step_s": [round(t, 3) for t in times["bare"]],
        "max_weight_diff": diff,
        "torch_threads": torch.get_num_threads(),
        "ratio_mean": round(tps["trainer"] / tps["bare"], 3),
        "ratio_median": round(median["bare"] / median["trainer"], 3),
        "ratio": round(best["bare"] / best["trainer"], 3),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
