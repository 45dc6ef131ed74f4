"""Colocated mode (roll/colocate.py): `.venv/bin/pytest tests/roll/test_colocated.py` (the state machine, a second);
`-m "docker and slow"` adds `roll train` colocated end to end (vLLM CPU, iflow in ROCK sandboxes, DeepSpeed).

The machine runs here on stand-in resources that keep their state as vLLM and DeepSpeed would (and can be told to
ignore a call, as a vLLM without sleep mode would): phase order, the resource states per device, the order of the
steps (free before take), the refusals, and the time accounting on a fake clock.
"""

from __future__ import annotations

import pytest

from roll.colocate import ColocateError, Colocation


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeEngines:
    def __init__(self, log: list, ignore: tuple = ()):
        self.s, self.log, self.ignore = "awake", log, ignore

    def state(self):
        return self.s

    def _set(self, call: str, s: str) -> None:
        self.log.append(f"engines.{call}")
        if call not in self.ignore:
            self.s = s

    def pause(self):
        self._set("pause", "paused")

    def resume(self):
        self._set("resume", "awake")

    def sleep(self):
        self._set("sleep", "asleep")

    def wake_up(self, tags):
        self._set(f"wake_up({tags})", "weights" if tags == ["weights"] else "awake")


class FakeTrainer:
    def __init__(self, log: list):
        self.s, self.log = "onloaded", log

    def state(self):
        return self.s

    def offload(self):
        self.log.append("trainer.offload")
        self.s = "offloaded"

    def onload(self):
        self.log.append("trainer.onload")
        self.s = "onloaded"


def machine(device: str, ignore: tuple = (), clock=None):
    log: list[str] = []
    m = Colocation(device, FakeEngines(log, ignore), FakeTrainer(log), clock=clock or Clock())
    return m, log


def test_cuda_states_and_step_order_free_memory_before_taking_it():
    m, log = machine("cuda")
    m.enter("rollout")
    assert log == ["trainer.offload"] and m.engines.s == "awake"
    log.clear()
    m.enter("train")
    assert log == ["engines.sleep", "trainer.onload"]  # the engines give the device back before the trainer takes it
    log.clear()
    m.enter("sync")
    assert log == ["engines.wake_up(['weights'])"] and m.trainer.s == "onloaded"
    log.clear()
    m.enter("rollout")
    assert log == ["trainer.offload", "engines.wake_up(['kv_cache'])"]


def test_cpu_pauses_the_engines_while_the_trainer_runs_and_never_moves_the_trainer():
    m, log = machine("cpu")
    m.enter("rollout")
    m.enter("train")
    assert m.engines.s == "paused"
    m.enter("sync")
    m.engines.s = "awake"  # the weight update resumes generation when it is done (rome's VLLMEngine)
    m.enter("idle")
    m.enter("rollout")
    assert log == ["engines.pause"]  # the sync left them awake: nothing to do for the rollout
    assert "trainer.offload" not in log


@pytest.mark.parametrize(
    ("path", "bad", "says"),
    [
        ([], "train", "illegal transition idle -> train: after idle comes rollout"),
        (["rollout"], "sync", "illegal transition rollout -> sync: after rollout comes train"),
        (["rollout"], "rollout", "illegal transition rollout -> rollout"),
        (["rollout"], "idle", "illegal transition rollout -> idle"),
        (["rollout", "train", "sync"], "train", "illegal transition sync -> train"),
    ],
)
def test_illegal_transitions_are_refused_and_the_phase_stays(path, bad, says):
    m, _ = machine("cpu")
    for p in path:
        m.enter(p)
    with pytest.raises(ColocateError, match=says.replace("(", r"\(")):
        m.enter(bad)
    assert m.phase == (path[-1] if path else "idle")


def test_a_skipped_update_goes_from_train_back_to_rollout():
    m, _ = machine("cuda")
    for p in ("rollout", "train", "rollout", "train", "idle", "rollout"):
        m.enter(p)
    assert (m.engines.s, m.trainer.s) == ("awake", "offloaded")


def test_train_while_the_engines_are_awake_on_cuda_is_refused():
    # a vLLM started without sleep mode ignores sleep: the trainer must not be put beside an engine that holds the GPU
    m, log = machine("cuda", ignore=("sleep",))
    m.enter("rollout")
    with pytest.raises(ColocateError, match="train refused on cuda: the engines are awake, train needs them asleep"):
        m.enter("train")
    assert m.phase == "rollout"


