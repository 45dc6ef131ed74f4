"""The baseline the ROCK benchmarks measure against: the plain docker CLI with ROCK's isolation flags.

Imported by bench/bench_rock_create.py and bench/bench_rock_warm.py (run as scripts, so bench/ is on sys.path).
"""

from __future__ import annotations

import subprocess

IMAGE = "rock/base:bookworm"
# The same isolation ROCK applies by default, so both sides start the same kind of container.
RAW_FLAGS = [
    "--init",
    "--network",
    "none",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "--pids-limit",
    "512",
    "--memory",
    "1g",
    "--memory-swap",
    "1g",
    "--cpus",
    "1",
    "--label",
    "ale.rock.bench=1",
]


def docker_run_detached() -> str:
    """`docker run -d` a sleeping sandbox-like container; returns its id."""
    argv = ["docker", "run", "-d", *RAW_FLAGS, IMAGE, "sleep", "infinity"]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def docker_rm(cid: str) -> None:
    subprocess.run(["docker", "rm", "-f", cid], check=True, capture_output=True)
