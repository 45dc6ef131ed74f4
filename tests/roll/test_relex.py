"""Relexicalised trajectories (roll/sft/relex.py): the instance's words replaced everywhere, the protocol untouched."""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter

import pytest

from rock.contracts import Chunk, ChunkResponse, ToolCall, ToolResult, Trajectory
from roll.sft.relex import LS_TIME, WordStyle, augment, instance_words, mapping, pseudo_word, relexicalize, restamp
from roll.tasks.suite import generate
from roll.tasks.words import vocab_split

SYSTEM = {"role": "system", "content": "You are iflow. Use the tools; give a path to write_file."}
TOOLS = [{"type": "function", "function": {"name": "write_file", "parameters": {"type": "object", "properties": {
    "path": {"type": "string"}, "content": {"type": "string"}}}}}]  # fmt: skip


def _trajectory(family: str = "create_file", seed: int = 3) -> Trajectory:
    task = generate(family, seed)
    args = {"path": task.solution_steps and "/app/x.txt", "content": "y"}
    words = instance_words(family, seed)
    text = " ".join(words)
    call = ToolCall(id="c0", function={"name": "write_file", "arguments": json.dumps({**args, "content": text})})
    chunk0 = Chunk(trajectory_id="t", sandbox_id="s", index=0, latency_s=0.1, created_at=0.0, tools=TOOLS,
                   messages=[SYSTEM, {"role": "user", "content": task.instruction}],
                   response=ChunkResponse(text="", tool_calls=[call]),
                   prompt_token_ids=[1, 2], response_token_ids=[3])  # fmt: skip
    tool_msg = {"role": "tool", "tool_call_id": "c0", "content": f"wrote {len(text)} bytes: {text}"}
    chunk1 = chunk0.model_copy(update={
        "index": 1, "messages": [*chunk0.messages, {"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
                                 tool_msg], "response": ChunkResponse(text=f"Done: {text}")})  # fmt: skip
    return Trajectory(trajectory_id="t", task_id=task.id, family=family, split="train", reward=1.0, status="resolved",
                      chunks=[chunk0, chunk1], tool_results=[ToolResult(chunk_index=0, tool="write_file", parsed=True,
                      ok=True, error=f"no {words[0]}")])  # fmt: skip


def test_instance_words_are_the_ones_the_instruction_uses():
    task = generate("create_file", 3)
    words = instance_words("create_file", 3)
    assert words and all(w in vocab_split("train") for w in words)
    assert all(w in task.instruction for w in words)


def test_every_instance_word_is_replaced_consistently_and_the_protocol_kept():
    traj = _trajectory()
    words = instance_words("create_file", 3)
    new = relexicalize(traj, random.Random(0), pseudo_share=1.0)
    assert new.trajectory_id == "t~relex" and all(c.trajectory_id == "t~relex" for c in new.chunks)
    dump = new.model_dump_json()
    for w in words:
        assert f" {w}" not in dump and f"/{w}" not in dump, w
    # the same replacement everywhere: instruction, call arguments, history, tool message, response text, errors
    instruction = new.chunks[0].messages[1]["content"]
    content = json.loads(new.chunks[0].response.tool_calls[0].function["arguments"])["content"]
    assert all(part in instruction for part in content.split())
    assert new.chunks[1].response.text == f"Done: {content}"
    assert content in new.chunks[1].messages[-1]["content"]
    assert json.loads(new.chunks[1].messages[2]["tool_calls"][0]["function"]["arguments"])["content"] == content
    assert new.tool_results[0].error == f"no {content.split()[0]}"
    # the system prompt, tool schemas and argument names are untouched; token ids are re-rendered later
    assert new.chunks[0].messages[0] == SYSTEM and new.chunks[0].tools == TOOLS
    assert set(json.loads(new.chunks[0].response.tool_calls[0].function["arguments"])) == {"path", "content"}
    assert new.chunks[0].prompt_token_ids is None and new.chunks[0].response_token_ids is None
    assert traj.chunks[0].prompt_token_ids == [1, 2]  # the original is not modified


def test_ls_times_in_tool_results_vary_per_variant_and_stay_consistent_inside_one():
    listing = "total 8\ndrwxr-xr-x 2 root root 4096 Dec  7 10:48 .\ndrwxr-xr-x 1 root root 4096 Mar 14  2025 ..\n"
    traj = _trajectory()
    look = {"role": "tool", "tool_call_id": "c9", "content": listing}
    chunks = [c.model_copy(update={"messages": [*c.messages, look]}) for c in traj.chunks]
    traj = traj.model_copy(update={"chunks": chunks})
    rng = random.Random(0)
    seen = set()
    for _ in range(8):
        new = relexicalize(traj, rng, pseudo_share=1.0)
        shown = [m["content"] for c in new.chunks for m in c.messages if m.get("tool_call_id") == "c9"]
        assert len(set(shown)) == 1  # one trajectory, one listing: the same times in every chunk's history
        times = LS_TIME.findall(shown[0])
        assert len(times) == 2 and "Dec  7 10:48" not in times and "Mar 14  2025" not in times
        assert re.fullmatch(r"[A-Z][a-z]{2} [ 12]\d \d\d:\d\d", times[0]) and re.fullmatch(
            r"[A-Z][a-z]{2} [ 12]\d  \d{4}", times[1]
        )
        assert len(shown[0]) == len(listing)  # the columns stay aligned
        seen.add(shown[0])
        # the system prompt is left alone
        assert new.chunks[0].messages[0] == SYSTEM
    assert len(seen) == 8
    assert restamp("no times here: Dec 7", random.Random(0), {}) == "no times here: Dec 7"


def test_replacements_are_distinct_fresh_and_never_held_out():
    rng = random.Random(1)
    heldout = set(vocab_split("heldout"))
    for _ in range(200):
        words = ["apple", "apples", "river"]
        table = mapping(words, rng, 0.5, list(vocab_split("train")))
        new = list(table.values())
        assert len(set(new)) == 3
        assert not any(a != b and a in b for a in new for b in new)
        assert not heldout & set(new)
    assert len({pseudo_word(rng) for _ in range(500)}) > 400


def test_augment_adds_variants_with_their_own_ids_and_leaves_foreign_tasks_alone():
    traj = _trajectory()
    out = augment([traj], variants=3, seed=0)
    assert [t.trajectory_id for t in out] == ["t", "t~relex0", "t~relex1", "t~relex2"]
    assert len({t.chunks[0].messages[1]["content"] for t in out}) == 4
    foreign = traj.model_copy(update={"task_id": "my-own-task", "family": "other"})
    assert relexicalize(foreign, random.Random(0)) is foreign


def test_fresh_cpt_examples_are_new_instances_with_golden_first_calls():
    import tempfile

    from roll.sft.cpt import fresh_examples
    from rome.init import init_model

    with tempfile.TemporaryDirectory() as d:
        tok_dir = init_model(f"{d}/m", "tiny", seed=0)
        from roll.sft.render import load_tokenizer

        tok = load_tokenizer(str(tok_dir))
        made = fresh_examples(["create_file", "make_dir"], 40, tok, pseudo_share=1.0, seed=0)
    assert [f for _, f in made[:4]] == ["create_file", "make_dir", "create_file", "make_dir"]
    texts = [tok.decode(s.input_ids[1:][s.loss_mask.bool()]) for s, _ in made]  # loss_mask is over targets
    assert all(t.startswith("<tool_call>") and t.endswith("<|im_end|>") for t in texts)
    assert len(set(texts)) == 40  # no two instances share their words
    heldout = set(vocab_split("heldout")) | set(vocab_split("train"))
    assert not any(w in t for t in texts for w in heldout if len(w) > 5)  # pseudo_share 1: made-up words only


def test_fresh_tasks_are_the_same_in_every_process():
    """The same seed gives the same fresh instances whatever the process's string-hash seed (a pool drawn
    through a set once changed with it)."""
    import subprocess
    import sys

    code = ("from roll.sft.cpt import fresh_tasks; "
            "print([t.instruction for t in fresh_tasks(['create_file', 'append_line'], 8, 1.0, 0)])")  # fmt: skip
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(h)}).stdout for h in (1, 2)]  # fmt: skip
    assert runs[0] == runs[1] and runs[0].count("/app/") >= 8


