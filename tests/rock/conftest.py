"""Fixtures for ROCK tests: a real `rock serve` subprocess on a free port against the real daemon.

    .venv/bin/pytest tests/rock -q

`rock_server` is one manager shared by the module's tests; `client` is an SDK client for it;
`sandbox` is a fresh sandbox removed after the test.
"""

from __future__ import annotations

import pytest

from rock.launch import RockProcess

UPLOAD_LIMIT = 8 << 20


@pytest.fixture(scope="module")
def rock_server(docker_client, tmp_path_factory):
    allowed = tmp_path_factory.mktemp("allowed")
    (allowed / "hello.txt").write_text("from the host\n")
    # A small upload limit keeps the 413 test from shipping hundreds of megabytes.
    with RockProcess(allow_mounts=[allowed], extra_args=["--max-upload", f"{UPLOAD_LIMIT}"]) as rock:
        rock.allowed_dir, rock.upload_limit = allowed, UPLOAD_LIMIT
        yield rock


@pytest.fixture(scope="module")
def client(rock_server):
    with rock_server.client() as c:
        yield c


@pytest.fixture
def sandbox(client):
    with client.create_sandbox(memory="256m", pids_limit=128) as sb:
        yield sb
