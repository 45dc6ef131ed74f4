"""The RL trainer as `train.workers` DeepSpeed ranks, one Ray actor each (`.venv/bin/pytest
tests/roll/test_trainer_ranks.py`).

The driver holds a `TrainerGroup`: N actors of roll.workers.trainer.Trainer that form one torch.distributed group
(gloo on cpu, NCCL on cuda). They meet at a TCP store the driver serves on a port the OS picks as it binds
(no port picked free and then lost to another process, as happens on a busy machine); one rank needs no store
(roll.trainer.trainer.init_distributed's file rendezvous). `call` runs a method on every rank and returns rank 0's
answer; the weights out (`first_ref`, `first`) come from rank 0, and under ZeRO-3 (train.zero_stage=3, the parameters
partitioned) every rank takes part in gathering them. A rank that dies is a WorkerDied naming it ("trainer rank 1 of 2"), found by waiting on all ranks at once:
its peers, stuck in a collective with it, are never what the driver waits on. On cpu the ranks split the trainer's
torch threads (`train.threads`, default all cores) between them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta

from roll.config import TrainConfig
from roll.workers.trainer import GROUP_TIMEOUT_S, Trainer

# How long the driver waits for the other ranks' outcome once one failed: a collective broken by a rank's death
# fails on its peers (connection closed) before Ray reports the dead actor, which is the one to name.
_SETTLE_S = 30.0


def rank_config(cfg: TrainConfig, device: str) -> TrainConfig:
    """A rank's train config: on cpu the group's torch threads split between the ranks (at least 1 each)."""
    if cfg.workers == 1 or device != "cpu":
        return cfg
    return cfg.model_copy(update={"threads": max(1, (cfg.threads or os.cpu_count() or 1) // cfg.workers)})


class TrainerGroup:
    """N trainer ranks as Ray actors (started by the constructor; `ready` waits for them). `get(name, ref)` is
    the driver's ray.get that turns a worker's death into a WorkerDied naming it."""

    def __init__(self, model_dir: str, cfg: TrainConfig, device: str, options: dict, get: Callable):
        import ray
        import torch

        n, self.get, self.store = cfg.workers, get, None
        self.zero3 = cfg.zero_stage == 3 and n > 1
        self._behind: dict = {}  # ref -> rank name: the other ranks' part in a ZeRO-3 `first_ref`, checked later
        rendezvous = None
        if n > 1:
            host = ray.util.get_node_ip_address()
            self.store = torch.distributed.TCPStore(host, 0, None, True, timedelta(seconds=GROUP_TIMEOUT_S),
                                                    wait_for_workers=False)  # fmt: skip
            rendezvous = (host, self.store.port)
        remote = ray.remote(Trainer).options(**options)
        rank_cfg = rank_config(cfg, device)
        self.actors = [remote.remote(model_dir, rank_cfg, device, rank=r, world=n, rendezvous=rendezvous)
                       for r in range(n)]  # fmt: skip
        # one rank keeps the name it always had ('the trainer worker')
        self.names = ["trainer"] if n == 1 else [f"trainer rank {r} of {n}" for r in range(n)]

    def __len__(self) -> int:
        return len(self.actors)

    def ready(self) -> None:
        """Every rank constructed: the group formed, DeepSpeed set up."""
        self.call("__ray_ready__")

    def call(self, method: str, *args):
        """`method(*args)` on every rank at once; rank 0's answer once all have answered."""
        refs = [getattr(a, method).remote(*args) for a in self.actors]
        behind, self._behind = self._behind, {}
        self._wait(dict(zip(refs, self.names, strict=True)) | behind)
        return self.get(self.names[0], refs[0])

    def first_ref(self, method: str, *args):
        """`method(*args)` on rank 0, its ObjectRef (the weights out). ZeRO-1/2 leave every rank the whole
        parameters: rank 0 alone runs it. Under ZeRO-3 every rank runs it (they gather the parameters together);
        the other ranks' outcomes are waited on with the next `call`."""
        if not self.zero3:
            return getattr(self.actors[0], method).remote(*args)
        refs = [getattr(a, method).remote(*args) for a in self.actors]
        self._behind |= dict(zip(refs[1:], self.names[1:], strict=True))
        return refs[0]

    def first(self, method: str, *args):
        """`method(*args)` on rank 0 (under ZeRO-3 on every rank, as `first_ref`), its answer once all answered."""
        if self.zero3:
            return self.call(method, *args)
        return self.get(self.names[0], self.first_ref(method, *args))

    def _wait(self, pending: dict) -> None:
        """Until every ref of `pending` (ref -> rank name) answered; the first failure raised through `get`, a dead
        rank named before the ranks whose collectives broke with it."""
        import ray

        pending = dict(pending)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                name = pending.pop(ref)
                try:
                    ray.get(ref, timeout=0)
                except Exception:
                    self._name_the_dead(pending)
                    self.get(name, ref)
                    raise

    def _name_the_dead(self, pending: dict) -> None:
        """After one rank's failure: a rank among `pending` whose actor died is the one to report."""
        import ray

        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=_SETTLE_S)
        for ref in ready:
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.RayActorError:
                self.get(pending[ref], ref)  # raises the WorkerDied that names it
            except Exception:  # another casualty (its collective broke): the first failure is reported
                pass

    def kill(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
