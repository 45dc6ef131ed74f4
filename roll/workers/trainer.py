"""The RL trainer: DeepSpeed over a Hugging Face causal LM (`.venv/bin/pytest tests/roll/test_roll_trainer.py
tests/roll/test_roll_driver.py`).

`step(trajectories)` is one optimizer update on an iteration's recorded rollouts (`train.epochs` > 1: that many, the
later ones with the ratios under the moved policy, published as one version): each trajectory's trainable
chunks packed into causal sequences (roll/algo/packing.py: a shared prompt prefix is computed once), micro-batches
of whole trajectories by a padded-token budget with gradients accumulated (a prompt prefix that a micro-batch's
trajectories share, iflow's ~976-token system prompt and tools, runs once and its KV cache serves every row:
`train.shared_prefix`, `.venv/bin/pytest tests/roll/test_trainer_rl_prefix.py`), logprobs only at the response
tokens and a slice of the logits at a time, then the configured loss from roll/algo/ipa.py — IPA (chunk-level
returns G_k = γ^(K−k)·R, group baselines, chunk ratio ρ_k against the sampler's recorded logprobs μ with
mismatch masking) or token-level GRPO / PPO-clip for comparison. A non-finite loss applies no update and says
so (`skipped`). Its metrics say where the step's seconds went (step_forward_s, step_backward_s, step_optimizer_s,
step_stale_s: scoring stale chunks under their sampler's weights, step_snapshot_s: the host copy of those weights,
step_shift_s: the delta_logp diagnostic's second forward, off with `train.logprob_shift=false`). `weight_buckets`
hands the new weights to the inference worker in memory; `save` writes the HF dir. One code path for both devices,
chosen by the run's `device` (`deepspeed_setup`, tested in tests/roll/test_trainer_device.py): cpu: DS_ACCELERATOR=cpu,
gloo, float32; cuda: NCCL, bfloat16 weights on the rank's GPU. The micro-batch goes to the device for the forward;
the response logprobs ([N] float32) come back to the host, where the loss is computed, as on CPU. The driver runs
it as `train.workers` Ray actors (roll/workers/trainer_group.py, `.venv/bin/pytest tests/roll/test_trainer_ranks.py`);
tests drive one rank in-process.

With N ranks (one torch.distributed group, data parallel) every rank gets the whole iteration and plans the same
micro-batches; each trains a disjoint share of them (whole trajectories) with the loss normalised by the step's
global counts (chunks, trajectories, tokens over all ranks) and scaled by N, since DeepSpeed averages the gradients
over the ranks: the sum is the one-rank gradient. Every rank runs as many forward and backward passes
(a rank out of micro-batches runs a zero-loss one: ZeRO-2 reduces at each backward, ZeRO-3 also gathers the
parameters at each forward, the delta_logp forward included) and agrees on a non-finite loss before the next; the
metrics are summed over the ranks once, after the update. Weights out (`weight_buckets`, `save`) come from rank 0:
ZeRO-1/2 leave every rank the full parameters, under ZeRO-3 (`train.zero_stage=3`, `.venv/bin/pytest
tests/roll/test_trainer_zero3.py`) every rank gathers them with it (`full_state_dict`), one parameter at a time, as
for the async snapshots (a whole host copy on every rank, as under ZeRO-2); the stale chunks are scored on a host
model of its own, outside the group's collectives. `save_state` / `load_state` run on every rank (each writes and
reads its partitions).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from roll.algo.ipa import grpo_loss, ipa_loss, ppo_clip_loss
from roll.algo.logprobs import sliced_token_logprobs
from roll.algo.packing import PackedSequence, pack_trajectory, pad_sequences, untrainable_reason
from roll.algo.returns import ChunkTargets, chunk_returns, chunk_targets
from roll.config import TrainConfig
from roll.errors import RollError
from roll.trainer.forward import hidden_at, plan_units
from roll.trainer.trainer import export_hf, init_distributed

_AVERAGED = ("mean", "frac")  # loss metrics averaged over micro-batches by chunks; the others are sums
# How long a rank waits in a collective (or for the group to form) before it fails: a rank's share of a step on a
# loaded CPU takes minutes; the driver names a dead rank at once through Ray, this bounds what is left.
GROUP_TIMEOUT_S = 1800.0


def join_group(device: str, rank: int, world: int, rendezvous: tuple[str, int]) -> None:
    """This process as rank `rank` of a `world`-rank torch.distributed group that meets at the TCP store
    `rendezvous` (host, port) that the driver holds; one device per rank (Ray makes it the rank's cuda:0)."""
    os.environ.setdefault("DS_ACCELERATOR", device)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    if device == "cuda":
        torch.cuda.set_device(0)
    timeout = timedelta(seconds=GROUP_TIMEOUT_S)
    store = torch.distributed.TCPStore(rendezvous[0], rendezvous[1], None, False, timeout)
    torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo", store=store, rank=rank,
                                         world_size=world, timeout=timeout)  # fmt: skip


