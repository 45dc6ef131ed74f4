"""The CUDA code paths, under the `gpu` marker (skipped without a CUDA device; scripts/gpu_checks.sh runs them on a
machine lent a GPU): `python3 -m pytest -m gpu tests/roll/test_gpu_paths.py`.

- a trainer step in bf16 under ZeRO-2 and ZeRO-3 (the 30B recipe's stage): finite loss, weights move, bf16 on cuda;
- weight sync over NCCL: a policy's tensors in buckets of whole layers (rome.serving.weights' grouping), one
  bucket of extra memory at a time, broadcast from a trainer rank to an engine rank on another GPU (needs 2 GPUs);
- colocated sleep/wake: a CUDA vLLM engine sleeps (frees its KV cache and offloads weights), the memory comes
  back to the device, it wakes and samples the same greedy tokens (needs CUDA vLLM).
The bucket sync also runs here on CPU over gloo (slow marker): the same code, so its bookkeeping is tested.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
from trainer_helpers import make_sequences, small_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return small_model_dir(tmp_path_factory.mktemp("models"), hidden=64)


@pytest.mark.gpu
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_trainer_step_in_bf16(model_dir, tmp_path, zero_stage):
    from roll.trainer import SupervisedTrainer, TrainerConfig

    cfg = TrainerConfig(device="cuda", zero_stage=zero_stage, batch_sequences=4, lr=1e-2, progress=False,
                        shared_prefix=zero_stage < 3)  # fmt: skip
    assert cfg.torch_dtype == "bfloat16"
    trainer = SupervisedTrainer(model_dir, cfg, tmp_path / f"zero{zero_stage}")
    before = {k: v.detach().float().cpu().clone() for k, v in trainer.state_dict().items()}
    rows = []
    trainer.fit(make_sequences(4, prefix_len=40), steps=2, on_step=rows.append)
    after = {k: v.detach().float().cpu() for k, v in trainer.state_dict().items()}
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert next(trainer.model.parameters()).dtype == torch.bfloat16
    assert next(trainer.model.parameters()).device.type == "cuda"
    moved = max((after[k] - before[k]).abs().max().item() for k in before)
    assert moved > 1e-4, "the bf16 step did not change the weights"


def _sync_rank(rank: int, store: str, model_dir: str, bucket_bytes: int, result: dict, device: str) -> None:
    """Rank 0 (trainer) broadcasts its weights bucket by bucket; rank 1 (engine) rebuilds and compares them."""
    import torch.distributed as dist
    from safetensors.torch import load_file

    from rome.serving.weights import layer_key

    where = f"cuda:{rank}" if device == "cuda" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(rank)
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=2)
    tensors = load_file(os.path.join(model_dir, "model.safetensors"), device=where)
    tensors = {k: v.to(torch.bfloat16) for k, v in tensors.items()}
    groups: dict[str, list[str]] = {}
    for name in sorted(tensors):
        groups.setdefault(layer_key(name), []).append(name)
    buckets, current, size = [], [], 0
    for names in groups.values():  # whole layers per bucket, a bigger layer alone
        layer = sum(tensors[n].numel() * tensors[n].element_size() for n in names)
        if current and size + layer > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current, size = current + names, size + layer
    buckets.append(current)
    received, peak = {}, 0
    for names in buckets:
        meta = [(n, tuple(tensors[n].shape)) for n in names]
        nbytes = sum(tensors[n].numel() * 2 for n in names)
        if rank == 0:
            flat = torch.cat([tensors[n].reshape(-1).view(torch.uint8) for n in names])
        else:
            flat = torch.empty(nbytes, dtype=torch.uint8, device=where)
        peak = max(peak, flat.numel())
        dist.broadcast(flat, src=0)
        offset = 0
        for n, shape in meta:
            count = int(torch.tensor(shape).prod()) * 2
            received[n] = flat[offset : offset + count].view(torch.bfloat16).reshape(shape).clone()
            offset += count
        del flat
    if device == "cuda":
        torch.cuda.synchronize()
    if rank == 1:
        # the engine rank's own copy (loaded from the same file) is the reference the sync must reproduce
        result["equal"] = all(torch.equal(received[n], tensors[n]) for n in tensors)
        result["buckets"], result["peak"] = len(buckets), peak
        result["total"] = sum(t.numel() * 2 for t in tensors.values())
    dist.destroy_process_group()


def _sync_main(rank: int, store: str, model_dir: str, bucket_bytes: int, out: str, device: str) -> None:
    result: dict = {}
    _sync_rank(rank, store, model_dir, bucket_bytes, result, device)
    if rank == 1:
        torch.save(result, out)


def _bucket_sync(model_dir, tmp_path, device: str) -> dict:
    import torch.multiprocessing as mp

    store, out = tempfile.mktemp(dir=tmp_path), str(tmp_path / "result.pt")
    mp.spawn(_sync_main, args=(store, str(model_dir), 64 << 10, out, device), nprocs=2, join=True)
    return torch.load(out)


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.slow)])
def test_bucket_sync_over_gloo(model_dir, tmp_path, device):
    """The same code as the NCCL test, on CPU with gloo: what runs here proves the test's own bookkeeping."""
    result = _bucket_sync(model_dir, tmp_path, device)
    assert result["equal"] and result["buckets"] > 1 and result["peak"] < result["total"]


@pytest.mark.gpu
def test_nccl_weight_sync_in_buckets_of_whole_layers(model_dir, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("NCCL sync between a trainer and an engine rank needs 2 GPUs (NCCL refuses two ranks on one)")
    result = _bucket_sync(model_dir, tmp_path, "cuda")
    assert result["equal"], "the engine rank's tensors differ from the trainer's after the sync"
    assert result["buckets"] > 1 and result["peak"] < result["total"]  # bucketed: never the whole policy at once


@pytest.mark.gpu
def test_colocated_sleep_frees_the_device_and_wake_restores_sampling(tmp_path):
    vllm = pytest.importorskip("vllm", reason="CUDA vLLM is not installed here")
    from vllm.platforms import current_platform

    if not current_platform.is_cuda():
        pytest.skip("this vLLM is not the CUDA build")
    from rome.init import init_model

    model = init_model(tmp_path / "tiny", "tiny")
    llm = vllm.LLM(model=str(model), enable_sleep_mode=True, gpu_memory_utilization=0.3, max_model_len=512,
                   enforce_eager=True, seed=0)  # fmt: skip
    greedy = vllm.SamplingParams(temperature=0, max_tokens=16)
    prompt = {"prompt_token_ids": list(range(10, 40))}
    before = llm.generate([prompt], greedy)[0].outputs[0].token_ids
    free_awake = torch.cuda.mem_get_info()[0]
    llm.sleep(level=1)  # weights to host memory, KV cache discarded
    free_asleep, total = torch.cuda.mem_get_info()
    assert free_asleep - free_awake > 0.2 * total, "sleep did not give the device's memory back"
    llm.wake_up()
    llm.reset_prefix_cache()
    after = llm.generate([prompt], greedy)[0].outputs[0].token_ids
    assert list(after) == list(before), "after wake the engine samples different tokens"