def test_a_fresh_task_that_needs_more_words_than_the_first_pool_gets_the_larger_one(monkeypatch):
    import roll.sft.cpt as cpt

    # rename_file takes 3 words: a first pool of 2 is too few, so every build retries with the larger one
    monkeypatch.setattr(cpt, "POOL_FIRST", 2)
    for share in (0.0, 1.0):  # train words, made-up words
        tasks = cpt.fresh_tasks(["rename_file"], 20, share, 0)
        assert len(tasks) == 20 and len({t.instruction for t in tasks}) == 20
    monkeypatch.setattr(cpt, "POOL_MORE", 2)
    with pytest.raises(ValueError, match="vocabulary too small"):
        cpt.fresh_tasks(["rename_file"], 20, 1.0, 0)


def test_lookalike_words_are_spelled_like_the_train_words_but_never_a_vocabulary_word():
    from roll.sft.relex import lookalike_word

    rng = random.Random(0)
    made = [lookalike_word(rng) for _ in range(2000)]
    train, heldout = set(vocab_split("train")), set(vocab_split("heldout"))
    assert len(set(made)) > 1000
    assert not (train | heldout) & set(made)
    assert not any(h in w for w in made for h in heldout if len(h) >= 4)
    # spelled like the vocabulary: every letter trigram of a made-up word occurs in some train word
    grams = {("^^" + t + "$")[i : i + 3] for t in train for i in range(len(t) + 1)}
    assert all(("^^" + w + "$")[i : i + 3] in grams for w in made for i in range(len(w) + 1))
    # the consonant-vowel words are not: `pseudo_word` mixes the two as `lookalike_share` says
    rng = random.Random(1)
    cv = {pseudo_word(rng, WordStyle(lookalike_share=0.0)) for _ in range(300)}
    mixed = [pseudo_word(rng, WordStyle(lookalike_share=1.0)) for _ in range(300)]
    assert not set(mixed) & (train | heldout)
    spelled = lambda w: all(("^^" + w + "$")[i : i + 3] in grams for i in range(len(w) + 1))  # noqa: E731
    assert all(map(spelled, mixed)) and sum(map(spelled, cv)) < len(cv) / 2


