"""python bench/bench_gateway.py [--upstream URL] [--decode-ms 200] [--sandboxes 64] [--requests 30] [--pairs 4]

The model path's cost, measured side by side in one run against the same upstream:
  1. latency: p50 of a chat completion from an agent inside a sandbox (through the in-sandbox
     ModelProxy, the unix socket and `rock serve`'s gateway) ÷ p50 of the same request sent
     from the host straight to the upstream (same client script, rounds interleaved);
  2. throughput: 64 sandboxes calling at once ÷ 64 concurrent clients calling the upstream
     directly (requests per second from a common start to the last answer). The direct clients
     run in 64 containers of the same image on the host's network, so that clients on both sides
     are scheduled alike (Docker puts every container under one CPU-weight group) and only the
     model path differs. Phases alternate, direct and proxied, in `--pairs` rounds whose order
     rotates, and the ratio is the median of the rounds: the machine's drift hits both sides.

Both sides send the agent's request as it is. The gateway adds to it the two fields that make
the record (token ids and sampling logprobs), so the upstream does a little more work for the
proxied side: that cost of recording is part of the model path and is counted against it.

Targets (issue 4): latency ratio ≤ 1.05, throughput ratio ≥ 0.9. Ends with one JSON line whose
"ratio" is the latency ratio (the headline figure), with every other figure beside it, among
them the CPU milliseconds per call of the upstream, of `rock serve` and of the 64 proxies.

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
AGENT_REQUEST = {"model": "bench", "messages": [{"role": "user", "content": "count from one to twenty"}]}

# Runs on a bare python3, inside a sandbox and on the host alike: N sequential completions,
# started at a common wall-clock instant so that concurrent clients overlap exactly.
CLIENT = r"""
import json, os, sys, time, urllib.request
n, start_at, warm, body = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode()
url = os.environ["OPENAI_BASE_URL"] + "/chat/completions"
headers = {"Content-Type": "application/json", "Authorization": "Bearer " + os.environ.get("OPENAI_API_KEY", "x")}
def one():
    with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=120) as r:
        assert json.loads(r.read())["choices"][0]["message"]  # a random-init model may answer with nothing
for _ in range(warm):
    one()
ready = time.time()
time.sleep(max(0.0, start_at - time.time()))
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


def host_client(upstream: str, body: str, n: int, start_at: float, warm: int) -> dict:
    argv = [sys.executable, "-c", CLIENT, str(n), str(start_at), str(warm), body]
    out = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "OPENAI_BASE_URL": upstream})
    if out.returncode != 0:
        raise RuntimeError(f"host client failed: {out.stderr[-500:]}")
    return json.loads(out.stdout)


def sandbox_client(sb, body: str, n: int, start_at: float, warm: int) -> dict:
    res = sb.exec(["python3", "-c", CLIENT, str(n), str(start_at), str(warm), body], timeout=3600)
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


def direct_box_client(box, upstream: str, body: str, n: int, start_at: float, warm: int) -> dict:
    argv = ["python3", "-c", CLIENT, str(n), str(start_at), str(warm), body]
    code, out = box.exec_run(argv, environment={"OPENAI_BASE_URL": upstream}, demux=True)
    if code != 0:
        raise RuntimeError(f"direct client failed: {(out[1] or b'')[-500:]!r}")
    return json.loads(out[0])


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / CLK_TCK


def pids_matching(needle: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if needle in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                pass
    return out


class CpuMeter:
    """CPU seconds spent by the named groups of processes between start() and stop()."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups

    def snapshot(self) -> dict[str, float]:
        return {name: sum(cpu_s(p) for p in pids) for name, pids in self.groups.items()}

    def __enter__(self) -> CpuMeter:
        self.before = self.snapshot()
        return self

    def __exit__(self, *exc) -> None:
        after = self.snapshot()
        self.used = {k: after[k] - self.before[k] for k in after}


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def latency(sb, upstream: str, body: str, rounds: int, per_round: int) -> tuple[list[float], list[float]]:
    """Interleaved rounds, so that drift in the machine's load hits both sides alike."""
    direct, proxied = [], []
    for _ in range(rounds):
        direct += host_client(upstream, body, per_round, 0, 3)["lat"]
        proxied += sandbox_client(sb, body, per_round, 0, 3)["lat"]
    return direct, proxied


def throughput(results: list[dict]) -> tuple[float, int]:
    """Requests per second over the window from the common start to the last client's end, and the count."""
    total = sum(len(r["lat"]) for r in results)
    return total / (max(r["t1"] for r in results) - min(r["t0"] for r in results)), total


def concurrent(clients: int, run, call_s: float, tries: int = 3) -> tuple[float, int]:
    """All clients start together at `start_at`, after one warm-up call each; a client that was not
    ready by then would skew the window, so the phase is run again with twice the margin."""
    margin = 5 + clients * 0.1 + 4 * call_s
    for _ in range(tries):
        start_at = time.time() + margin
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda i, t=start_at: run(i, t), range(clients)))
        late = [r["ready"] - start_at for r in results if r["ready"] > start_at]
        if not late:
            return throughput(results)
        print(f"  {len(late)} clients were not ready at the common start (up to {max(late):.2f} s late); again")
        margin *= 2
    raise RuntimeError(f"clients were still not ready at the common start after {tries} tries")


