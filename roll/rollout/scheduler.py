"""Asynchronous rollout with bounded per-chunk staleness: `train.mode=async` of `roll train`
(`.venv/bin/pytest tests/roll/test_async.py`).

Attempts run on while the trainer trains. A group (one task's `group_size` attempts: their mean reward is the
baseline, so a group is trained whole) is launched as soon as the caps below allow, and the trainer's next batch
is the `batch_groups` oldest groups that finished; a straggler does not hold the batch up, it runs on and joins a
later batch. Every chunk carries the policy version that sampled it (the gateway records it from the engine's
reply), so an attempt in flight across a weight update has chunks of both versions.

The bound. A chunk sampled by version c and trained at version v has staleness v − c; `max_staleness` (η)
bounds it for every chunk, by two rules:
- train gate: before the update v → v+1, every group left behind must still be within the bound at v+1, so a
  group whose oldest chunk has c < v + 1 − η joins this batch; the trainer waits for it if it is still running
  (an in-flight group counts with the version it was launched at, a lower bound of its chunks' versions);
  while an update is under way a group launched samples at the old version and is trained at the new one at
  the earliest, so with η < 1 launches wait for the update;
- launch cap: at most (⌊η⌋ + 1) batches of groups are launched and not yet trained, and at most `max_in_flight`
  attempts run at once; so a slow trainer throttles launches instead of piling up stale work.
Nothing is dropped: a stale chunk is trained, importance-corrected against its own recorded logprobs. η = 0 is
the synchronous schedule (every batch waits for everything launched).

Stragglers (`straggler_budget_s`, None = off). A group still running that long after its launch is deferred: the
train gate no longer waits for it, it no longer counts against the launch cap (its attempts still count as in
flight), and the last batches go on without it. It keeps running and is trained in the first batch after it
finishes (the gate takes it then: its chunks are older than the bound allows), importance-corrected by its
recorded versions like any stale chunk; so its staleness may exceed η, the price of not waiting. Launched,
trained and lost counts are kept as before: a deferred group is never dropped. `stragglers_deferred` in a batch's
metrics: the groups it went without; `deferred_groups` in `counts()`: every group deferred so far.

Pure Python and threads: `run(attempt)` does the work (a sandbox, the agent, the tests) and returns its
Trajectory; an exception from it (the infrastructure failed) is raised by the next `next_batch`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from rock.contracts import Trajectory


class AttemptLike(Protocol):
    trajectory_id: str
    oracle: bool  # played by a reference policy (the oracle teacher): its chunks have no staleness


@dataclass
class _Group:
    index: int  # launch order
    attempts: Sequence[AttemptLike]
    launch_version: int
    launched_at: float
    finished: dict[str, Trajectory] = field(default_factory=dict)
    deferred: bool = False  # ran past the straggler budget: no batch waits for it

    @property
    def done(self) -> bool:
        return len(self.finished) == len(self.attempts)

    def policy_versions(self) -> list[int]:
        """The versions of the finished policy attempts' chunks."""
        ref = {a.trajectory_id for a in self.attempts if a.oracle}
        return [c.policy_version for t in self.finished.values() if t.trajectory_id not in ref for c in t.chunks
                if c.policy_version is not None and c.response_token_ids]  # fmt: skip

    def min_version(self) -> int | None:
        """A lower bound of the version of its oldest chunk (None: no policy chunk, nothing can be stale)."""
        if not self.done:
            return self.launch_version
        return min(self.policy_versions(), default=None)


@dataclass
class Batch:
    """The groups one update trains on, and what the schedule looked like when it was formed."""

    trajectories: list[Trajectory]
    reference: list[str]  # trajectory ids of oracle attempts
    version: int  # the policy version the update starts from
    waited_s: float  # how long the trainer waited for it (idle)
    in_flight: int  # attempts still running when it was formed
    forced: int  # groups in it because leaving them would break the bound
    deferred: int = 0  # groups still running past the straggler budget that it went without

    def metrics(self) -> dict:
        """Staleness (version − the chunk's sampling version) over its policy chunks, versions per trajectory."""
        ref = set(self.reference)
        policy = [t for t in self.trajectories if t.trajectory_id not in ref]
        stale = [self.version - c.policy_version for t in policy for c in t.chunks
                 if c.policy_version is not None and c.response_token_ids]  # fmt: skip
        per_traj = [len({c.policy_version for c in t.chunks if c.policy_version is not None}) for t in policy]
        return {
            "staleness_max": max(stale, default=0),
            "staleness_mean": round(sum(stale) / len(stale), 3) if stale else 0.0,
            "versions_per_trajectory_mean": round(sum(per_traj) / len(per_traj), 3) if per_traj else 0.0,
            "versions_per_trajectory_max": max(per_traj, default=0),
            "in_flight": self.in_flight,
            "trainer_wait_s": round(self.waited_s, 2),
            "forced_groups": self.forced,
            "stragglers_deferred": self.deferred,
            "batch_trajectories": len(self.trajectories),
        }


