"""Fixtures for the rome tests: a fresh ROME-tiny, a copy overfit to emit one tool call, servers.

Run: `.venv/bin/pytest tests/rome` (add `-m "not slow"` to skip the vLLM tests).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rome.tokenizer.corpus import TOOLS

# The one exchange the overfit model learns: with these tools and this request it calls write_file.
TOOL_SPECS = [{"type": "function", "function": t} for t in TOOLS if t["name"] in ("write_file", "read_file")]
TOOL_PROMPT = [
    {"role": "system", "content": "You are a terminal agent."},
    {"role": "user", "content": "Create hello.txt containing hi."},
]
TOOL_CALL = {"name": "write_file", "arguments": {"path": "hello.txt", "content": "hi"}}


def overfit_tool_call(src: Path, dst: Path, steps: int = 50) -> float:
    """Train src's weights on TOOL_PROMPT -> TOOL_CALL until it reproduces it; save to dst. Returns the loss."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    prompt = tok.apply_chat_template(TOOL_PROMPT, tools=TOOL_SPECS, tokenize=False, add_generation_prompt=True)
    reply = [
        *TOOL_PROMPT,
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": TOOL_CALL}]},
    ]
    full = tok.apply_chat_template(reply, tools=TOOL_SPECS, tokenize=False).rstrip("\n")
    assert full.startswith(prompt)
    p_ids = tok.encode(prompt, add_special_tokens=False)
    ids = torch.tensor([tok.encode(full, add_special_tokens=False)])
    labels = ids.clone()
    labels[0, : len(p_ids)] = -100  # learn the reply only
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    shutil.copytree(src, dst)
    model.save_pretrained(dst, safe_serialization=True)
    return loss.item()


@pytest.fixture(scope="session")
def tool_case() -> dict:
    """The exchange toolcall_dir was overfit on: prompt messages, tool specs, the expected call."""
    return {"messages": TOOL_PROMPT, "tools": TOOL_SPECS, "call": TOOL_CALL}


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from rome.init import init_model

    return init_model(tmp_path_factory.mktemp("rome") / "tiny", config="tiny", seed=0)


@pytest.fixture(scope="session")
def toolcall_dir(tiny_dir, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("rome") / "tiny-toolcall"
    loss = overfit_tool_call(tiny_dir, dst)
    assert loss < 0.05, f"overfitting the tool call did not converge (loss {loss:.3f})"
    return dst


@pytest.fixture(scope="session")
def hf_server(tiny_dir):
    from rome.serving.server import start_server

    handle = start_server(tiny_dir, engine="hf", admin_token="admin-secret")
    yield handle
    handle.stop()