def test_train_while_the_engines_still_generate_on_cpu_is_refused():
    m, _ = machine("cpu", ignore=("pause",))
    m.enter("rollout")
    with pytest.raises(ColocateError, match="train refused on cpu: the engines are awake, train needs them paused"):
        m.enter("train")


def test_a_state_with_no_way_to_the_next_is_refused_by_name():
    m, _ = machine("cuda")
    m.enter("rollout")
    m.enter("train")
    m.enter("sync")
    m.engines.s = "paused"  # no step from paused to weights
    m.phase = "train"  # pretend: force a second sync
    with pytest.raises(ColocateError, match="no way to move FakeEngines from paused to weights"):
        m.enter("sync")


def test_work_outside_its_phase_is_refused():
    m, _ = machine("cpu")
    m.enter("rollout")
    m.require("rollout")
    with pytest.raises(ColocateError, match="train work refused: the colocated phase is rollout"):
        m.require("train")


def test_unknown_device_is_refused():
    with pytest.raises(ColocateError, match="device 'tpu'"):
        machine("tpu")


class SlowEngines(FakeEngines):
    """Each call takes 0.5 s on the clock (a sleep or a pause is not free)."""

    def __init__(self, log, clock):
        super().__init__(log)
        self.clock = clock

    def _set(self, call, s):
        self.clock.t += 0.5
        super()._set(call, s)


def test_time_is_charged_to_phases_switches_and_idle_and_busy_fractions_follow():
    clock = Clock()
    log: list[str] = []
    m = Colocation("cpu", SlowEngines(log, clock), FakeTrainer(log), clock=clock)
    clock.t += 1.0  # before the first rollout: idle
    m.enter("rollout")
    clock.t += 10.0
    m.enter("train")  # pause: 0.5 s switch
    clock.t += 5.0
    m.enter("sync")
    clock.t += 2.0
    m.enter("idle")
    clock.t += 1.5
    lap = m.lap()
    assert lap["rollout_s"] == 10.0 and lap["train_s"] == 5.0 and lap["sync_s"] == 2.0
    assert lap["switch_s"] == 0.5 and lap["idle_s"] == 3.0  # 1.0 + 1.5 idle, 0.5 switching
    assert lap["wall_s"] == 20.0
    assert lap["busy_frac_shared"] == 0.85  # 17 / 20
    assert lap["busy_frac_engines"] == 0.6  # (10 + 2) / 20
    assert lap["busy_frac_trainer"] == 0.35  # (5 + 2) / 20
    assert lap["busy_frac_shared_run"] == 0.85
    # second lap: only what happened since; the run's fraction covers both
    m.enter("rollout")  # resume: 0.5 s
    clock.t += 9.5
    m.enter("train")  # 0.5 s
    clock.t += 10.0
    lap2 = m.lap()
    assert lap2["wall_s"] == 20.5 and lap2["rollout_s"] == 9.5 and lap2["train_s"] == 10.0
    assert lap2["busy_frac_shared"] == round(19.5 / 20.5, 4)
    assert lap2["busy_frac_shared_run"] == round(36.5 / 40.5, 4)
    assert m.totals()["wall_s"] == 40.5


def test_config_accepts_colocated_and_refuses_it_without_vllm(tmp_path):
    from roll.config import RunConfig

    base = {"name": "c", "model": {"dir": str(tmp_path)}, "train": {"mode": "colocated"}}
    assert RunConfig.model_validate(base).train.mode == "colocated"
    with pytest.raises(ValueError, match="train.mode colocated needs inference.engine vllm"):
        RunConfig.model_validate(base | {"inference": {"engine": "hf"}})