class AsyncRollout:
    """Runs `groups` (lists of attempts, in launch order) with `run`, `max_in_flight` attempts at a time, and
    hands them out as batches of `batch_groups` finished groups under the staleness bound (module docstring).
    The caller sets the version after each weight update (`set_version`) and calls `close` in `finally`.
    `straggler_budget_s`: seconds after which a running group is deferred instead of waited for (None: never)."""

    def __init__(self, groups: Sequence[Sequence[AttemptLike]], run: Callable[[AttemptLike], Trajectory], *,
                 batch_groups: int, max_staleness: float, max_in_flight: int, version: int = 0,
                 clock: Callable[[], float] = time.monotonic, straggler_budget_s: float | None = None):  # fmt: skip
        if batch_groups < 1 or max_staleness < 0:
            raise ValueError(f"need batch_groups >= 1 and max_staleness >= 0, got {batch_groups}, {max_staleness}")
        if straggler_budget_s is not None and straggler_budget_s <= 0:
            raise ValueError(f"straggler_budget_s must be > 0 or None, got {straggler_budget_s}")
        if groups and max(len(g) for g in groups) > max_in_flight:
            raise ValueError(f"max_in_flight {max_in_flight} is less than a group ({max(len(g) for g in groups)})")
        self._todo = [list(g) for g in groups]
        self._run, self._clock = run, clock
        self.batch_groups, self.max_staleness, self.max_in_flight = batch_groups, max_staleness, max_in_flight
        self.straggler_budget_s = straggler_budget_s
        self.deferred_groups = 0  # groups deferred so far
        self.version = version  # the policy version the engines serve now
        self._launched: list[_Group] = []
        self._unconsumed: list[_Group] = []
        self._trained: set[str] = set()
        self._in_flight = 0
        self._error: BaseException | None = None
        self._closed = False
        self._updating = False  # a batch was handed out and its update has not been reported (set_version)
        self._cond = threading.Condition()
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="rollout")
        self.held_launches = 0  # times a launch waited for the trainer (the cap), not for a free slot
        self.peak_unconsumed = 0  # most groups launched and not yet trained at once

    # -- launching
    @property
    def unconsumed_cap(self) -> int:
        """Groups that may be launched and not yet trained: a batch per version the bound allows."""
        return (math.floor(self.max_staleness) + 1) * self.batch_groups

    def start(self) -> None:
        with self._cond:
            self._fill()

    def _defer(self) -> float | None:  # under the lock
        """Mark the groups past the straggler budget; the seconds until the next one would be (None: none)."""
        if self.straggler_budget_s is None:
            return None
        now, soonest = self._clock(), None
        for g in self._unconsumed:
            if g.done or g.deferred:
                continue
            left = g.launched_at + self.straggler_budget_s - now
            if left <= 0:
                g.deferred = True
                self.deferred_groups += 1
            else:
                soonest = left if soonest is None else min(soonest, left)
        return soonest

    def _waited_for(self) -> list[_Group]:  # under the lock
        """The unconsumed groups a batch may wait for: all but the deferred ones still running."""
        return [g for g in self._unconsumed if g.done or not g.deferred]

    def _fill(self) -> None:  # under the lock
        self._defer()
        while len(self._launched) < len(self._todo) and not self._closed and self._error is None:
            attempts = self._todo[len(self._launched)]
            if self._updating and self.max_staleness < 1:
                # launched now, at the old version, and trained at the new one at the earliest: one too stale
                return
            if self._in_flight + len(attempts) > self.max_in_flight:
                return
            if len(self._waited_for()) >= self.unconsumed_cap:
                self.held_launches += 1
                return
            group = _Group(len(self._launched), attempts, self.version, self._clock())
            self._launched.append(group)
            self._unconsumed.append(group)
            self.peak_unconsumed = max(self.peak_unconsumed, len(self._unconsumed))
            self._in_flight += len(attempts)
            for a in attempts:
                self._pool.submit(self._one, group, a)

    def _one(self, group: _Group, attempt: AttemptLike) -> None:
        try:
            traj = self._run(attempt)
        except BaseException as e:  # noqa: BLE001 - handed to the trainer's thread, raised there
            with self._cond:
                self._error = self._error or e
                self._in_flight -= 1
                self._cond.notify_all()
            return
        with self._cond:
            if traj.trajectory_id != attempt.trajectory_id:
                self._error = self._error or RuntimeError(
                    f"attempt {attempt.trajectory_id} returned trajectory {traj.trajectory_id}")  # fmt: skip
            group.finished[attempt.trajectory_id] = traj
            self._in_flight -= 1
            self._fill()
            self._cond.notify_all()

    def set_version(self, version: int) -> None:
        """The engines serve `version` from now on: call it after every update, with the old version when the
        update was skipped, so that launches held back during the update resume."""
        with self._cond:
            self.version = version
            self._updating = False
            self._fill()
            self._cond.notify_all()

    # -- the trainer's side
    @property
    def finished(self) -> bool:
        """Every group was launched and trained."""
        with self._cond:
            return len(self._launched) == len(self._todo) and not self._unconsumed

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    def _required(self) -> list[_Group]:  # under the lock
        """Groups that would break the bound if left for after the next update."""
        limit = self.version + 1 - self.max_staleness
        return [g for g in self._waited_for() if (m := g.min_version()) is not None and m < limit]

    def next_batch(self, timeout: float | None = None) -> Batch | None:
        """Block until a batch may be trained; None when every group has been trained. Raises what an attempt
        raised, and TimeoutError after `timeout` seconds."""
        start = self._clock()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                all_launched = len(self._launched) == len(self._todo)
                if all_launched and not self._unconsumed:
                    return None
                before = self.deferred_groups
                next_deferral = self._defer()
                if self.deferred_groups > before:
                    self._fill()  # a group just deferred frees its place under the launch cap
                required = self._required()
                ready = [g for g in self._unconsumed if g.done]
                waited = self._waited_for()
                enough = len(ready) >= self.batch_groups or (all_launched and bool(ready) and len(ready) == len(waited))
                if enough and all(g.done for g in required):
                    return self._take(required, ready, self._clock() - start)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"no batch in {timeout}s ({self._in_flight} attempts in flight)")
                if next_deferral is not None:  # wake up when the next running group passes the budget
                    left = next_deferral if left is None else min(left, next_deferral)
                self._cond.wait(left)

    def _take(self, required: list[_Group], ready: list[_Group], waited: float) -> Batch:  # under the lock
        chosen = list(required)
        for g in ready:  # oldest first
            if len(chosen) >= self.batch_groups:
                break
            if g not in chosen:
                chosen.append(g)
        chosen.sort(key=lambda g: g.index)
        trajectories, reference = [], []
        for g in chosen:
            self._unconsumed.remove(g)
            for a in g.attempts:
                if a.trajectory_id in self._trained:
                    raise RuntimeError(f"trajectory {a.trajectory_id} was handed to the trainer twice")
                self._trained.add(a.trajectory_id)
                trajectories.append(g.finished[a.trajectory_id])
                if a.oracle:
                    reference.append(a.trajectory_id)
        self._updating = True
        self._fill()  # the cap counts untrained groups: taking some frees launches
        return Batch(trajectories, reference, self.version, waited, self._in_flight,
                     forced=sum(g not in ready[: self.batch_groups] for g in chosen),
                     deferred=sum(g.deferred and not g.done for g in self._unconsumed))  # fmt: skip

    def counts(self) -> dict:
        """Attempts launched, trained, and lost (launched, finished and never trained: must stay 0 at the end)."""
        with self._cond:
            launched = sum(len(g.attempts) for g in self._launched)
            return {"launched": launched, "trained": len(self._trained), "in_flight": self._in_flight,
                    "untrained_finished": sum(len(g.finished) for g in self._unconsumed),
                    "held_launches": self.held_launches, "peak_unconsumed_groups": self.peak_unconsumed,
                    "deferred_groups": self.deferred_groups}  # fmt: skip

    def close(self) -> None:
        """No more launches; queued attempts are cancelled, running ones end with their sandboxes."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._pool.shutdown(wait=False, cancel_futures=True)
