"""SFT phase 2's adaptive selection: `.venv/bin/pytest tests/roll/test_sft_data.py -k sampler`.

`AdaptiveSampler` is a sampler for `SupervisedTrainer.fit(..., sampler=...)` (the protocol of
`roll.trainer.sampler`: `next_batch(n)`, `update(indices, losses)`, `state_dict()`, `load_state_dict()`).
Each draw picks a family, then a sequence of it:
- families are balanced: each has the same base weight whatever its number of sequences, raised by
  `pass_boost * (1 - held-out pass rate)` so weak families are revisited, and no family weighs more than
  `max_family_ratio` times the lightest (a family at 0 % does not starve the others);
- within a family a sequence weighs its last loss (EMA of the per-sequence mean token loss the trainer reports)
  to the power `loss_power`; one not trained yet weighs as the family's highest loss, so it comes up early.
A batch holds distinct sequences (a batch refuses the same chunk twice). Draws are seeded by (seed, batch
number), so the same seed, losses and pass rates give the same batches, and a restored state continues exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

UNKNOWN_PASS = 0.5  # the pass rate assumed for a family none was measured for, when none was measured at all


class AdaptiveSampler:
    def __init__(
        self,
        sequences: Sequence | int,
        families: Sequence[str],
        pass_rates: dict[str, float] | None = None,
        losses: Sequence[float | None] | None = None,
        *,
        seed: int = 0,
        loss_power: float = 1.0,
        pass_boost: float = 2.0,
        max_family_ratio: float = 4.0,
        ema: float = 0.5,
    ):
        self.n = sequences if isinstance(sequences, int) else len(sequences)
        if self.n < 1:
            raise ValueError("no sequences to sample from")
        if len(families) != self.n:
            raise ValueError(f"{len(families)} families given for {self.n} sequences")
        if losses is not None and len(losses) != self.n:
            raise ValueError(f"{len(losses)} losses given for {self.n} sequences")
        if max_family_ratio < 1 or loss_power < 0 or pass_boost < 0 or not 0 <= ema < 1:
            raise ValueError("need max_family_ratio >= 1, loss_power >= 0, pass_boost >= 0 and 0 <= ema < 1")
        self.families = list(families)
        self.members: dict[str, list[int]] = {}
        for i, f in enumerate(self.families):
            self.members.setdefault(f, []).append(i)
        self.seed, self.loss_power, self.pass_boost = seed, loss_power, pass_boost
        self.max_family_ratio, self.ema = max_family_ratio, ema
        self.losses: list[float | None] = list(losses) if losses is not None else [None] * self.n
        self.pass_rates: dict[str, float] = {}
        self.set_pass_rates(pass_rates or {})
        self.batches = 0

    # -- what the trainer and the stage feed in
    def update(self, indices: Sequence[int], losses: Sequence[float]) -> None:
        """Each trained sequence's mean token loss (the trainer calls this after every step)."""
        for i, loss in zip(indices, losses, strict=True):
            if loss is None or not math.isfinite(loss):
                continue
            old = self.losses[i]
            self.losses[i] = float(loss) if old is None else self.ema * old + (1 - self.ema) * float(loss)

    def set_pass_rates(self, pass_rates: dict[str, float]) -> None:
        """Held-out pass rates by family (0..1), e.g. after an evaluation between rounds."""
        bad = {f: p for f, p in pass_rates.items() if not 0.0 <= p <= 1.0}
        if bad:
            raise ValueError(f"pass rates must be in [0, 1]: {bad}")
        self.pass_rates.update({f: float(p) for f, p in pass_rates.items()})

    # -- the weights
    def family_weights(self) -> dict[str, float]:
        """Each family's share of the draws (sums to 1)."""
        known = [self.pass_rates[f] for f in self.members if f in self.pass_rates]
        default = sum(known) / len(known) if known else UNKNOWN_PASS
        raw = {f: 1.0 + self.pass_boost * (1.0 - self.pass_rates.get(f, default)) for f in self.members}
        cap = min(raw.values()) * self.max_family_ratio
        capped = {f: min(w, cap) for f, w in raw.items()}
        total = sum(capped.values())
        return {f: w / total for f, w in capped.items()}

    def sequence_weights(self, family: str) -> list[float]:
        members = self.members[family]
        known = [self.losses[i] for i in members if self.losses[i] is not None]
        unseen = max(known) if known else 1.0
        floor = 1e-3 * unseen if unseen > 0 else 1e-3  # a learnt sample is revisited rarely, never never
        return [
            max(self.losses[i] if self.losses[i] is not None else unseen, floor) ** self.loss_power for i in members
        ]

    def probabilities(self) -> list[float]:
        """The chance that one draw picks each sequence."""
        out = [0.0] * self.n
        for f, share in self.family_weights().items():
            weights = self.sequence_weights(f)
            total = sum(weights)
            for i, w in zip(self.members[f], weights, strict=True):
                out[i] = share * w / total
        return out

    # -- the draws
    def next_batch(self, n: int) -> list[int]:
        """`n` distinct sequence indices (all of them, in a drawn order, when n >= the number of sequences)."""
        rng = random.Random(f"{self.seed}/{self.batches}")
        self.batches += 1
        shares = self.family_weights()
        weights = {f: dict(zip(self.members[f], self.sequence_weights(f), strict=True)) for f in self.members}
        out: list[int] = []
        while len(out) < min(n, self.n):
            open_families = [f for f in weights if weights[f]]
            family = rng.choices(open_families, [shares[f] for f in open_families])[0]
            pool = weights[family]
            index = rng.choices(list(pool), list(pool.values()))[0]
            del pool[index]
            out.append(index)
        return out

    # -- checkpointing (plain JSON types)
    def state_dict(self) -> dict:
        return {
            "n": self.n,
            "seed": self.seed,
            "batches": self.batches,
            "losses": list(self.losses),
            "pass_rates": dict(self.pass_rates),
            "families": list(self.families),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("n") != self.n or state.get("families") != self.families:
            raise ValueError(
                f"sampler state is for {state.get('n')} sequences of other families; the data has {self.n} "
                "(the dataset changed since the checkpoint)"
            )
        self.seed, self.batches = state["seed"], state["batches"]
        self.losses = list(state["losses"])
        self.pass_rates = dict(state["pass_rates"])