def shares(costs: Sequence[int], world: int) -> list[list[int]]:
    """The micro-batches (by index) each rank trains: longest first to the least-loaded rank (by padded tokens),
    each rank's in plan order. The same on every rank: they plan the same micro-batches."""
    load, out = [0] * world, [[] for _ in range(world)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        load[r] += costs[i]
        out[r].append(i)
    return [sorted(ix) for ix in out]


@dataclass(frozen=True)
class DeepSpeedSetup:
    """How a trainer rank runs on its device: the process group's backend, the weights' dtype, DeepSpeed's config."""

    device: str  # "cpu" or "cuda"
    backend: str  # "gloo" or "nccl" (what roll.trainer.trainer.init_distributed starts for the device)
    dtype: torch.dtype  # the weights': float32 on cpu, bfloat16 on cuda (fp32 master weights in the optimizer)
    config: dict  # deepspeed.initialize(config=...)

    def describe(self) -> str:
        return f"{self.device}, {self.backend}, {str(self.dtype).removeprefix('torch.')}"


def deepspeed_setup(cfg: TrainConfig, device: str = "cpu") -> DeepSpeedSetup:
    """The RL trainer's DeepSpeed set-up for a run's `device` and `train` section (pure: no torch state touched)."""
    if device not in ("cpu", "cuda"):
        raise RollError(f"the RL trainer runs on device cpu or cuda, not {device!r}")
    bf16 = device == "cuda"
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.zero_stage == 3:
        # every parameter partitioned, the small ones too (DeepSpeed keeps those under 1e5 elements whole on every
        # rank): a test's small model then takes the paths a 30B model's tensors take; the price is a few hundred
        # small all-gathers per forward (the norms), nothing beside a 30B layer's
        zero["stage3_param_persistence_threshold"] = 0
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        # backward() per micro-batch only accumulates; our step() is the boundary, however many there were
        "managed_gradient_accumulation": False,
        "optimizer": {"type": "Adam", "params": {"lr": cfg.lr, "weight_decay": 0.0, "torch_adam": True}},
        "zero_optimization": zero,
        "gradient_clipping": cfg.grad_clip,
        "fp16": {"enabled": False},
        "bf16": {"enabled": bf16},
        "steps_per_print": 1 << 30,
    }
    return DeepSpeedSetup(device, "nccl" if bf16 else "gloo", torch.bfloat16 if bf16 else torch.float32, config)


class _ResponseLogprobs(torch.nn.Module):
    """The model under DeepSpeed: padded ids in, the logprob of each selected target out (rows, cols: [N]);
    `prefix_len` > 0: the rows' first `prefix_len` tokens are equal and run once (roll/trainer/forward.py)."""

    def __init__(self, model, slice_len: int):
        super().__init__()
        self.model, self.slice_len = model, slice_len

    def forward(self, input_ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, prefix_len: int = 0):
        # Right padding needs no attention mask in a causal model: real tokens never attend to the pads after them.
        hidden = hidden_at(self.model.get_decoder(), input_ids, rows, cols, prefix_len)  # [N, H]
        targets = input_ids[rows, cols + 1]  # [N]: position j predicts token j+1
        return sliced_token_logprobs(self.model.get_output_embeddings(), hidden, targets, self.slice_len)


