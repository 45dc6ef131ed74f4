"""A two-node Ray cluster on loopback, started the way a real one is (`ray start --head` / `ray start --address`):
`.venv/bin/pytest -m slow tests/roll/test_ray_multinode.py`.

Each node gets its own --temp-dir and runs in the foreground (`--block`) in its own process group, so the test
stops exactly what it started (never `ray stop`, which stops every Ray instance on the machine, a training
run's included): the process groups first, then any process left that names one of the temp dirs. A driver
(a separate process, so this one keeps no Ray state) connects, places one actor on each node by node id, and
reports where each ran. Also: the KubeRay manifest for the 30B recipe matches `roll plan`'s device plan.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rock.launch import free_port

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
MANIFEST = REPO / "deploy/kuberay/raycluster.yaml"
RECIPE = REPO / "configs/rl/rome-30b-a3b.yaml"

DRIVER = """
import json, sys, time
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + 60
while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
    time.sleep(0.5)
nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])

@ray.remote(num_cpus=1)
class Where:
    def node(self):
        import os, socket
        return ray.get_runtime_context().get_node_id(), os.getpid()

actors = [Where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
          for node in nodes]
ran = ray.get([a.node.remote() for a in actors], timeout=120)
print(json.dumps({"nodes": nodes, "ran": ran}))
ray.shutdown()
"""


def _mentions(needle: str) -> list[int]:
    """Ids of this machine's processes whose command line names `needle` (a temp dir only this test uses)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _stop(procs: list[subprocess.Popen], temp_dirs: list[Path]) -> None:
    for p in procs:  # `ray start --block` and what it started share the process group it leads
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [pid for d in temp_dirs for pid in _mentions(str(d))]
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL if time.monotonic() > deadline - 5 else signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def _start(args: list[str], temp_dir: Path, log: Path, env: dict) -> subprocess.Popen:
    cmd = [RAY, "start", *args, "--num-cpus=1", f"--temp-dir={temp_dir}", "--disable-usage-stats", "--block"]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


@pytest.mark.slow
def test_two_nodes_on_loopback_run_one_actor_each(tmp_path):
    # short paths: Ray's unix sockets live under the temp dir and must stay under ~107 characters
    head_dir = Path(os.path.realpath("/tmp")) / f"rmn-h-{os.getpid()}"
    node_dir = Path(os.path.realpath("/tmp")) / f"rmn-w-{os.getpid()}"
    port = free_port()
    # This cluster's own token (Ray 2.60 authenticates every RPC; ~/.ray/auth_token may belong to another run)
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start(["--head", f"--port={port}", "--include-dashboard=false"], head_dir,
                            tmp_path / "head.log", env))  # fmt: skip
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while not list(head_dir.glob("session_*/sockets/raylet*")) and time.monotonic() < deadline:
            assert procs[0].poll() is None, (tmp_path / "head.log").read_text()[-2000:]
            time.sleep(0.5)
        procs.append(_start([f"--address={address}"], node_dir,
                            tmp_path / "node.log", env))  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-c", DRIVER, address], capture_output=True, text=True, timeout=240, env=env
        )
        logs = "".join((tmp_path / f).read_text()[-1500:] for f in ("head.log", "node.log"))
        assert done.returncode == 0, done.stderr[-3000:] + logs
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert len(result["nodes"]) == 2, result
        assert sorted(node for node, _ in result["ran"]) == result["nodes"]  # one actor on each node
        assert len({pid for _, pid in result["ran"]}) == 2
    finally:
        _stop(procs, [head_dir, node_dir])
        left = [pid for d in (head_dir, node_dir) for pid in _mentions(str(d))]
        import shutil

        for d in (head_dir, node_dir):
            shutil.rmtree(d, ignore_errors=True)
    assert not left, f"Ray processes left running: {left}"


def test_kuberay_manifest_matches_the_recipes_plan():
    from roll.plan import load_run_config, make_plan

    cfg = load_run_config(RECIPE)
    plan = make_plan(cfg)
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"

    def gpus(template) -> int:
        (container,) = [c for c in template["spec"]["containers"] if c["name"].startswith("ray-")]
        limits = container["resources"]["limits"]
        assert str(limits.get("nvidia.com/gpu", 0)) == str(container["resources"]["requests"].get("nvidia.com/gpu", 0))
        return int(limits.get("nvidia.com/gpu", 0))

    head = cluster["spec"]["headGroupSpec"]
    groups = cluster["spec"]["workerGroupSpecs"]
    assert gpus(head["template"]) == 0  # the head runs the driver and the rock manager, no GPU work
    # every GPU node of the recipe is one worker pod with all its GPUs; their sum is the plan's devices
    assert sum(g["replicas"] for g in groups) == cfg.cluster.nodes
    assert all(gpus(g["template"]) == cfg.cluster.gpus_per_node for g in groups)
    assert all(str(g["rayStartParams"]["num-gpus"]) == str(cfg.cluster.gpus_per_node) for g in groups)
    assert sum(g["replicas"] * gpus(g["template"]) for g in groups) >= plan.inference_gpus + plan.train_gpus
    # the job the head runs is the recipe itself
    args = " ".join(head["template"]["spec"]["containers"][0]["args"])
    assert "roll train configs/rl/rome-30b-a3b.yaml" in args
    # host memory requested per worker pod covers what the plan assumes per node
    mem = groups[0]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"]
    assert mem.endswith("Gi") and int(mem[:-2]) <= cfg.cluster.host_memory_gib
