"""Which sequences each optimizer step trains on, and where the data stands (checkpointed with the model).

`fit(..., sampler=S)` accepts any object with `next_batch(n) -> list[int]` (indices into the sequences),
`state_dict() -> dict` and `load_state_dict(dict)`; if it also has `update(indices, losses)` the trainer calls
it after every step with each sequence's mean token loss (phase 2's adaptive selection feeds on that).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Sampler(Protocol):
    def next_batch(self, n: int) -> list[int]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class EpochSampler:
    """Shuffled epochs: every sequence once per epoch, a fresh seeded order each epoch, batches that run
    across the epoch boundary rather than dropping or repeating the tail (the new epoch puts the sequences the
    batch already holds last, so no batch holds one twice unless it is larger than the data). State: (epoch,
    cursor, and the order's head when a batch crossed the boundary)."""

    def __init__(self, n: int, seed: int = 0):
        if n < 1:
            raise ValueError("no sequences to sample from")
        self.n, self.seed, self.epoch, self.cursor = n, seed, 0, 0
        self.held: list[int] = []
        self._order = self._permutation()

    def _permutation(self, held: list[int] = ()) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        self.held = list(dict.fromkeys(held))
        skip = set(self.held)
        return [i for i in order if i not in skip] + self.held

    def next_batch(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            if self.cursor == self.n:
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._permutation(out)
            take = min(n - len(out), self.n - self.cursor)
            out += self._order[self.cursor : self.cursor + take]
            self.cursor += take
        return out

    def state_dict(self) -> dict:
        return {"n": self.n, "seed": self.seed, "epoch": self.epoch, "cursor": self.cursor, "held": list(self.held)}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise ValueError(f"sampler state is for {state['n']} sequences, the data has {self.n}")
        self.seed, self.epoch, self.cursor = state["seed"], state["epoch"], state["cursor"]
        self._order = self._permutation(state.get("held", []))
