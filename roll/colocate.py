"""Colocated mode: rollout, train and weight sync take turns on shared devices, `train.mode=colocated` of `roll train`
(`.venv/bin/pytest tests/roll/test_colocated.py`; busy fraction: `nice -n 19 .venv/bin/python bench/bench_colocated.py`).

`Colocation` is one state machine per run. Its phases go idle -> rollout -> train -> sync -> (idle ->) rollout ...,
train -> rollout (or idle) when an update was skipped; anything else is refused. Each phase needs its resources in a
given state, and entering it first moves them there (memory-releasing steps first), then reads their real state
back and refuses the phase if it differs (e.g. train with the engines awake on CUDA):

    device  phase     engines (vLLM)                  trainer (DeepSpeed)
    cuda    rollout   awake                           offloaded (offload_states: params, grads, optimizer to host)
            train     asleep (sleep level 1)          onloaded
            sync      weights (woken for weights)     onloaded
    cpu     rollout   awake                           onloaded (host RAM is where it lives)
            train     paused (AsyncLLM pause)         onloaded
            sync      paused                          onloaded

The CUDA rows are tested under the `gpu` marker only; the CPU rows run here, so the machine is the same.

Time: everything between two `enter` calls is charged to the phase that was current, the resource steps inside
`enter` to `switch`; `lap()` returns the seconds per phase since the last lap, idle (idle phase + switches) and the
busy fraction of each resource: the shared device (rollout + train + sync) / wall, the engines (rollout + sync) /
wall, the trainer (train + sync) / wall; plus the shared fraction over the run so far.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal, Protocol

from roll.errors import RollError

Phase = Literal["idle", "rollout", "train", "sync"]
EngineState = Literal["awake", "paused", "asleep", "weights"]
TrainerState = Literal["onloaded", "offloaded"]

NEXT: dict[str, tuple[str, ...]] = {
    "idle": ("rollout",),
    "rollout": ("train",),
    "train": ("sync", "rollout", "idle"),  # rollout/idle: the update was skipped, nothing to sync
    "sync": ("rollout", "idle"),
}
REQUIRED: dict[str, dict[str, tuple[EngineState, TrainerState]]] = {
    "cuda": {"rollout": ("awake", "offloaded"), "train": ("asleep", "onloaded"), "sync": ("weights", "onloaded")},
    "cpu": {"rollout": ("awake", "onloaded"), "train": ("paused", "onloaded"), "sync": ("paused", "onloaded")},
}
# (from, to) -> the call that makes it; a pair not here has no way and is refused.
ENGINE_STEPS: dict[tuple[str, str], tuple[str, tuple]] = {
    ("awake", "paused"): ("pause", ()),
    ("paused", "awake"): ("resume", ()),
    ("awake", "asleep"): ("sleep", ()),
    ("paused", "asleep"): ("sleep", ()),
    ("asleep", "weights"): ("wake_up", (["weights"],)),
    ("weights", "awake"): ("wake_up", (["kv_cache"],)),
    ("asleep", "awake"): ("wake_up", (None,)),
}
TRAINER_STEPS: dict[tuple[str, str], tuple[str, tuple]] = {
    ("onloaded", "offloaded"): ("offload", ()),
    ("offloaded", "onloaded"): ("onload", ()),
}
# Device memory each state holds, to order the steps: what frees memory goes before what takes it.
_MEMORY = {"asleep": 0, "weights": 1, "paused": 2, "awake": 2, "offloaded": 0, "onloaded": 1}
BUCKETS = ("rollout", "train", "sync", "switch", "idle")


class ColocateError(RollError):
    """An illegal phase transition, or a resource that is not in the state its phase needs."""


class Engines(Protocol):
    """The inference engines as the machine moves them (ActorEngines for the run's inference worker)."""

    def state(self) -> EngineState: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def sleep(self) -> None: ...
    def wake_up(self, tags: list[str] | None) -> None: ...


class TrainerSide(Protocol):
    """The trainer as the machine moves it (ActorTrainer for the run's trainer worker)."""

    def state(self) -> TrainerState: ...
    def offload(self) -> None: ...
    def onload(self) -> None: ...


class Colocation:
    """The colocated state machine and its timers (module docstring)."""

    def __init__(self, device: str, engines: Engines, trainer: TrainerSide,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        if device not in REQUIRED:
            raise ColocateError(f"colocated mode on device {device!r}: known devices {sorted(REQUIRED)}")
        self.device, self.engines, self.trainer, self._clock = device, engines, trainer, clock
        self.phase: Phase = "idle"
        self._mark = clock()
        self._lap = dict.fromkeys(BUCKETS, 0.0)
        self._run = dict.fromkeys(BUCKETS, 0.0)

    def enter(self, phase: Phase) -> None:
        """Move to `phase`: its resources into the states it needs, checked; ColocateError if it may not follow."""
        if phase not in NEXT.get(self.phase, ()):
            raise ColocateError(f"illegal transition {self.phase} -> {phase}: after {self.phase} comes "
                                f"{' or '.join(NEXT[self.phase])}")  # fmt: skip
        self._charge(self.phase)
        try:
            if phase != "idle":
                self._move(*REQUIRED[self.device][phase])
                self._check(phase)
        finally:
            self._charge("switch")
        self.phase = phase

    def require(self, phase: Phase) -> None:
        """Refuse work of `phase` (e.g. a trainer step) outside it."""
        if self.phase != phase:
            raise ColocateError(f"{phase} work refused: the colocated phase is {self.phase}")

    def _move(self, engines: EngineState, trainer: TrainerState) -> None:
        steps = []
        for side, want, table in ((self.engines, engines, ENGINE_STEPS), (self.trainer, trainer, TRAINER_STEPS)):
            have = side.state()
            if have == want:
                continue
            if (have, want) not in table:
                raise ColocateError(f"no way to move {type(side).__name__} from {have} to {want}")
            name, args = table[have, want]
            steps.append((_MEMORY[want] - _MEMORY[have], getattr(side, name), args))
        for _, call, args in sorted(steps, key=lambda s: s[0]):  # releases (negative) first
            call(*args)

    def _check(self, phase: Phase) -> None:
        want_e, want_t = REQUIRED[self.device][phase]
        have_e, have_t = self.engines.state(), self.trainer.state()
        if have_e != want_e:
            raise ColocateError(f"{phase} refused on {self.device}: the engines are {have_e}, {phase} needs them "
                                f"{want_e}")  # fmt: skip
        if have_t != want_t:
            raise ColocateError(f"{phase} refused on {self.device}: the trainer is {have_t}, {phase} needs it "
                                f"{want_t}")  # fmt: skip

    def _charge(self, bucket: str) -> None:
        now = self._clock()
        for acc in (self._lap, self._run):
            acc[bucket] += now - self._mark
        self._mark = now

    def lap(self) -> dict:
        """Seconds per phase since the last lap and the busy fractions (module docstring); starts a new lap."""
        self._charge(self.phase)
        out = {f"{k}_s": round(v, 3) for k, v in self._lap.items()} | _fractions(self._lap)
        out["busy_frac_shared_run"] = _fractions(self._run)["busy_frac_shared"]
        self._lap = dict.fromkeys(BUCKETS, 0.0)
        return out

    def totals(self) -> dict:
        """Seconds per phase and busy fractions over the whole run so far."""
        self._charge(self.phase)
        return {f"{k}_s": round(v, 3) for k, v in self._run.items()} | _fractions(self._run)


def _fractions(acc: dict[str, float]) -> dict:
    wall = sum(acc.values())
    frac = (lambda x: round(x / wall, 4)) if wall > 0 else (lambda x: 0.0)  # noqa: E731
    return {
        "wall_s": round(wall, 3),
        "idle_s": round(acc["idle"] + acc["switch"], 3),
        "busy_frac_shared": frac(acc["rollout"] + acc["train"] + acc["sync"]),
        "busy_frac_engines": frac(acc["rollout"] + acc["sync"]),
        "busy_frac_trainer": frac(acc["train"] + acc["sync"]),
    }


# -- the run's Ray actors. These functions run inside the actor (Ray's `__ray_call__`), on the worker object
# itself: roll/workers/ stays free of colocation code.


def _engine_call(server, method: str, *args, timeout: float = 600, **kwargs):
    """AsyncLLM.<method>(...) on the inference worker's event loop (roll.workers.inference.InferenceServer)."""
    handle = server._handle
    llm = getattr(handle.service.engine, "llm", None)
    if llm is None:
        raise ColocateError(
            f"colocated mode needs the vllm engine, the inference worker runs {handle.service.engine_kind}"
        )
    return asyncio.run_coroutine_threadsafe(getattr(llm, method)(*args, **kwargs), handle._loop).result(timeout)


def _engine_state(server) -> EngineState:
    # vLLM's is_sleeping() is also true when only paused, and says nothing of which tags are awake: the level-1
    # sleep is what our own sleep/wake calls left (`colocated_sleep`), once vLLM says the engine is not serving.
    if not _engine_call(server, "is_sleeping"):
        return "awake"
    slept = getattr(server, "colocated_sleep", None)
    return slept or ("paused" if _engine_call(server, "is_paused") else "asleep")


def _engine_sleep(server) -> None:
    _engine_call(server, "sleep", 1)
    server.colocated_sleep = "asleep"


def _engine_wake_up(server, tags: list[str] | None) -> None:
    _engine_call(server, "wake_up", tags)
    server.colocated_sleep = "weights" if tags == ["weights"] else None


def _trainer_state(trainer) -> TrainerState:
    if not str(trainer.engine.device).startswith("cuda"):
        return "onloaded"  # a CPU trainer lives in host RAM
    # ZeRO-1/2 offload_states moves the low-precision params too: where a parameter is tells the state.
    return "offloaded" if next(trainer.model.parameters()).device.type == "cpu" else "onloaded"


def _trainer_offload(trainer) -> None:
    trainer.engine.offload_states()


def _trainer_onload(trainer) -> None:
    trainer.engine.reload_states()


def _ray_get(ref):
    import ray

    return ray.get(ref)


class ActorEngines:
    """Engines over the run's inference worker actor. Pause aborts what is still generating: when the rollout phase
    ends every attempt has finished, so a request left is an orphan (its agent's sandbox is gone)."""

    def __init__(self, actor, get: Callable | None = None):
        self.actor, self.get = actor, get or _ray_get  # the driver's get names a dead worker (WorkerDied)

    def _call(self, fn, *args, **kwargs):
        return self.get(self.actor.__ray_call__.remote(fn, *args, **kwargs))

    def state(self) -> EngineState:
        return self._call(_engine_state)

    def pause(self) -> None:
        # keep the prefix cache: its KV is the current weights' until the sync, which clears it
        self._call(_engine_call, "pause_generation", mode="abort", clear_cache=False)

    def resume(self) -> None:
        self._call(_engine_call, "resume_generation")

    def sleep(self) -> None:
        self._call(_engine_sleep)

    def wake_up(self, tags: list[str] | None) -> None:
        self._call(_engine_wake_up, tags)


class ActorTrainer:
    """TrainerSide over the run's trainer actor (roll.workers.trainer.Trainer): DeepSpeed offload_states /
    reload_states on CUDA; on CPU it is never moved (REQUIRED) and always reads onloaded."""

    def __init__(self, actor, get: Callable | None = None):
        self.actor, self.get = actor, get or _ray_get

    def _call(self, fn):
        return self.get(self.actor.__ray_call__.remote(fn))

    def state(self) -> TrainerState:
        return self._call(_trainer_state)

    def offload(self) -> None:
        self._call(_trainer_offload)

    def onload(self) -> None:
        self._call(_trainer_onload)
