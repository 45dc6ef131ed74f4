"""The typed seams of ROCK's backend: one ABC both backends implement, spec objects, typed errors.

.venv/bin/pytest tests/rock/test_backend_seam.py -q
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import socket

import pytest

from rock import errors, modelproxy
from rock.backend.base import Backend, ExecSpec
from rock.backend.docker import DockerBackend
from rock.pool import PoolKey

ROCK = pathlib.Path(__file__).resolve().parents[2] / "rock"


def test_docker_backend_implements_every_method_of_the_abc():
    assert issubclass(DockerBackend, Backend) and not DockerBackend.__abstractmethods__


def test_cluster_backend_implements_every_method_of_the_abc():
    cluster = pytest.importorskip("rock.cluster")  # ray is a dependency; skip only if the import itself fails
    assert issubclass(cluster.ClusterBackend, Backend) and not cluster.ClusterBackend.__abstractmethods__


def test_every_abc_method_says_what_it_raises_or_returns():
    for name in Backend.__abstractmethods__:
        assert getattr(Backend, name).__doc__, f"Backend.{name} has no docstring"


def test_exec_spec_is_frozen_with_defaults():
    spec = ExecSpec("c1", "echo hi")
    assert (spec.env, spec.cwd, spec.stdin, spec.timeout) == ({}, None, None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.timeout = 3.0


def test_pool_key_fields_are_named():
    key = PoolKey("img", 1.0, 1 << 30, 256)
    assert (key.image, key.cpus, key.memory, key.pids_limit, key.disk) == ("img", 1.0, 1 << 30, 256, None)
    assert key == ("img", 1.0, 1 << 30, 256, None) and hash(key) == hash(("img", 1.0, 1 << 30, 256, None))
    assert PoolKey("img", 1.0, 1 << 30, 256, 2 << 30) != key  # a different disk bound is another spec


def test_is_a_directory_travels_as_its_own_code():
    e = errors.from_wire(400, "is_a_directory", "/etc is a directory")
    assert isinstance(e, errors.IsADirectory) and isinstance(e, errors.BadRequest)


def test_no_behaviour_decided_by_an_error_message_text():
    pattern = re.compile(r"in str\(e\w*\)|in e\w*\.message|\"No such|in out\[\"std(err|out)\"\]")
    hits = [
        f"{p.relative_to(ROCK)}:{i}"
        for p in ROCK.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


def test_modelproxy_on_a_taken_port_exits_with_its_own_code():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert modelproxy.daemonize_and_serve("/nonexistent.sock", "127.0.0.1", port) == modelproxy.EXIT_CANNOT_LISTEN