def test_lookalike_share_reaches_the_relexicalised_variants():
    from roll.sft.relex import _letter_chain

    grams = {k + c for k, v in _letter_chain()[0].items() for c in v}
    spelled = lambda w: all(("^^" + w + "$")[i : i + 3] in grams for i in range(len(w) + 1))  # noqa: E731
    traj, original = _trajectory(), set(instance_words("create_file", 3))
    for share, expect in ((1.0, True), (0.0, False)):
        out = augment([traj], variants=10, pseudo_share=1.0, seed=0, style=WordStyle(lookalike_share=share))
        words = [w for t in out[1:] for w in json.loads(t.chunks[0].response.tool_calls[0].function["arguments"])
                 ["content"].split()]  # fmt: skip
        assert len(words) >= 10 and not original & set(words)
        assert (sum(map(spelled, words)) == len(words)) is expect


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    """ROME-tiny's own BPE, as `rome init` trains it."""
    from roll.sft.render import load_tokenizer
    from rome.init import init_model

    return load_tokenizer(str(init_model(str(tmp_path_factory.mktemp("tok") / "m"), "tiny", seed=0)))


def _written(tok, words) -> set[str]:
    """The letter pieces (`letter_pieces` spelling) that writing `words` after a space, alone, or in a path uses."""
    out = set()
    for w in words:
        for form in (" " + w, w, "/" + w):
            out |= {t.replace("Ġ", " ") for t in tok.convert_ids_to_tokens(tok.encode(form, add_special_tokens=False))}
    return out