class _MicroBatch:
    """The packed sequences of some whole trajectories, flattened to the response targets: [1, N] tensors;
    `prefix_len` > 0: the sequences' first `prefix_len` tokens are equal (computed once)."""

    def __init__(self, sequences: list[PackedSequence], is_reference: Callable[[tuple[str, int]], bool],
                 prefix_len: int = 0):  # fmt: skip
        batch = pad_sequences(sequences)
        self.input_ids = batch.input_ids  # [B, T]
        self.prefix_len = prefix_len
        self.rows, self.cols = batch.loss_mask.nonzero(as_tuple=True)  # [N], [N]
        self.chunk_ids = batch.chunk_ids[self.rows, self.cols][None]  # [1, N] ids into keys
        self.old = batch.old_logprobs[self.rows, self.cols][None]  # [1, N] μ as recorded
        self.keys = batch.chunk_keys  # [C] (trajectory_id, Chunk.index)
        ref = torch.tensor([is_reference(k) for k in self.keys], dtype=torch.bool)  # [C]
        self.chunk_is_ref = ref  # [C]
        self.is_ref = ref[self.chunk_ids] if self.keys else torch.zeros_like(self.chunk_ids, dtype=torch.bool)
        self.mask = torch.ones_like(self.old)  # [1, N]: every selected target counts

    @property
    def cost(self) -> int:
        """Tokens through the model: the prefix once, every row's rest padded to the longest."""
        B, T = self.input_ids.shape
        return self.prefix_len + B * (T - self.prefix_len)


def _select(targets: ChunkTargets, where: dict[tuple[str, int], int], keys: list[tuple[str, int]]) -> ChunkTargets:
    ix = torch.tensor([where[k] for k in keys], dtype=torch.long)
    return ChunkTargets(targets.returns[ix], targets.advantages[ix], targets.positive[ix])


def _imitate_prefixes(
    targets: ChunkTargets, trajectories, keys, given: Mapping[str, int], gamma: float
) -> ChunkTargets:
    """The given prefix chunks as positives with a success's return G_k = γ^(K−k) (the reference succeeded)."""
    returns, positive = targets.returns.clone(), targets.positive.clone()
    for t in trajectories:
        k0 = given.get(t.trajectory_id, 0)
        if not k0:
            continue
        order = {c.index: i for i, c in enumerate(sorted(t.chunks, key=lambda c: c.index))}
        g = chunk_returns(len(order), 1.0, gamma)  # [K]
        for j, (tid, index) in enumerate(keys):
            if tid == t.trajectory_id and index < k0:
                returns[j], positive[j] = g[order[index]], True
    return ChunkTargets(returns, targets.advantages, positive)


