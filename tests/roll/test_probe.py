"""The copy probe (roll/stages/probe.py): its cases are the golden first calls, its scoring is greedy exact match."""

from __future__ import annotations

import types

import pytest
import torch

from roll.stages import probe


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from rome.init import init_model

    return init_model(tmp_path_factory.mktemp("m") / "tiny", "tiny", seed=0)


class _Oracle(torch.nn.Module):
    """Logits that put all mass on the next token of the sequence; for prompts starting with one of
    `wrong_family_prompts` (first 8 ids), the reply's last token is wrong."""

    def __init__(self, wrong_family_prompts=()):
        super().__init__()
        self.wrong = set(wrong_family_prompts)

    def forward(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, 1024)
        nxt = torch.roll(input_ids, -1, dims=1)
        logits.scatter_(2, nxt.unsqueeze(-1), 1.0)
        for i in range(input_ids.shape[0]):
            if tuple(input_ids[i, :8].tolist()) in self.wrong:
                last = int(attention_mask[i].sum()) - 2
                logits[i, last] = 0
                logits[i, last, (nxt[i, last] + 1) % 1024] = 1.0  # one wrong token at the end of the reply
        return types.SimpleNamespace(logits=logits)


def test_cases_are_held_out_golden_first_calls(model_dir):
    from roll.sft.render import load_tokenizer

    tok = load_tokenizer(str(model_dir))
    cases = probe.probe_cases(["create_file", "symlink"], 2, tok)
    assert [c[0] for c in cases] == ["create_file", "create_file"]  # held-out-only families are not probed
    text = tok.decode(cases[0][2])
    assert '"name": "write_file"' in text and "/app/" in text and text.endswith("<|im_end|>")


def test_scores_a_perfect_model_100_and_a_wrong_token_as_a_miss(model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: _Oracle())
    assert probe.copy_probe(model_dir, ["make_dir"], per_family=3)["overall"] == 100.0
    from roll.sft.render import load_tokenizer

    first = probe.probe_cases(["make_dir"], 3, load_tokenizer(str(model_dir)))[0][1][:8]
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: _Oracle({tuple(first)}))
    out = probe.copy_probe(model_dir, ["make_dir"], per_family=3)
    assert out["cases"] == 3 and out["by_family"]["make_dir"] < 100.0
    # the miss says which case, what greedy wrote up to its first wrong token, and the token it should have been
    tok = load_tokenizer(str(model_dir))
    cases = probe.probe_cases(["make_dir"], 3, tok)
    missed = [c for c in cases if tuple(c[1][:8]) == tuple(first)]
    assert len(out["misses"]) == len(missed) == round(3 * (1 - out["by_family"]["make_dir"] / 100))
    for miss, case in zip(out["misses"], missed, strict=True):
        assert miss["family"] == "make_dir" and miss["instruction"] == case[3]
        assert miss["wanted"] == tok.decode(case[2][-1:]) and miss["wrote"].startswith(tok.decode(case[2][:-1]))
        assert miss["wrote"] != tok.decode(case[2])
    assert probe.copy_probe(model_dir, ["rename_file"], per_family=2)["misses"] == []  # the oracle without a miss


def test_random_weights_copy_nothing(model_dir):
    out = probe.copy_probe(model_dir, ["create_file"], per_family=4)
    assert out["overall"] == 0.0 and out["cases"] == 4
