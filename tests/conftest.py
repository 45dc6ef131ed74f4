"""Shared test fixtures. Run everything with `make test`; one package with `.venv/bin/pytest tests/rock`.

Markers: `slow` (model loads, training steps, end-to-end), `docker` (needs the engine and
rock/base:bookworm, which `make test` provides), `gpu` (skipped when no CUDA device is present).
"""

from __future__ import annotations

import signal
import socket

import pytest

BASE_IMAGE = "rock/base:bookworm"

# A shell starts a background job (`make test &`, `nohup ... &`) with SIGINT ignored, and that disposition is
# inherited through exec by every process the tests start: a `roll` under test would then never see the Ctrl-C
# that the interrupt tests send (it ran on and exited 0). A Python-level handler is reset to the default in a
# child at exec, so this gives the children (and pytest) a terminal's Ctrl-C back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def base_image() -> str:
    return BASE_IMAGE


@pytest.fixture(scope="session")
def docker_client():
    import docker

    client = docker.from_env()
    client.ping()
    client.images.get(BASE_IMAGE)  # `make images` builds it
    return client


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return  # importing torch costs ~10 s; only pay it when a gpu test was collected
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in gpu_items:
        item.add_marker(skip)
