"""`rome convert`: a real DeepSpeed ZeRO-2 checkpoint (CPU, gloo) -> HF dir: .venv/bin/pytest tests/rome/test_convert.py"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rome.cli import main

# One optimiser step of ROME-tiny under DeepSpeed ZeRO-2, then save_checkpoint and the live weights.
TRAIN = textwrap.dedent("""
    import sys, torch, deepspeed
    from transformers import AutoModelForCausalLM
    model_dir, ckpt, expected = sys.argv[1:]
    deepspeed.init_distributed("gloo")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = {"train_batch_size": 1, "zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
                                      config=config)
    ids = torch.arange(3, 40)[None]
    engine.backward(engine(input_ids=ids, labels=ids).loss)
    engine.step()
    engine.save_checkpoint(ckpt)
    torch.save({k: v.detach().clone() for k, v in engine.module.state_dict().items()}, expected)
""")


@pytest.mark.slow
def test_zero2_checkpoint_converts_to_the_trained_weights(tiny_dir, tmp_path, capsys):
    ckpt, expected = tmp_path / "ckpt", tmp_path / "expected.pt"
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_port()),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }
    subprocess.run(
        [sys.executable, "-c", TRAIN, str(tiny_dir), str(ckpt), str(expected)],
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    out = tmp_path / "hf"
    assert main(["convert", "--checkpoint", str(ckpt), "--model", str(tiny_dir), "--out", str(out)]) == 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    converted = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    original = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).state_dict()
    trained = torch.load(expected)
    assert set(converted) == set(trained)
    for k, v in trained.items():
        assert torch.equal(converted[k], v), k
    assert not torch.equal(converted["lm_head.weight"], original["lm_head.weight"])
    assert AutoTokenizer.from_pretrained(out).chat_template


def test_bad_checkpoint_dir_is_one_line(tiny_dir, tmp_path, capsys):
    assert (
        main(
            ["convert", "--checkpoint", str(tmp_path / "nope"), "--model", str(tiny_dir), "--out", str(tmp_path / "o")]
        )
        == 2
    )
    (tmp_path / "empty").mkdir()
    assert (
        main(
            ["convert", "--checkpoint", str(tmp_path / "empty"), "--model", str(tiny_dir), "--out", str(tmp_path / "o")]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "checkpoint dir not found" in err[0] and "latest" in err[1]


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