class _Clock:
    """Seconds per part of a step (`with clock("forward"): ...`), summed; `metrics()` as step_<part>_s."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, part: str):
        t = time.monotonic()
        try:
            yield
        finally:
            self.seconds[part] = self.seconds.get(part, 0.0) + time.monotonic() - t

    def metrics(self) -> dict[str, float]:
        return {f"step_{k}_s": round(v, 3) for k, v in self.seconds.items()}


class Trainer:
    """Holds the DeepSpeed engine of one policy. Methods run synchronously; under Ray, call `.remote`."""

    def __init__(self, model_dir: str, cfg: TrainConfig | None = None, device: str = "cpu", rank: int = 0,
                 world: int = 1, rendezvous: tuple[str, int] | None = None):  # fmt: skip
        """One rank: alone (`world` 1), or rank `rank` of `world` meeting at the TCP store `rendezvous`."""
        self.cfg = cfg = cfg or TrainConfig()
        self.setup = setup = deepspeed_setup(cfg, device)
        if device == "cuda" and not torch.cuda.is_available():
            raise RollError("device cuda asked for, but torch sees no CUDA device")
        self.rank, self.world = rank, world
        if world > 1:
            if rendezvous is None:
                raise RollError(f"trainer rank {rank} of {world} needs the group's rendezvous (host, port)")
            join_group(device, rank, world, rendezvous)
        # the supervised trainer's: DS_ACCELERATOR before the import, gloo (cpu) or NCCL (cuda); alone: one process
        init_distributed(device)
        import deepspeed
        from deepspeed.utils import logger as ds_logger
        from transformers import AutoModelForCausalLM

        ds_logger.setLevel("WARNING")
        torch.manual_seed(cfg.seed)
        self.model_dir = Path(model_dir)
        from roll.trainer.checkpoint import model_shape

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=setup.dtype)
        self.shape = model_shape(model)  # before ZeRO-3 empties the parameters
        self.zero3 = cfg.zero_stage == 3
        # ZeRO-3 reduces a parameter's gradient per use of its module, and the shared prefix runs the model twice in
        # one backward (prefix, then the rest): DeepSpeed asserts on the repeated parameter (as in the SFT trainer)
        self.shared_prefix = cfg.shared_prefix and not self.zero3
        module = _ResponseLogprobs(model, cfg.logprob_slice)
        self.engine, *_ = deepspeed.initialize(model=module, model_parameters=module.parameters(), config=setup.config)
        # where the micro-batches go: the rank's GPU (DeepSpeed moved the model there) or the host
        self.device = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
        self.engine.train()
        if cfg.threads:  # after DeepSpeed's set-up, which may set its own
            torch.set_num_threads(cfg.threads)
        # Async mode: the weights of the last ⌊max_staleness⌋ versions (host copies), so that a stale chunk is
        # mismatch-tested under the version that sampled it. The version counts applied updates, as the driver's.
        self.version = 0
        self.keep_versions = math.floor(cfg.max_staleness) if cfg.mode == "async" else 0
        self._snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self._scratch: _ResponseLogprobs | None = None

    @property
    def model(self):
        """The HF model being trained (its parameters are partitions under ZeRO-3: `full_state_dict` gathers them)."""
        return self.engine.module.model

    def full_state_dict(self, everywhere: bool = True) -> dict[str, torch.Tensor]:
        """The model's state dict as whole host tensors. Under ZeRO-3 every rank must call it (each parameter is
        all-gathered in turn, in the same order on every rank); `everywhere=False` keeps the copies on rank 0 only
        (the others return {}). Peak device memory: the partitions plus one whole parameter."""
        state = self.model.state_dict(keep_vars=True)
        keep = everywhere or self.rank == 0
        if not self.zero3:
            return {k: v.detach().to("cpu", copy=True) for k, v in state.items()} if keep else {}
        from deepspeed.runtime.zero.partition_parameters import GatheredParameters

        out, seen = {}, {}
        for name, t in state.items():
            if id(t) in seen:  # a tied weight: the same parameter under a second name, gathered once
                if keep:
                    out[name] = out[seen[id(t)]]
                continue
            seen[id(t)] = name
            with GatheredParameters([t] if hasattr(t, "ds_id") else [], modifier_rank=None):
                if keep:
                    out[name] = t.detach().to("cpu", copy=True)
        return out if keep else {}

    # -- the update
    def _plan(self, trajectories, is_reference, given: Mapping[str, int]) -> tuple[list[_MicroBatch], int]:
        """Micro-batches of whole trajectories (so per-chunk and per-trajectory means never straddle two) and the
        number of recorded chunks left out as untrainable (an aborted call, no token ids)."""
        packs, dropped = [], 0
        for t in trajectories:
            chunks = [c for c in t.chunks if untrainable_reason(c) is None]
            if self.cfg.algorithm != "ipa":  # GRPO/PPO have no imitation term: a given prefix is context only
                chunks = [c for c in chunks if c.index >= given.get(t.trajectory_id, 0)]
            dropped += len(t.chunks) - len(chunks)
            if chunks:
                packs.append(pack_trajectory(chunks))
        # by padded tokens; with the shared prefix, trajectories that start alike share a micro-batch and its prefix
        plan = plan_units(packs, self.cfg.micro_batch_tokens, self.shared_prefix)  # its min_prefix, as SFT's
        return [_MicroBatch([s for i in ix for s in packs[i]], is_reference, p) for ix, p in plan], dropped

    def _loss(self, mb: _MicroBatch, logp: torch.Tensor, old: torch.Tensor, t: ChunkTargets, denominators: dict,
              behaviour: torch.Tensor | None = None):  # fmt: skip
        algo, ipa = self.cfg.algorithm, self.cfg.ipa
        if algo == "ipa":
            return ipa_loss(logp, old, mb.chunk_ids, mb.mask, t.returns, t.advantages, t.positive,
                            neg_weight=ipa.neg_weight, ratio_low=ipa.ratio_low, ratio_high=ipa.ratio_high,
                            denominator=denominators["chunks"], logp_behaviour=behaviour)  # fmt: skip
        if algo == "grpo":  # one sample per trajectory: its chunks' ids mapped to the trajectory's
            trajs = list(dict.fromkeys(tid for tid, _ in mb.keys))
            of_chunk = torch.tensor([trajs.index(tid) for tid, _ in mb.keys], dtype=torch.long)  # [C]
            adv = torch.zeros(len(trajs)).index_copy(0, of_chunk, t.advantages)  # [S]: equal over a trajectory
            return grpo_loss(logp, old, of_chunk[mb.chunk_ids], mb.mask, adv, clip_eps=self.cfg.clip_low,
                             denominator=denominators["trajectories"])  # fmt: skip
        return ppo_clip_loss(logp, old, mb.chunk_ids, mb.mask, t.advantages, clip_eps=self.cfg.clip_low,
                             denominator=denominators["tokens"])  # fmt: skip

    def step(
        self, trajectories: Sequence, reference: Iterable[str] = (), given: Mapping[str, int] | None = None
    ) -> dict:
        """One optimizer update on the iteration's trajectories (`rock.contracts.Trajectory`, rewards set), or
        `train.epochs` of them, each later one a new forward under the weights the last one left; the metrics are
        the first pass's (the rollouts' own policy), `epochs` says how many were applied.

        `reference`: ids of trajectories no policy of ours sampled (a replayed oracle success): their recorded
        logprobs are not μ, so the trainer's own (detached) logprobs stand in — ratio 1, never masked as mismatch.
        `given`: trajectory id -> k for a resampled attempt whose chunks before index k are a reference's prefix:
        those chunks are reference chunks too, and under IPA an imitation term (positive, with the return of a
        success, whatever became of the attempt); the policy's chunks k.. get the RL terms.
        Returns metrics; `skipped` is true (and no update was applied) when the loss was NaN/Inf.
        """
        reference, given = set(reference), dict(given or {})

        def is_reference(key: tuple[str, int]) -> bool:
            return key[0] in reference or key[1] < given.get(key[0], 0)

        plan, dropped = self._plan(trajectories, is_reference, given)
        base = {"dropped_chunks": dropped, "algorithm": self.cfg.algorithm}
        if not plan:  # the same on every rank: none of them joins a collective
            return base | {"skipped": False, "chunks": 0, "loss": None}
        gamma = self.cfg.ipa.gamma if self.cfg.algorithm == "ipa" else 1.0  # GRPO/PPO: A = R − group mean
        keys = [k for mb in plan for k in mb.keys]
        targets = chunk_targets(trajectories, keys, gamma, self.cfg.ipa.normalize_std)
        if given and self.cfg.algorithm == "ipa":
            targets = _imitate_prefixes(targets, trajectories, keys, given, gamma)
        where = {k: i for i, k in enumerate(keys)}
        # over the whole step, all ranks' micro-batches: each rank's share of the loss is its share of the sum
        denominators = {"chunks": len(keys), "trajectories": len({tid for tid, _ in keys}),
                        "tokens": sum(mb.old.numel() for mb in plan)}  # fmt: skip
        stats: dict[str, float] = {"given_chunks": float(sum(k[1] < given.get(k[0], 0) for k in keys))}
        share = shares([mb.cost for mb in plan], self.world)
        mine = [plan[i] for i in share[self.rank]]
        self._forwards = max(len(ix) for ix in share)  # of the model per pass, on every rank (idle ones on the short)
        # sums over this rank's micro-batches (summed over the ranks after the update)
        local: dict[str, float] = {"loss": 0.0, "abs_diff": 0.0, "policy_tokens": 0.0}
        before: list[torch.Tensor] = []  # [C_mb] chunk mean logprob per micro-batch, before the update
        sampled_by = {(t.trajectory_id, c.index): c.policy_version for t in trajectories for c in t.chunks}
        clock = _Clock()
        if self.keep_versions:
            with clock("snapshot"):
                self._snapshots[self.version] = self.full_state_dict()  # every rank scores its own stale chunks
        error = self._pass(mine, targets, where, denominators, sampled_by, clock, local, before)
        if error is not None:
            return base | {"skipped": True, "chunks": len(keys), "loss": math.nan, "error": error}
        with clock("optimizer"):
            self.engine.step()
        stats["epochs"] = 1.0
        for _ in range(1, self.cfg.epochs):  # more updates on the same rollouts, ratios under the moved policy
            error = self._pass(mine, targets, where, denominators, sampled_by, clock)
            if error is not None:  # the updates so far stand (finite losses, clipped gradients); no more of them
                stats["epoch_error"] = error
                break
            with clock("optimizer"):
                self.engine.step()
            stats["epochs"] += 1
        self.version += 1
        for v in [v for v in self._snapshots if v < self.version - self.keep_versions]:
            del self._snapshots[v]  # no chunk that old can be trained any more (the staleness bound)
        grad_norm = self.engine.get_global_grad_norm()
        if self.cfg.logprob_shift:
            with clock("shift"):
                local |= self._shift(mine, before, targets, where)
        total = self._sum_over_ranks(local)
        loss_total, abs_diff, policy_tokens = (total.pop(k) for k in ("loss", "abs_diff", "policy_tokens"))
        shift = {k: total.pop(k) for k in [k for k in total if k.startswith("_shift")]}
        stats |= total
        for k in [k for k in stats if k.endswith(_AVERAGED)]:
            stats[k] /= len(keys)
        out = (
            base
            | stats
            | {
                "skipped": False,
                "loss": loss_total,
                "grad_norm": float(grad_norm) if grad_norm is not None else 0.0,
                "chunks": len(keys),
                "reference_chunks": sum(tid in reference for tid, _ in keys),
                "trained_tokens": denominators["tokens"],
                # how far the trainer's logprobs are from the sampler's on the same tokens (policy chunks only)
                "logprob_abs_diff": abs_diff / policy_tokens if policy_tokens else 0.0,
            }
        )
        if self.cfg.algorithm == "ipa":
            out["mismatch_frac"] = stats.get("mismatch_chunks", 0.0) / len(keys)
        if self.cfg.logprob_shift:
            pos, neg = shift["_shift_pos_n"], shift["_shift_neg_n"]
            out["delta_logp_pos"] = shift["_shift_pos_sum"] / pos if pos else 0.0
            out["delta_logp_neg"] = shift["_shift_neg_sum"] / neg if neg else 0.0
        return out | clock.metrics()

    def _pass(self, mine: list[_MicroBatch], targets: ChunkTargets, where, denominators: dict, sampled_by: dict,
              clock: _Clock, local: dict | None = None, before: list | None = None) -> str | None:  # fmt: skip
        """One forward and backward over this rank's micro-batches (as many on every rank), the gradients
        accumulated for one update; `local` and `before` (the first pass of a step) collect its metrics and the
        chunks' logprobs before the update. A non-finite loss on any rank: the gradients are discarded and its
        message returned (on every rank)."""
        for r in range(self._forwards):
            mb = mine[r] if r < len(mine) else None
            if mb is None:
                with clock("forward"):
                    loss, m, error = self._idle_loss(), {}, None
            else:
                with clock("forward"):
                    logp = self._logprobs(mb)  # [1, N]
                old = torch.where(mb.is_ref, logp.detach(), mb.old)  # [1, N]
                t = _select(targets, where, mb.keys)
                with clock("stale"):
                    behaviour = self._behaviour(mb, logp.detach(), sampled_by, local) if self.keep_versions else None
                loss, m = self._loss(mb, logp, old, t, denominators, behaviour)
                error = None if torch.isfinite(loss) else \
                    f"non-finite loss {loss.item()} on a micro-batch of {len(mb.keys)} chunks"  # fmt: skip
            if (error := self._first_error(error)) is not None:
                self._discard_gradients()
                return error
            with clock("backward"):
                # DeepSpeed averages the ranks' gradients; times N, that is their sum, the one-rank gradient
                self.engine.backward(loss * self.world if self.world > 1 else loss, scale_wrt_gas=False)
            if mb is None or local is None:
                continue
            local["loss"] += loss.item()
            for k, v in m.items():
                if k != "loss":
                    local[k] = local.get(k, 0.0) + v * (len(mb.keys) if k.endswith(_AVERAGED) else 1.0)
            on_policy = ~mb.is_ref
            local["abs_diff"] += (logp.detach() - mb.old)[on_policy].abs().sum().item()
            local["policy_tokens"] += float(on_policy.sum())
            if self.cfg.logprob_shift and before is not None:
                before.append(self._chunk_means(logp.detach(), mb))
        return None

    def _idle_loss(self) -> torch.Tensor:
        """A zero loss through the model on one token, for a rank out of micro-batches: its backward joins the
        ranks' gradient reduction with zeros."""
        ids = torch.zeros(1, 2, dtype=torch.long, device=self.device)  # [1, 2]
        at = torch.zeros(1, dtype=torch.long, device=self.device)  # [1]
        return self.engine(ids, at, at).float().sum() * 0.0

    def _first_error(self, error: str | None) -> str | None:
        """Any rank's error (the lowest rank's message), on every rank: they skip the update together."""
        if self.world == 1:
            return error
        flag = torch.tensor([0.0 if error is None else 1.0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if not flag.item():
            return None
        errors: list[str | None] = [None] * self.world
        torch.distributed.all_gather_object(errors, error)
        return next(f"trainer rank {r}: {e}" for r, e in enumerate(errors) if e is not None)

    def _sum_over_ranks(self, local: dict[str, float]) -> dict[str, float]:
        """Each key summed over the ranks (in rank order; a rank without the key adds nothing)."""
        if self.world == 1:
            return dict(local)
        every: list[dict | None] = [None] * self.world
        torch.distributed.all_gather_object(every, local)
        total: dict[str, float] = {}
        for d in every:
            for k, v in d.items():
                total[k] = total.get(k, 0.0) + v
        return total

    def _logprobs(self, mb: _MicroBatch) -> torch.Tensor:
        """[1, N] float32 on the host: the engine's forward on the device; the loss math stays on the host
        (N floats per micro-batch cross back; gradients flow through the copy)."""
        ids, rows, cols = (x.to(self.device) for x in (mb.input_ids, mb.rows, mb.cols))
        return self.engine(ids, rows, cols, mb.prefix_len).float().cpu()[None]

    @torch.no_grad()
    def _behaviour(self, mb: _MicroBatch, current: torch.Tensor, sampled_by: dict, stats: dict) -> torch.Tensor:
        """[1, N]: the logprobs the mismatch test compares with μ. A stale chunk whose ratio against the current
        policy leaves the bound gets the logprobs of the version that sampled it (one no-grad forward per such
        version); every other chunk keeps the current ones (within the bound either way, or no longer kept)."""
        from roll.algo.ratio import chunk_means

        behaviour = current.clone()
        # [C]: the sampling version of each policy chunk; −1 for reference chunks and unknown versions
        versions = torch.tensor([-1 if ref or sampled_by.get(k) is None else sampled_by[k]
                                 for k, ref in zip(mb.keys, mb.chunk_is_ref.tolist(), strict=True)])  # fmt: skip
        stale = (versions >= 0) & (versions < self.version)  # [C]
        stats["stale_chunks"] = stats.get("stale_chunks", 0.0) + float(stale.sum())
        ratio = chunk_means(current - mb.old, mb.chunk_ids, mb.mask, len(mb.keys))[0].exp()  # [C]
        out = stale & ((ratio < self.cfg.ipa.ratio_low) | (ratio > self.cfg.ipa.ratio_high))  # [C]
        versions = torch.where(out, versions, -1)
        token_version = versions[mb.chunk_ids[0]][None]  # [1, N]
        for v in sorted({int(x) for x in versions.tolist() if x >= 0}):
            n = float((versions == v).sum())
            stats["stale_scored_chunks"] = stats.get("stale_scored_chunks", 0.0) + n
            if v not in self._snapshots:
                stats["stale_unscored_chunks"] = stats.get("stale_unscored_chunks", 0.0) + n
                continue
            if self._scratch is None:
                from transformers import AutoModelForCausalLM

                model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
                self._scratch = _ResponseLogprobs(model, self.cfg.logprob_slice).eval()
            self._scratch.model.load_state_dict(self._snapshots[v])
            at_v = self._scratch(mb.input_ids, mb.rows, mb.cols, mb.prefix_len)[None]  # [1, N]
            behaviour = torch.where(token_version == v, at_v, behaviour)
        return behaviour

    @staticmethod
    def _chunk_means(logp: torch.Tensor, mb: _MicroBatch) -> torch.Tensor:
        from roll.algo.ratio import chunk_means

        return chunk_means(logp, mb.chunk_ids, mb.mask, len(mb.keys))[0]  # [C_mb]

    @torch.no_grad()
    def _shift(self, plan, before, targets: ChunkTargets, where) -> dict[str, float]:
        """Sums and counts of the change of the chunks' mean logprob through the update, over successful and over
        failed trajectories' chunks (of this rank's micro-batches; their means, over all ranks', are delta_logp_pos
        and _neg): the update should raise the first and (with a negative advantage) lower the second. Under ZeRO-3
        a forward gathers the parameters from every rank: a rank with fewer micro-batches runs idle forwards."""
        deltas, positive = [torch.zeros(0)], [torch.zeros(0, dtype=torch.bool)]
        for mb, b in zip(plan, before, strict=True):
            after = self._chunk_means(self._logprobs(mb), mb)
            deltas.append(after - b)
            positive.append(_select(targets, where, mb.keys).positive)
        for _ in range(self._forwards - len(plan) if self.zero3 else 0):
            self._idle_loss()
        d, pos = torch.cat(deltas), torch.cat(positive)
        return {"_shift_pos_sum": d[pos].sum().item(), "_shift_pos_n": float(pos.sum()),
                "_shift_neg_sum": d[~pos].sum().item(), "_shift_neg_n": float((~pos).sum())}  # fmt: skip

    def _discard_gradients(self) -> None:
        # A bad micro-batch poisons the whole step: drop what the earlier micro-batches accumulated, no update.
        if self.cfg.zero_stage > 0:
            opt = self.engine.optimizer
            opt.zero_grad(set_to_none=True)
            # ZeRO-1/2 also sum each backward's reduced gradients per parameter group until the step: without this
            # the dropped micro-batches' gradients went into the next update
            for held in (getattr(opt, "all_grad_tensors", {}), getattr(opt, "averaged_gradients", {})):
                for i in list(held):
                    held[i] = None
        self.engine.zero_grad()
        self.engine._unmanaged_backward_count = 0

    # -- the weights out
    def weight_buckets(self) -> list[bytes]:
        """The weights as safetensors buckets of whole layers, for the inference worker's in-memory update."""
        from rome.serving.weights import model_buckets

        # ZeRO-1/2 leave every rank the full parameters (fp32 on cpu, bf16 on cuda, the dtype the inference worker
        # loads); ZeRO-3 partitions them: every rank joins the gather (roll/workers/trainer_group.py calls them all),
        # rank 0 returns the buckets, the others [].
        if not self.zero3:
            return list(model_buckets(self.model))
        state = self.full_state_dict(everywhere=False)
        return list(model_buckets(self.model, state=state)) if self.rank == 0 else []

    def save(self, out_dir: str) -> str:
        """Write the policy as an HF dir, atomically: a reader sees either nothing or the complete dir. Under
        ZeRO-3 every rank joins the gather and rank 0 writes."""
        if not self.zero3:
            return str(export_hf(self.model, self.model_dir, out_dir))
        state = self.full_state_dict(everywhere=False)
        return str(export_hf(self.model, self.model_dir, out_dir, state_dict=state)) if self.rank == 0 else out_dir

    # -- resume (roll/resume.py: the driver renames the checkpoint dir into place)
    def save_state(self, out_dir: str) -> str:
        """Model, optimizer state, RNG and policy version into `out_dir` (a fresh dir), for `load_state`. With
        several ranks every rank calls it (each writes its optimizer partition; rank 0 the rest)."""
        from roll.trainer.checkpoint import rng_state

        out = Path(out_dir)
        self.engine.save_checkpoint(str(out.parent), tag=out.name, save_latest=False)
        if self.rank == 0:
            torch.save(rng_state(), out / "rng.pt")
            state = {"version": self.version, "model_shape": self.shape, "workers": self.world}
            (out / "trainer.json").write_text(json.dumps(state, indent=1))
        return str(out)

    def load_state(self, path: str) -> int:
        """Restore what `save_state` wrote; refuses a checkpoint of another model shape. Returns the version."""
        from roll.trainer.checkpoint import _shape_text, set_rng_state
        from roll.trainer.errors import CheckpointError

        path = Path(path)
        state = json.loads((path / "trainer.json").read_text())
        if state["model_shape"] != (shape := self.shape):
            raise CheckpointError(f"checkpoint {path} is for model shape [{_shape_text(state['model_shape'])}] but "
                                  f"the model has shape [{_shape_text(shape)}]")  # fmt: skip
        if (workers := state.get("workers", 1)) != self.world:  # each rank's optimizer partition is in it
            raise CheckpointError(f"checkpoint {path} was written by {workers} trainer rank(s) but this run has "
                                  f"{self.world}; resume with train.workers={workers}")  # fmt: skip
        loaded, _ = self.engine.load_checkpoint(str(path.parent), tag=path.name, load_optimizer_states=True,
                                                load_lr_scheduler_states=False)  # fmt: skip
        if loaded is None:
            raise CheckpointError(f"checkpoint {path}: DeepSpeed found no model files in it")
        set_rng_state(torch.load(path / "rng.pt", weights_only=False))
        self.version = state["version"]
        return self.version
