"""The gateway in front of the real model server (`rome serve` on ROME-tiny, HF engine):
`.venv/bin/pytest tests/gateway/test_rome_upstream.py` (slow: builds the tiny model, loads it).

The recorded chunk must carry exactly the token ids, logprobs and policy version that rome
returned, and its response token ids must decode to the text the agent got.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest
from gwtools import post, recorded, stream_events

pytestmark = pytest.mark.slow
ASK = {
    "model": "rome-tiny",
    "messages": [{"role": "user", "content": "list the files"}],
    "max_tokens": 8,
    "temperature": 1.0,
}


@pytest.fixture(scope="module")
def rome(tmp_path_factory):
    from rome.init import init_model

    model_dir = init_model(tmp_path_factory.mktemp("rome") / "tiny")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "rome.cli", "serve", "--model", str(model_dir), "--port", str(port), "--engine", "hf"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, "rome serve exited"
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield url + "/v1", model_dir
    finally:
        proc.terminate()
        proc.wait(30)


def test_chunks_match_rome_exactly(harness, rome):
    from tokenizers import Tokenizer

    upstream, model_dir = rome
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    h = harness(upstream)
    att = h.attach("sbx1")
    url = h.proxy(att)
    # This client asks for the extras itself, so it sees what rome sent and can compare.
    status, reply = post(
        url, "/chat/completions", dict(ASK, logprobs=True, return_token_ids=True), att.token, timeout=300
    )
    assert status == 200, reply
    events, _, _ = stream_events(url, "/chat/completions", ASK, att.token)
    whole, streamed = recorded(h.gw, "sbx1")

    choice = reply["choices"][0]
    assert whole.prompt_token_ids == reply["prompt_token_ids"]
    assert whole.response_token_ids == choice["token_ids"]
    assert whole.response_logprobs == [t["logprob"] for t in choice["logprobs"]["content"]]
    assert whole.policy_version == reply["policy_version"] == 0
    assert tok.decode(whole.response_token_ids, skip_special_tokens=False).startswith(whole.response.text)

    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
    assert streamed.response.text == text
    assert len(streamed.response_token_ids) == len(streamed.response_logprobs) > 0
    assert streamed.prompt_token_ids == whole.prompt_token_ids and streamed.policy_version == 0
    assert all("token_ids" not in e["choices"][0] for e in events if e.get("choices"))
