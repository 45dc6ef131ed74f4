"""python bench/bench_gateway.py [--upstream URL] [--decode-ms 200] [--sandboxes 64] [--requests 20]

The model path's cost, measured side by side in one run against the same upstream:
  1. latency: p50 of a chat completion from an agent inside a sandbox (through the in-sandbox
     ModelProxy, the unix socket and `rock serve`'s gateway) ÷ p50 of the same request sent
     from the host straight to the upstream (same client script, rounds interleaved);
  2. throughput: 64 sandboxes calling at once ÷ 64 concurrent clients calling the upstream
     directly (requests per second from a common start to the last answer). The direct clients
     run in 64 containers of the same image on the host's network: Docker puts every container
     under one CPU-weight group (cgroup v1 `docker`, cpu.shares 1024), so clients in containers
     and clients as host processes are not scheduled alike on a loaded machine, and only the
     model path should differ between the two sides. The same figure with host-process clients
     is printed beside it.
Targets (issue 4): latency ratio ≤ 1.05, throughput ratio ≥ 0.9. Ends with one JSON line whose
"ratio" is the latency ratio (the headline figure), with every other figure beside it.

Without --upstream the upstream is iflow's ScriptedServer in a subprocess, answering each
request after --decode-ms: a stand-in for the model's time per completion (200 ms is a short
completion of ~64 tokens at ~3 ms/token on a GPU server; ROME-tiny on this CPU takes seconds).
It is printed with the results, beside the absolute overhead in ms. With --upstream URL (e.g.
`rome serve`) the real model answers and --decode-ms is ignored.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rock.launch import RockProcess  # noqa: E402

IMAGE = "rock/base:bookworm"
MAX_TOKENS = 64  # per completion; --max-tokens

# Runs on a bare python3, inside a sandbox and on the host alike: N sequential completions,
# started at a common wall-clock instant so that concurrent clients overlap exactly.
CLIENT = r"""
import json, os, sys, time, urllib.request
n, start_at, warm, max_tokens = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
url = os.environ["OPENAI_BASE_URL"] + "/chat/completions"
headers = {"Content-Type": "application/json", "Authorization": "Bearer " + os.environ.get("OPENAI_API_KEY", "x")}
body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "count from one to twenty"}],
                   "max_tokens": max_tokens}).encode()
def one():
    with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=120) as r:
        assert json.loads(r.read())["choices"][0]["message"]["content"]
for _ in range(warm):
    one()
ready = time.time()
while time.time() < start_at:
    time.sleep(0.0005)
lat, t0 = [], time.time()
for _ in range(n):
    s = time.perf_counter(); one(); lat.append(time.perf_counter() - s)
print(json.dumps({"lat": lat, "t0": t0, "t1": time.time(), "ready": ready}))
"""

UPSTREAM = r"""
import sys, threading, time
from iflow_cli.testing import scripted_server
from iflow_cli.testing.scripted_server import ScriptedServer
# Real model servers (uvicorn, vLLM) set TCP_NODELAY; http.server does not, and its separate head
# and body writes then stall ~40 ms on a pooled keep-alive connection (Nagle + delayed ACK).
scripted_server._Handler.disable_nagle_algorithm = True
scripted_server.ThreadingHTTPServer.request_queue_size = 512  # and they accept more than 5 connects at once
text = " ".join(str(i) for i in range(1, 21)) + " and that is twenty, counted one by one for the benchmark."
with ScriptedServer(lambda body: {"content": text, "delay": float(sys.argv[1]) / 1000}) as s:
    s.requests = type("Discard", (list,), {"append": lambda self, x: None})()  # a long run must not grow memory
    print(s.url, flush=True)
    threading.Event().wait()
"""


def start_upstream(decode_ms: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", UPSTREAM, str(decode_ms)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return proc, proc.stdout.readline().strip()


def host_client(upstream: str, n: int, start_at: float, warm: int) -> dict:
    argv = [sys.executable, "-c", CLIENT, str(n), str(start_at), str(warm), str(MAX_TOKENS)]
    out = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "OPENAI_BASE_URL": upstream})
    if out.returncode != 0:
        raise RuntimeError(f"host client failed: {out.stderr[-500:]}")
    return json.loads(out.stdout)


def sandbox_client(sb, n: int, start_at: float, warm: int) -> dict:
    res = sb.exec(["python3", "-c", CLIENT, str(n), str(start_at), str(warm), str(MAX_TOKENS)], timeout=3600)
    if res.exit_code != 0:
        raise RuntimeError(f"client in {sb.id} failed: {res.stderr[-500:]}")
    return json.loads(res.stdout)


def direct_boxes(count: int) -> list:
    """Containers of the same image on the host's network, to run the direct clients in."""
    import docker

    engine = docker.from_env()

    def one(_):
        return engine.containers.run(
            IMAGE,
            ["sleep", "infinity"],
            detach=True,
            network_mode="host",
            labels={"ale.rock": "1", "ale.rock.bench": "gateway"},
        )

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def direct_box_client(box, upstream: str, n: int, start_at: float, warm: int) -> dict:
    argv = ["python3", "-c", CLIENT, str(n), str(start_at), str(warm), str(MAX_TOKENS)]
    code, out = box.exec_run(argv, environment={"OPENAI_BASE_URL": upstream}, demux=True)
    if code != 0:
        raise RuntimeError(f"direct client failed: {(out[1] or b'')[-500:]!r}")
    return json.loads(out[0])


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def latency(sb, upstream: str, rounds: int, per_round: int) -> tuple[list[float], list[float]]:
    """Interleaved rounds, so that drift in the machine's load hits both sides alike."""
    direct, proxied = [], []
    for _ in range(rounds):
        direct += host_client(upstream, per_round, 0, 3)["lat"]
        proxied += sandbox_client(sb, per_round, 0, 3)["lat"]
    return direct, proxied


