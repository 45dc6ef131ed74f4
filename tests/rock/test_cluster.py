"""Scale-out on Ray: a two-node cluster on loopback, one sandbox-host actor per node.

    .venv/bin/pytest tests/rock/test_cluster.py -q

Both nodes are real raylets of one cluster (what `ray start --head` plus `ray start --address`
make), started with `ray.cluster_utils.Cluster` so that the test can stop exactly its own
processes: `ray stop` would kill every Ray instance on the machine. Its temp dir is private, so
no other `ray.init()` on this machine attaches to it. Both nodes share this machine's daemon,
so the test checks placement and routing, not separate daemons.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest

from rock.launch import RockProcess, free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_cluster():
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="rockray-", dir="/tmp")
    # Ray writes the head's address to /tmp/ray/ray_current_cluster whatever the temp dir, and fails
    # on a fresh machine where nothing has made /tmp/ray yet.
    os.makedirs("/tmp/ray", exist_ok=True)
    # A free GCS port: the default 6379 may belong to another Ray instance on this machine.
    head = {"num_cpus": 1, "temp_dir": temp, "include_dashboard": False, "gcs_server_port": free_port()}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()
    for _ in range(10):  # Ray's last processes may still be writing their logs into it
        shutil.rmtree(temp, ignore_errors=True)
        if not os.path.exists(temp):
            break
        time.sleep(0.5)


def test_sandboxes_spread_over_nodes_and_calls_reach_their_host(ray_cluster, tmp_path, docker_client):
    with (
        RockProcess(state_dir=tmp_path / "s", extra_args=["--ray", ray_cluster.address], start_timeout=120) as rock,
        rock.client() as c,
    ):
        boxes = [c.create_sandbox(memory="256m") for _ in range(4)]
        nodes = {b.info.node for b in boxes}
        assert len(nodes) == 2 and None not in nodes
        for b in boxes:
            assert b.exec(f"echo {b.id}").stdout == f"{b.id}\n"
            b.write_file("/tmp/who", b.id)
            assert b.read_file("/tmp/who") == b.id.encode()
        s = boxes[1].session()
        s.run("cd /tmp; X=7")
        assert s.run("echo $X $(pwd)").stdout == "7 /tmp\n"
        chunks = list(boxes[2].exec_stream("echo a; echo b >&2; exit 3"))
        assert chunks[-1].type == "exit" and chunks[-1].exit_code == 3
        snap = boxes[3].snapshot()
        fork = c.create_sandbox(snapshot=snap.snapshot_id)
        assert fork.info.node == boxes[3].info.node
        assert fork.exec("cat /tmp/who").stdout == boxes[3].id
        fork.delete()
        c.delete_snapshot(snap.snapshot_id)
        for b in boxes:
            b.delete()
        manager = (tmp_path / "s" / "manager_id").read_text().strip()
        assert not docker_client.containers.list(all=True, filters={"label": f"ale.rock.manager={manager}"})
