"""How a Ray worker's failure reaches the driver: `.venv/bin/pytest tests/roll/test_worker_errors.py` (a second).

Ray's memory monitor kills a worker whose node runs low on memory; `ray.get` then raises OutOfMemoryError, which
the driver names as a WorkerDied ("out of memory", the worker's name) instead of Ray's multi-line traceback. The
real kill cannot be had safely here, so `ray.get` raises Ray's own exception, as it does after such a kill.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from roll.driver import Run, WorkerDied

OOM = ("Task was killed due to the node running low on memory.\nMemory on the node (IP: 10.0.0.1) where the task "
       "was running was 120.1GB / 125.0GB (0.96).\nRay killed this worker (ID: abc) because ...")  # fmt: skip


@pytest.fixture
def run(tmp_path):
    from roll.config import load_config

    tiny = Path(__file__).resolve().parents[2] / "configs/rl/tiny-cpu.yaml"
    return Run(load_config(tiny, [f"runs_dir={tmp_path}", "rollout.resample.enabled=false"]))


@pytest.mark.parametrize("worker", ["trainer", "inference engine 2 of 3"])
def test_a_worker_killed_for_memory_is_a_worker_died_naming_it_and_out_of_memory(run, monkeypatch, worker):
    def get(ref, timeout=None):
        raise ray.exceptions.OutOfMemoryError(OOM)

    monkeypatch.setattr(ray, "get", get)
    run.completed = 2
    with pytest.raises(WorkerDied) as e:
        run._get(worker, object())
    msg = str(e.value)
    name = "the trainer worker" if worker == "trainer" else worker
    assert msg.startswith(f"{name} was killed: out of memory (Task was killed due to the node running low on memory.)")
    assert msg.endswith("`roll train ... --resume` continues after iteration 2") and "\n" not in msg


def test_other_ray_errors_keep_their_mapping(run, monkeypatch):
    def get(ref, timeout=None):
        raise ray.exceptions.GetTimeoutError("timed out")

    monkeypatch.setattr(ray, "get", get)
    with pytest.raises(WorkerDied, match="the trainer worker did not answer within 5s"):
        run._get("trainer", object(), timeout=5)