class Side:
    """One way of calling the model, measured in every round: its rates and its CPU per call."""

    def __init__(self, name: str, run) -> None:
        self.name, self.run = name, run
        self.rates: list[float] = []
        self.calls = 0
        self.cpu: dict[str, float] = {}

    def measure(self, clients: int, call_s: float, groups: dict[str, list[int]]) -> None:
        with CpuMeter(groups) as meter:
            rate, calls = concurrent(clients, self.run, call_s)
        self.rates.append(rate)
        self.calls += calls
        for k, v in meter.used.items():
            self.cpu[k] = self.cpu.get(k, 0.0) + v
        print(f"  {self.name}: {rate:.1f} req/s")

    def cpu_ms_per_call(self) -> dict[str, float]:
        return {k: round(v * 1e3 / self.calls, 3) for k, v in self.cpu.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("--upstream", help="an OpenAI-compatible URL ending in /v1 (default: a scripted one)")
    ap.add_argument("--decode-ms", type=float, default=200.0, help="scripted upstream's time per completion")
    ap.add_argument("--sandboxes", type=int, default=64)
    ap.add_argument("--requests", type=int, default=30, help="per client in each throughput phase")
    ap.add_argument("--pairs", type=int, default=4, help="rounds of throughput phases (direct, proxied)")
    ap.add_argument("--max-tokens", type=int, default=64, help="asked of the upstream per completion")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=30)
    args = ap.parse_args()
    agent = dict(AGENT_REQUEST, max_tokens=args.max_tokens)
    plain = json.dumps(agent)

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
                direct, proxied = latency(boxes[0], upstream, plain, args.rounds, args.per_round)
                n, call_s = args.requests, p50(direct)
                groups = {"rock": [rock.proc.pid], "proxies": pids_matching(b"/opt/rock/modelproxy.py")}
                if proc:  # an upstream of our own: its CPU is measured too
                    groups["upstream"] = [proc.pid]
                sides = [
                    Side("direct", lambda i, t: direct_box_client(others[i], upstream, plain, n, t, 1)),
                    Side("through the sandboxes", lambda i, t: sandbox_client(boxes[i], plain, n, t, 1)),
                ]
                for k in range(args.pairs):
                    print(f"throughput round {k + 1}/{args.pairs} ({args.sandboxes} clients x {n} calls each)")
                    for side in sides if k % 2 == 0 else sides[::-1]:  # alternate which side goes first
                        side.measure(args.sandboxes, call_s, groups)
                recorded = sum(len(sb.trajectory()) for sb in boxes)
            finally:
                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(lambda sb: sb.delete(), boxes))
                    list(pool.map(lambda c: c.remove(force=True), others))
    finally:
        if proc:
            proc.kill()
    direct_side, proxy = sides
    ratios = [p / d for p, d in zip(proxy.rates, direct_side.rates, strict=True)]
    lat_ratio = p50(proxied) / p50(direct)
    tput_ratio = p50(ratios)
    print(f"upstream: {args.upstream or f'scripted, {args.decode_ms:g} ms per completion'}")
    print(
        f"latency p50: direct {p50(direct) * 1e3:.2f} ms, through the sandbox proxy {p50(proxied) * 1e3:.2f} ms "
        f"(+{(p50(proxied) - p50(direct)) * 1e3:.2f} ms) -> ratio {lat_ratio:.3f} (target <= 1.05)"
    )
    print(
        f"throughput with {args.sandboxes} concurrent, median of {args.pairs} rounds: direct "
        f"{p50(direct_side.rates):.1f} req/s, through sandboxes {p50(proxy.rates):.1f} req/s -> ratio "
        f"{tput_ratio:.3f} (target >= 0.9); per round {', '.join(f'{r:.3f}' for r in ratios)}"
    )
    for side in sides:
        print(f"  CPU ms per call, {side.name}: {side.cpu_ms_per_call()}")
    print(f"  chunks recorded: {recorded}")
    print(
        json.dumps(
            {
                "bench": "gateway",
                "ratio": round(lat_ratio, 4),
                "latency_ratio": round(lat_ratio, 4),
                "throughput_ratio": round(tput_ratio, 4),
                "throughput_ratios": [round(r, 4) for r in ratios],
                "p50_direct_ms": round(p50(direct) * 1e3, 3),
                "p50_proxy_ms": round(p50(proxied) * 1e3, 3),
                "overhead_ms": round((p50(proxied) - p50(direct)) * 1e3, 3),
                "throughput_direct_rps": round(p50(direct_side.rates), 2),
                "throughput_proxy_rps": round(p50(proxy.rates), 2),
                "cpu_ms_per_call": {side.name: side.cpu_ms_per_call() for side in sides},
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