@pytest.mark.slow
@pytest.mark.docker
def test_roll_train_colocated_end_to_end(tmp_path, docker_client):
    """Real `roll train` in colocated mode (vLLM CPU, iflow in ROCK sandboxes, DeepSpeed, in-memory syncs; about 3
    minutes): the machine read the engine's real pause state at every train phase (a failed pause stops the run),
    the weights synced after the pause reach the next rollout, and every second of an iteration is in a phase."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    argv = [str(Path(sys.executable).with_name("roll")), "train", "configs/rl/tiny-cpu.yaml", "name=colocated",
            f"runs_dir={tmp_path}", f"model.dir={tmp_path}/init", "curriculum.enabled=false", "train.mode=colocated",
            "train.iterations=2", "train.lr=1e-3", "tasks.families=[create_file]", "tasks.train_per_family=4",
            "rollout.tasks_per_iteration=1", "rollout.group_size=2", "rollout.oracle_per_group=0",
            "rollout.resample.enabled=false", "agent.max_turns=2", "agent.max_tokens=16"]  # fmt: skip
    proc = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "colocated: idle" in proc.stdout and "colocated: the shared device busy" in proc.stdout
    steps = [json.loads(line) for line in (tmp_path / "colocated" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 2 and [m["policy_version"] for m in steps] == [1, 2]
    for m in steps:
        assert m["rollout_s"] > 0 and m["train_s"] > 0 and m["sync_s"] > 0 and not m["skipped"]
        parts = m["rollout_s"] + m["train_s"] + m["sync_s"] + m["idle_s"]
        assert abs(parts - m["wall_s"]) < 0.01
        assert 0 < m["busy_frac_shared"] <= 1
        assert m["busy_frac_engines"] + m["busy_frac_trainer"] == pytest.approx(
            m["busy_frac_shared"] + m["sync_s"] / m["wall_s"], abs=2e-3
        )
    rows = [json.loads(line) for line in (tmp_path / "colocated" / "trajectories.jsonl").read_text().splitlines()]
    second = [c for r in rows if r["iteration"] == 2 for c in r["chunks"] if c["response_token_ids"]]
    assert second and all(c["policy_version"] == 1 for c in second)  # sampled after the sync of iteration 1


@pytest.mark.gpu
def test_cuda_rollout_train_sync_cycle_frees_the_device_and_samples_again(tmp_path, monkeypatch):
    """The CUDA rows on a real engine: the inference worker (in-process, no Ray) through the same functions the
    actor adapter runs; train frees the device's memory (sleep level 1), sync wakes the weights only, rollout
    samples the same greedy tokens. Needs CUDA vLLM, and rome's VLLMEngine started with enable_sleep_mode."""
    vllm = pytest.importorskip("vllm", reason="CUDA vLLM is not installed here")
    from vllm.platforms import current_platform

    if not current_platform.is_cuda():
        pytest.skip("this vLLM is not the CUDA build")
    import asyncio
    import uuid

    import torch

    from roll import colocate
    from roll.workers.inference import InferenceServer
    from rome.init import init_model

    class InProcessEngines:
        def __init__(self, server):
            self.server = server

        def state(self):
            return colocate._engine_state(self.server)

        def pause(self):
            colocate._engine_call(self.server, "pause_generation", mode="abort", clear_cache=False)

        def resume(self):
            colocate._engine_call(self.server, "resume_generation")

        def sleep(self):
            colocate._engine_sleep(self.server)

        def wake_up(self, tags):
            colocate._engine_wake_up(self.server, tags)

    class Trainer:  # the trainer's side is DeepSpeed's offload_states, not exercised here
        s = "onloaded"

        def state(self):
            return self.s

        def offload(self):
            self.s = "offloaded"

        def onload(self):
            self.s = "onloaded"

    monkeypatch.setenv("ROME_VLLM_SLEEP_MODE", "1")  # as `roll train` sets it for colocated mode
    server = InferenceServer(str(init_model(tmp_path / "tiny", "tiny")))
    try:
        llm = server._handle.service.engine.llm
        greedy = vllm.SamplingParams(temperature=0, max_tokens=8)

        def sample() -> list[int]:
            async def go():
                async for out in llm.generate({"prompt_token_ids": list(range(10, 40))}, greedy, uuid.uuid4().hex):
                    last = out
                return list(last.outputs[0].token_ids)

            return asyncio.run_coroutine_threadsafe(go(), server._handle._loop).result(120)

        m = Colocation("cuda", InProcessEngines(server), Trainer())
        m.enter("rollout")
        before, free_awake = sample(), torch.cuda.mem_get_info()[0]
        m.enter("train")
        assert torch.cuda.mem_get_info()[0] > free_awake, "train: the engines' sleep gave no memory back"
        m.enter("sync")
        m.enter("rollout")
        assert sample() == before
    finally:
        server.stop()
