"""pytest tests/iflow/test_iflow_rome.py -m slow — `python3 -m iflow_cli -p` against `rome serve` on ROME-tiny.

The randomly initialised model says nonsense; what is checked is that the loop runs end to end on
a real OpenAI-compatible server (tool schemas through its chat template, usage counted, a clean
termination reason), whatever the model answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REASONS = {"finished", "max_turns", "format_error"}


@pytest.fixture(scope="module")
def rome_server(tmp_path_factory):
    from rome.init import init_model
    from rome.serving.server import start_server

    model_dir = init_model(tmp_path_factory.mktemp("rome") / "tiny", config="tiny", seed=0)
    handle = start_server(model_dir, engine="hf")
    yield handle
    handle.stop()


@pytest.mark.slow
def test_batch_run_against_rome_tiny(rome_server, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IFLOW_", "OPENAI_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        HOME=str(tmp_path),
        OPENAI_BASE_URL=rome_server.url,
        OPENAI_API_KEY="none",
        IFLOW_MAX_TOKENS="32",
    )
    argv = [
        sys.executable,
        "-m",
        "iflow_cli",
        "-p",
        "Create hello.txt containing hi.",
        "--yolo",
        "--max-turns",
        "3",
        "-o",
        "info.json",
        "--trajectory",
        "t.jsonl",
    ]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["termination_reason"] in REASONS, proc.stderr
    assert proc.returncode == (0 if info["termination_reason"] == "finished" else 1)
    assert 1 <= info["rounds"] <= 3 and info["usage"]["prompt_tokens"] > 0 and info["usage"]["completion_tokens"] > 0
    calls = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert sum(e["type"] == "model_call" for e in calls) == info["rounds"]
