"""Where resampled attempts start: sequential rollback and parallel initialization (`.venv/bin/pytest
tests/roll/test_rollback.py`). Pure Python: no torch, Ray or Docker.

A reference trajectory of K chunks gives K start points: start k = the state before chunk k, the reference's
chunks 0..k-1 given, the policy sampling k..K-1 (roll/rollout/resample.py runs such an attempt). Each schedule
says where the next attempts start (`next_starts`) and learns from the outcomes fed back to it (`record`).

**Sequential rollback** (IPA): start at the last chunk; once the success rate there (over the last `group`
outcomes) reaches `threshold`, move the start one chunk earlier. Where the rate at a start is `drop` or more
below the rate the later start was left at, the chunk the rollback crossed (chunk k itself, now the policy's)
is **critical**: the start stays there until the rate reaches `threshold` or `critical_budget` attempts are
spent, then goes on back. Any other start that does not reach `threshold` stays for at most `budget`
attempts. After start 0 the schedule is done and keeps answering 0 (whole attempts).

**Parallel initialization**: every start at once, drawn with weights that favour the critical and the
unlearned starts (a start is learned once its rate reaches `threshold`).
"""

from __future__ import annotations

import random
from collections import deque
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RollbackConfig(BaseModel):
    """How start points are chosen; one config for both modes."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["sequential", "parallel"] = Field("sequential", description="one start at a time, or all at once")
    group: int = Field(4, ge=1, description="outcomes a success rate is measured over (the last ones at a start)")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="success rate at which a start counts as learned")
    drop: float = Field(0.5, gt=0.0, le=1.0, description="rate fall from the later start that marks a chunk critical")
    budget: int = Field(16, ge=1, description="sequential: attempts at an ordinary start before moving on unlearned")
    critical_budget: int = Field(32, ge=1, description="sequential: attempts at a critical start before moving on")
    learned_weight: float = Field(1.0, ge=0.0, description="parallel: draw weight of a learned start")
    unlearned_weight: float = Field(2.0, ge=0.0, description="parallel: of an unmeasured or unlearned start")
    critical_weight: float = Field(4.0, ge=0.0, description="parallel: of a critical start not yet learned")
    seed: int = Field(0, description="parallel: seed of the draws")

    @model_validator(mode="after")
    def _budgets_hold_a_group(self) -> RollbackConfig:
        if self.budget < self.group or self.critical_budget < self.group:
            raise ValueError(f"budget and critical_budget must be at least group ({self.group}): a rate needs a group")
        if self.learned_weight + self.unlearned_weight + self.critical_weight <= 0:
            raise ValueError("the parallel draw weights must not all be 0")
        return self


class StartStats(BaseModel):
    """What the schedule knows about one start point."""

    model_config = ConfigDict(extra="forbid")
    start: int
    attempts: int = 0
    resolved: int = 0
    rate: float | None = None  # over the last `group` outcomes, once there are that many
    critical: bool = False
    learned: bool = False  # the rate reached the threshold (sequential: when the start was left)
    visited: bool = False  # sequential: the start was the current one at some time


class _Start:
    def __init__(self, start: int, group: int):
        self.start = start
        self.attempts = self.resolved = 0
        self.window: deque[bool] = deque(maxlen=group)
        self.critical = self.learned = self.visited = False

    def add(self, resolved: bool) -> None:
        self.attempts += 1
        self.resolved += int(resolved)
        self.window.append(bool(resolved))

    def rate(self) -> float | None:
        if len(self.window) < (self.window.maxlen or 1):
            return None
        return sum(self.window) / len(self.window)

    def stats(self) -> StartStats:
        return StartStats(start=self.start, attempts=self.attempts, resolved=self.resolved, rate=self.rate(),
                          critical=self.critical, learned=self.learned, visited=self.visited)  # fmt: skip


class _Schedule:
    """What both modes share: one record per start, outcomes in, stats out."""

    def __init__(self, n_chunks: int, config: RollbackConfig | None = None):
        if n_chunks < 1:
            raise ValueError(f"a reference needs at least one chunk to start from, got {n_chunks}")
        self.config = config or RollbackConfig()
        self.n_chunks = n_chunks
        self.starts = [_Start(k, self.config.group) for k in range(n_chunks)]
        self.events: list[str] = []  # what the schedule decided, in order, one line each

    def _check(self, start: int) -> _Start:
        if not 0 <= start < self.n_chunks:
            raise ValueError(f"start {start} is not a chunk of this reference (0..{self.n_chunks - 1})")
        return self.starts[start]

    @property
    def critical(self) -> list[int]:
        return [s.start for s in self.starts if s.critical]

    def report(self) -> list[StartStats]:
        """Every start, last chunk first (the order sequential rollback visits them)."""
        return [s.stats() for s in reversed(self.starts)]


class SequentialRollback(_Schedule):
    """One start at a time, from the last chunk back to 0 (see the module docstring)."""

    def __init__(self, n_chunks: int, config: RollbackConfig | None = None):
        super().__init__(n_chunks, config)
        self.current = n_chunks - 1
        self.arrived_at = 0  # attempts the current start had when the schedule got there
        self.left_rate: dict[int, float] = {}  # the rate each start had when the schedule left it
        self.done = False
        self.starts[self.current].visited = True

    def next_starts(self, n: int = 1) -> list[int]:
        """Where the next `n` attempts start: all at the current start (0 once done)."""
        return [0 if self.done else self.current] * n

    def record(self, start: int, resolved: bool) -> None:
        """One outcome of an attempt that started at `start`; only the current start's outcomes move the
        schedule (a late outcome of a start already left is counted in its stats and changes nothing)."""
        here = self._check(start)
        here.add(resolved)
        if self.done or start != self.current or here.attempts - self.arrived_at < self.config.group:
            return
        rate = here.rate()
        assert rate is not None  # a group of outcomes arrived since the schedule got here
        later = self.left_rate.get(start + 1)
        if later is not None and not here.critical and later - rate >= self.config.drop:
            here.critical = True
            self.events.append(
                f"chunk {start} critical: rate {rate:.2f} at start {start} after {later:.2f} at {start + 1}"
            )
        spent = here.attempts - self.arrived_at
        if rate >= self.config.threshold:
            here.learned = True
            self._leave(rate, f"start {start} learned (rate {rate:.2f} after {spent} attempts)")
        elif spent >= (self.config.critical_budget if here.critical else self.config.budget):
            self._leave(rate, f"start {start} left unlearned (rate {rate:.2f}, budget of {spent} attempts spent)")

    def _leave(self, rate: float, event: str) -> None:
        self.left_rate[self.current] = rate
        self.events.append(event)
        if self.current == 0:
            self.done = True
            self.events.append("rollback done: attempts start at chunk 0")
            return
        self.current -= 1
        self.arrived_at = self.starts[self.current].attempts
        self.starts[self.current].visited = True


class ParallelInit(_Schedule):
    """Every start at once, drawn by weight: critical and unlearned starts more often than learned ones.

    A start is critical when its rate is `drop` or more below the rate of the start after it (both measured
    over a full group), learned when its rate reaches `threshold`; unmeasured starts count as unlearned.
    """

    def __init__(self, n_chunks: int, config: RollbackConfig | None = None):
        super().__init__(n_chunks, config)
        self.rng = random.Random(self.config.seed)

    @property
    def done(self) -> bool:
        return all(s.learned for s in self.starts)

    def weights(self) -> list[float]:
        """The draw weight of each start, start 0 first."""
        c = self.config
        return [
            c.learned_weight if s.learned else c.critical_weight if s.critical else c.unlearned_weight
            for s in self.starts
        ]

    def next_starts(self, n: int = 1) -> list[int]:
        weights = self.weights()
        if sum(weights) <= 0:  # e.g. learned_weight 0 once everything is learned: whole attempts
            return [0] * n
        return self.rng.choices(range(self.n_chunks), weights=weights, k=n)

    def record(self, start: int, resolved: bool) -> None:
        here = self._check(start)
        here.add(resolved)
        for k in (start - 1, start):  # the pairs (k, k+1) whose rates this outcome changed
            if 0 <= k < self.n_chunks - 1:
                self._judge(k)
        rate = here.rate()
        if rate is not None and here.learned != (rate >= self.config.threshold):
            here.learned = rate >= self.config.threshold
            self.events.append(f"start {start} {'learned' if here.learned else 'unlearned again'} (rate {rate:.2f})")

    def _judge(self, k: int) -> None:
        rate, later = self.starts[k].rate(), self.starts[k + 1].rate()
        if rate is None or later is None or self.starts[k].critical:
            return
        if later - rate >= self.config.drop:
            self.starts[k].critical = True
            self.events.append(f"chunk {k} critical: rate {rate:.2f} at start {k} after {later:.2f} at {k + 1}")


def make_schedule(n_chunks: int, config: RollbackConfig | None = None) -> SequentialRollback | ParallelInit:
    """The schedule of `config.mode` for a reference of `n_chunks` chunks."""
    config = config or RollbackConfig()
    return SequentialRollback(n_chunks, config) if config.mode == "sequential" else ParallelInit(n_chunks, config)


__all__ = ["ParallelInit", "RollbackConfig", "SequentialRollback", "StartStats", "make_schedule"]
