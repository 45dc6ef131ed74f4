"""vLLM's queue readers do not spin on CPU (`rome.serving.vllm_worker_ext.quiet_readers`, set by `VLLMEngine` through
`ROME_VLLM_READER_SPIN_S=0`): `.venv/bin/pytest -m slow tests/rome/test_vllm_readers.py`.

Each case runs in a fresh interpreter, as vLLM's worker process does: the variable is read when the extension
module is imported, before the worker opens its queues.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

PROBE = """
import json, zmq
import rome.serving.vllm_worker_ext as ext
from vllm.distributed.device_communicators import shm_broadcast
from vllm.distributed.device_communicators.shm_broadcast import SpinCondition
recheck = shm_broadcast.SHM_READER_RECHECK_INTERVAL_MS
ctx = zmq.Context()
reader = SpinCondition(True, ctx, "inproc://rome-probe")
writer = SpinCondition(False, ctx, "inproc://rome-probe-2")
again = ext.quiet_readers(0.25)  # a second call replaces the first, it does not wrap it
print(json.dumps([reader.busy_loop_s, writer.busy_loop_s, recheck, again, SpinCondition(True, ctx, "inproc://p3").busy_loop_s]))
"""


def probe(env: dict[str, str]) -> list:
    env = {k: v for k, v in os.environ.items() if k != "ROME_VLLM_READER_SPIN_S"} | env
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_readers_created_after_the_import_sleep_at_once_when_the_variable_says_so():
    # asleep at once, and a lost notification costs 20 ms, not vLLM's 5 s (each weight sync took 5.3 s with 0 and 5 s)
    assert probe({"ROME_VLLM_READER_SPIN_S": "0"}) == [0, 0, 20, True, 0.25]


def test_without_the_variable_vllm_keeps_its_one_second_spin():
    assert probe({}) == [1, 0, 5000, True, 0.25]
