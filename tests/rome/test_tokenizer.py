"""Tokenizer, chat template and tool-call parser: .venv/bin/pytest tests/rome/test_tokenizer.py"""

from __future__ import annotations

import json

import pytest

from rome.tokenizer.chat import parse_tool_calls, render_messages
from rome.tokenizer.corpus import TOOLS, agentic_corpus

SAMPLES = [
    "ls -la /tmp && echo 'done' > out.txt",
    'def f(x):\n    return {"a": [1, 2.5, None]}\n',
    "Ünïcödé, 中文, emoji 🙂 and tabs\tkept",
    '<tool_call>\n{"name": "read_file", "arguments": {"path": "/a b"}}\n</tool_call>',
]


def test_corpus_is_deterministic_and_agentic():
    a, b = agentic_corpus(seed=3, n_docs=200), agentic_corpus(seed=3, n_docs=200)
    assert a == b and a != agentic_corpus(seed=4, n_docs=200)
    text = "\n".join(a)
    assert "<tool_call>" in text and "<|im_start|>assistant" in text and "$ " in text


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tiny_dir, text):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert len(tok) <= 1024


def test_markup_tokens_are_single_and_survive_skip_special(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    for t in ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<tool_response>"]:
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
    ids = tok.encode("<tool_call>x</tool_call><|im_end|>", add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == "<tool_call>x</tool_call>"


def test_saved_template_renders_like_ours(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    msgs = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": "ok",
            "tool_calls": [{"type": "function", "function": {"name": "read_file", "arguments": '{"path": "/x"}'}}],
        },
        {"role": "tool", "content": "X"},
    ]
    tools = [{"type": "function", "function": TOOLS[1]}]
    hf = tok.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=True)
    assert hf == render_messages(msgs, tools=tools, add_generation_prompt=True)


def test_template_layout():
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"type": "function", "function": {"name": "a", "arguments": {"x": 1}}},
                {"type": "function", "function": {"name": "b", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "content": "r1"},
        {"role": "tool", "content": "r2"},
    ]
    out = render_messages(msgs, tools=[TOOLS[0]], add_generation_prompt=True)
    assert out.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert "<tools>\n" + json.dumps(TOOLS[0]) + "\n</tools>" in out
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
        '<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call><|im_end|>\n'
    ) in out
    assert (
        "<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response><|im_end|>\n"
        in out
    )
    assert out.endswith("<|im_start|>assistant\n")
    assert render_messages([{"role": "user", "content": "q"}]) == "<|im_start|>user\nq<|im_end|>\n"


def test_parser_plain_text():
    assert parse_tool_calls("just text") == ("just text", [])


def test_parser_one_call_with_content():
    content, calls = parse_tool_calls(
        'Let me look.\n<tool_call>\n{"name": "read_file", "arguments": {"path": "/a"}}\n</tool_call>'
    )
    assert content == "Let me look."
    assert [c["function"]["name"] for c in calls] == ["read_file"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"path": "/a"}
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")


def test_parser_two_calls_and_missing_close_at_end():
    text = '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n<tool_call>\n{"name": "b", "arguments": {"k": [1]}}'
    content, calls = parse_tool_calls(text)
    assert content is None
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("a", {}),
        ("b", {"k": [1]}),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        "<tool_call>\n{not json}\n</tool_call>",
        '<tool_call>{"arguments": {}}</tool_call>',
        '<tool_call>{"name": "a", "arguments": "x=1"}</tool_call>',
        '<tool_call>["a"]</tool_call>',
    ],
)
def test_parser_malformed_calls_stay_text(bad):
    assert parse_tool_calls(bad) == (bad, [])


def test_init_from_corpus_files_loads_with_auto_classes(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rome.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(agentic_corpus(seed=1, n_docs=300)))
    out = tmp_path / "model"
    assert main(["init", "--config", "tiny", "--out", str(out), "--corpus", str(corpus), "--seed", "2"]) == 0
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not list(tmp_path.glob(".model.*"))  # no temp dir left behind
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(tok) <= model.config.vocab_size == 1024
    assert tok.decode(tok.encode("$ cat /app/notes.txt", add_special_tokens=False)) == "$ cat /app/notes.txt"


def test_init_bad_input_is_one_line(tmp_path, capsys):
    from rome.cli import main

    assert main(["init", "--out", str(tmp_path / "m"), "--corpus", str(tmp_path / "missing.txt")]) == 2
    assert main(["init", "--config", "huge", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "missing.txt" in err[0] and "rome-tiny" in err[1]
    assert not (tmp_path / "m").exists()