def throughput(results: list[dict]) -> float:
    """Requests per second over the window from the common start to the last client's end."""
    total = sum(len(r["lat"]) for r in results)
    return total / (max(r["t1"] for r in results) - min(r["t0"] for r in results))


def concurrent(clients: int, run, call_s: float) -> float:
    """All clients start together at `start_at`; one that was not ready by then would skew the window.
    Generous: 64 execs on a loaded 2-core box take a while, and a slow upstream may serve the
    warm-up calls (`call_s` each) one after another."""
    start_at = time.time() + 10 + clients * (0.3 + call_s)
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda i: run(i, start_at), range(clients)))
    late = [r["ready"] - start_at for r in results if r["ready"] > start_at]
    if late:
        raise RuntimeError(f"{len(late)} clients were not ready at the common start (up to {max(late):.2f} s late)")
    return throughput(results)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("--upstream", help="an OpenAI-compatible URL ending in /v1 (default: a scripted one)")
    ap.add_argument("--decode-ms", type=float, default=200.0, help="scripted upstream's time per completion")
    ap.add_argument("--sandboxes", type=int, default=64)
    ap.add_argument("--requests", type=int, default=20, help="per client in the throughput run")
    ap.add_argument("--max-tokens", type=int, default=64, help="asked of the upstream per completion")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=30)
    args = ap.parse_args()
    global MAX_TOKENS
    MAX_TOKENS = args.max_tokens

    proc, upstream = (None, args.upstream) if args.upstream else start_upstream(args.decode_ms)
    state = tempfile.mkdtemp(prefix="bench-gw-")
    try:
        with RockProcess(model_upstream=upstream, state_dir=state) as rock, rock.client() as client:
            with ThreadPoolExecutor(8) as pool:
                boxes = list(
                    pool.map(lambda i: client.create_sandbox(image=IMAGE, network="model"), range(args.sandboxes))
                )
            others = direct_boxes(args.sandboxes)
            try:
                direct, proxied = latency(boxes[0], upstream, args.rounds, args.per_round)
                n = args.requests
                call_s = p50(direct)
                tput_host = concurrent(args.sandboxes, lambda i, t: host_client(upstream, n, t, 1), call_s)
                tput_direct = concurrent(
                    args.sandboxes, lambda i, t: direct_box_client(others[i], upstream, n, t, 1), call_s
                )
                tput_proxy = concurrent(args.sandboxes, lambda i, t: sandbox_client(boxes[i], n, t, 1), call_s)
                recorded = sum(len(sb.trajectory()) for sb in boxes)
            finally:
                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(lambda sb: sb.delete(), boxes))
                    list(pool.map(lambda c: c.remove(force=True), others))
    finally:
        if proc:
            proc.kill()
    lat_ratio = p50(proxied) / p50(direct)
    tput_ratio = tput_proxy / tput_direct
    print(f"upstream: {args.upstream or f'scripted, {args.decode_ms:g} ms per completion'}")
    print(
        f"latency p50: direct {p50(direct) * 1e3:.2f} ms, through the sandbox proxy {p50(proxied) * 1e3:.2f} ms "
        f"(+{(p50(proxied) - p50(direct)) * 1e3:.2f} ms) -> ratio {lat_ratio:.3f} (target <= 1.05)"
    )
    print(
        f"throughput with {args.sandboxes} concurrent: direct {tput_direct:.1f} req/s, through sandboxes "
        f"{tput_proxy:.1f} req/s -> ratio {tput_ratio:.3f} (target >= 0.9); chunks recorded: {recorded}"
    )
    print(f"  (direct from {args.sandboxes} host processes instead of containers: {tput_host:.1f} req/s)")
    print(
        json.dumps(
            {
                "bench": "gateway",
                "ratio": round(lat_ratio, 4),
                "latency_ratio": round(lat_ratio, 4),
                "throughput_ratio": round(tput_ratio, 4),
                "p50_direct_ms": round(p50(direct) * 1e3, 3),
                "p50_proxy_ms": round(p50(proxied) * 1e3, 3),
                "overhead_ms": round((p50(proxied) - p50(direct)) * 1e3, 3),
                "throughput_direct_rps": round(tput_direct, 2),
                "throughput_direct_host_rps": round(tput_host, 2),
                "throughput_proxy_rps": round(tput_proxy, 2),
                "sandboxes": args.sandboxes,
                "decode_ms": None if args.upstream else args.decode_ms,
                "upstream": args.upstream or "scripted",
                "chunks_recorded": recorded,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