def test_piece_words_write_every_piece_a_heldout_word_needs(tiny_tokenizer):
    """The train vocabulary's spellings (real or lookalike) leave letter pieces of the tokenizer unwritten, which a
    held-out word may need (`bakery` -> `ery`); piece words write nearly all of them, and still never a vocabulary
    word nor one containing a held-out word."""
    from roll.sft.relex import letter_pieces, lookalike_word, piece_word

    tok = tiny_tokenizer
    pieces = letter_pieces(tok)
    assert len(pieces) > 300 and all(p.strip().isalpha() and p.strip().islower() for p in pieces)
    assert any(p.startswith(" ") for p in pieces) and any(not p.startswith(" ") for p in pieces)
    train, heldout = set(vocab_split("train")), set(vocab_split("heldout"))
    needed = _written(tok, heldout) & set(pieces)
    rng = random.Random(0)
    lookalike = [lookalike_word(rng) for _ in range(3000)] + list(train)
    made = [piece_word(rng, pieces) for _ in range(3000)]
    assert needed - _written(tok, lookalike)  # the gap: held-out pieces the train spellings never write
    assert len(needed - _written(tok, made)) <= len(needed) // 50
    assert len(set(pieces) & _written(tok, made)) >= 0.9 * len(pieces)
    assert not (train | heldout) & set(made)
    assert not any(h in w for w in made for h in heldout if len(h) >= 4)
    # pseudo_word mixes them as the style says; a piece share without pieces is refused
    style = WordStyle(lookalike_share=0.0, piece_share=0.5, pieces=pieces)
    mixed = [pseudo_word(random.Random(i), style) for i in range(400)]
    assert 100 < sum(w in set(made) or not _cv(w) for w in mixed) < 300
    with pytest.raises(ValueError, match="letter pieces"):
        WordStyle(piece_share=0.5)


def _cv(word: str) -> bool:
    from roll.sft.relex import CONSONANTS, VOWELS

    return all((c in CONSONANTS) == (i % 2 == 0) and (c in VOWELS) == (i % 2 == 1) for i, c in enumerate(word))


def test_piece_share_reaches_the_cpt_and_sft_data(tiny_tokenizer):
    """The configs' `piece_share` is the style their made-up words are drawn in (fresh CPT tasks, variants)."""
    from roll.sft.cpt import CptDataConfig, fresh_tasks
    from roll.sft.relex import letter_pieces, word_style
    from roll.sft.sft import SftDataConfig

    tok = tiny_tokenizer
    for cfg in (CptDataConfig(piece_share=0.4), SftDataConfig(piece_share=0.4)):
        style = word_style(cfg, tok)
        assert style.piece_share == 0.4 and style.pieces == letter_pieces(tok)
    assert word_style(CptDataConfig(), tok).pieces == ()
    train = set(vocab_split("train"))

    def words(tasks) -> set[str]:  # the instances' words, not the instruction template's
        per_task = [set(re.findall(r"[a-z]+", t.instruction)) for t in tasks]
        common = Counter(w for ws in per_task for w in ws)
        return {w for ws in per_task for w in ws if common[w] < len(tasks) / 5} - train

    plain = words(fresh_tasks(["create_file"], 200, 1.0, 0))
    pieced = words(fresh_tasks(["create_file"], 200, 1.0, 0, word_style(CptDataConfig(piece_share=1.0), tok)))
    assert sum(map(_cv, plain)) > 0.9 * len(plain) and sum(map(_cv, pieced)) < 0.3 * len(pieced)
    assert len(_written(tok, pieced) & set(letter_pieces(tok))) > len(_written(tok, plain) & set(letter_pieces(tok)))
