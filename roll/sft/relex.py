"""Fresh words for recorded trajectories: `relexicalize(traj, rng)`; tests: `.venv/bin/pytest tests/roll/test_relex.py`.

Issue 12's copy probe (ROME-tiny from random init, the instruction alone -> the first acting call, held-out words
from the held-out half of the vocabulary): 6,000 instances over the 509 train words reached 12 % held-out at step
419 (the words were memorised as a lookup), while the same instances with every word replaced by a fresh made-up
one reached 47.9 % at step 600 and rising: word diversity, not instance count, is what teaches copying. So the
stages train on variants of each synthesised trajectory in which the instance's own words (the ones its family
builder drew: file names, contents, directory names) are replaced, consistently across the whole trajectory
(instruction, the teacher's calls and text, the tool results), by other words: made-up pronounceable ones
(`pseudo_share`) or other words of the train vocabulary. The held-out vocabulary is never used.

The instance's words are known exactly: the suite regenerates the instance from (family, seed) with a `Words`
that records every word it hands out. The system prompt and the tool schemas are left alone, and so is any word
that also names a tool or an argument (`path`, `shell`), so the protocol the model learns is never rewritten.
Token ids are dropped: rendering re-tokenises the new messages (`roll.sft.render`).
"""

from __future__ import annotations

import builtins
import functools
import json
import keyword
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rock.contracts import Trajectory

CONSONANTS = "bcdfghjklmnprstvwz"
VOWELS = "aeiou"
_BUILTINS = set(dir(builtins))


@dataclass(frozen=True)
class WordStyle:
    """How made-up words are spelled: with probability `piece_share` built around a letter piece of the model's
    tokenizer (`piece_word` over `pieces`, from `letter_pieces`), else with probability `lookalike_share` spelled
    like the train vocabulary (`lookalike_word`), else from consonant-vowel syllables."""

    lookalike_share: float = 0.0
    piece_share: float = 0.0
    pieces: tuple[str, ...] = ()

    def __post_init__(self):
        if self.piece_share and not self.pieces:
            raise ValueError("piece_share > 0 needs the tokenizer's letter pieces (relex.letter_pieces)")


def word_style(cfg, tokenizer) -> WordStyle:
    """The style a CPT or SFT data config asks for (`lookalike_share`, `piece_share`), pieces from `tokenizer`."""
    pieces = letter_pieces(tokenizer) if cfg.piece_share else ()
    return WordStyle(cfg.lookalike_share, cfg.piece_share, pieces)


def pseudo_word(rng: random.Random, style: WordStyle = WordStyle()) -> str:
    """A made-up lowercase word: of 3-9 letters built from consonant-vowel syllables (e.g. `tabemo`, `rukis`), or,
    as `style` says, around a tokenizer piece (`piece_word`) or spelled like the train vocabulary (`lookalike_word`)."""
    if style.piece_share and rng.random() < style.piece_share:
        return piece_word(rng, style.pieces)
    if style.lookalike_share and rng.random() < style.lookalike_share:
        return lookalike_word(rng)
    while True:
        word = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.randint(2, 4)))
        if rng.random() < 0.5:
            word += rng.choice(CONSONANTS)
        word = word[: rng.randint(3, 9)]
        if len(word) >= 3 and not keyword.iskeyword(word) and word not in _BUILTINS:
            return word


@functools.cache
def _letter_chain() -> tuple[dict[str, tuple[str, ...]], frozenset[str], tuple[str, ...]]:
    """Letter trigrams of the train vocabulary (two letters -> the letters seen after them, `$` = the end), the
    words a made-up word must not be (the whole vocabulary), and the held-out words it must not contain."""
    from roll.tasks.words import vocab_split

    table: dict[str, list[str]] = {}
    for w in sorted(vocab_split("train")):
        s = "^^" + w + "$"
        for i in range(len(s) - 2):
            table.setdefault(s[i : i + 2], []).append(s[i + 2])
    heldout = tuple(sorted(vocab_split("heldout")))
    return {k: tuple(v) for k, v in table.items()}, frozenset(vocab_split("train")) | frozenset(heldout), heldout


@functools.cache
def _heldout_inside() -> re.Pattern:
    """Finds a held-out word of 4 letters or more inside a word (one regex: CPT's data build checks ~1 M made-up
    words, and a Python loop over the held-out words was a third of its time)."""
    return re.compile("|".join(re.escape(h) for h in _letter_chain()[2] if len(h) >= 4))


def _admissible(word: str) -> bool:
    """A made-up word may be used: 3 letters or more, not a vocabulary word, containing no held-out word (of 4
    letters or more), not a Python keyword or builtin (code tasks name things with it)."""
    _, banned, _ = _letter_chain()
    if len(word) < 3 or word in banned or _heldout_inside().search(word):
        return False
    return not keyword.iskeyword(word) and word not in _BUILTINS


def lookalike_word(rng: random.Random) -> str:
    """A made-up word of 3-10 letters spelled like the train vocabulary (a letter-trigram chain over it: `tromel`,
    `bacorn`), never a vocabulary word and never containing a held-out one. Its BPE pieces are the pieces of real
    words in new combinations, so the first piece of a word does not tell the rest: the words of issue 12's failed
    held-out copies (`onion` -> `onkey`, `trail` -> `trout`) were completed from memory after their first piece,
    which the consonant-vowel words (tokenised into other pieces) never taught against."""
    table = _letter_chain()[0]
    while True:
        s = "^^"
        while len(s) < 13:
            c = rng.choice(table[s[-2:]])
            if c == "$":
                break
            s += c
        word = s[2:]
        if len(word) <= 10 and _admissible(word):
            return word


def letter_pieces(tokenizer) -> tuple[str, ...]:
    """The tokenizer's pieces that are lowercase ASCII letters, sorted; a piece that starts a word after a space
    (byte-level BPE's `Ġ`) as " piece". A held-out word is copied piece by piece, and a piece never seen as a
    target cannot be written: ROME-tiny's 1,024-token BPE has 660 letter pieces, and the train vocabulary's words
    (real or spelled like them) never produce `ery`, `arg`, `cc` or ` cre` — so `bakery`, `cargo` and `raccoon`
    were written `bakool`, `caluo` and `raing` at evaluation."""
    out = set()
    for token in tokenizer.get_vocab():
        letters = token.removeprefix("Ġ")
        if letters and letters.isascii() and letters.isalpha() and letters.islower():
            out.add((" " if token.startswith("Ġ") else "") + letters)
    return tuple(sorted(out))


def piece_word(rng: random.Random, pieces: tuple[str, ...]) -> str:
    """A made-up word of 3-12 letters around one of `pieces` drawn uniformly (so the rare pieces come as often as
    the common ones): a word-initial piece (" cre") starts it, any other sits after 1-3 letters; the rest is taken
    from `lookalike_word`s. Never a vocabulary word, never containing a held-out one."""
    while True:
        piece = rng.choice(pieces)
        head = "" if piece.startswith(" ") else lookalike_word(rng)[: rng.randint(1, 3)]
        tail = lookalike_word(rng)[-rng.randint(1, 3) :] if rng.random() < 0.7 else ""
        word = head + piece.strip() + tail
        if len(word) <= 12 and _admissible(word):
            return word


def piece_share_field():
    """The `piece_share` setting of CPT's and SFT's data configs."""
    from pydantic import Field

    return Field(
        0.0,
        ge=0,
        le=1,
        description="share of the made-up words built around a letter piece of the tokenizer drawn uniformly "
        "(relex.piece_word): every piece a held-out word may need is written in training, not only the train "
        "vocabulary's",
    )


def lookalike_share_field():
    """The `lookalike_share` setting of CPT's and SFT's data configs."""
    from pydantic import Field

    return Field(
        0.0,
        ge=0,
        le=1,
        description="share of the made-up words spelled like the train vocabulary (relex.lookalike_word): "
        "real words' BPE pieces in new combinations, so a word cannot be completed from its first piece",
    )


class _RecordingWords:
    """Wraps the suite's `Words` and records every word it hands out (`take`, `one` and `filler`)."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []
        self.rng = inner.rng

    def take(self, *a, **kw):
        out = self.inner.take(*a, **kw)
        self.seen += out
        return out

    def one(self, **kw):
        return self.take(1, **kw)[0]

    def filler(self, *a, **kw):
        out = self.inner.filler(*a, **kw)
        self.seen += out
        return out


def instance_words(family: str, seed: int) -> list[str]:
    """The vocabulary words the instance (family, seed) was built from, as the suite draws them."""
    from roll.tasks.families.base import BUILDERS, Words
    from roll.tasks.suite import split_of
    from roll.tasks.words import vocab_split

    split = split_of(family, seed)
    rng = random.Random(f"ale-suite:{family}:{seed}")  # as roll.tasks.suite.generate seeds it
    words = _RecordingWords(Words(rng, vocab_split(split)))
    BUILDERS[family](words)
    return list(dict.fromkeys(words.seen))


def _protected(traj: Trajectory) -> set[str]:
    """Words of the protocol: tool names, argument names and the system prompt's words."""
    out: set[str] = set()
    for chunk in traj.chunks[:1]:
        for tool in chunk.tools or []:
            out |= set(re.findall(r"[a-z]+", json.dumps(tool).lower()))
        for m in chunk.messages or []:
            if m.get("role") == "system" and isinstance(m.get("content"), str):
                out |= set(re.findall(r"[a-z]+", m["content"].lower()))
    return out


def _task_seed(traj: Trajectory) -> tuple[str, int] | None:
    family, _, seed = traj.task_id.rpartition("-")
    return (family, int(seed)) if seed.isdigit() and family == traj.family else None


def mapping(words: Iterable[str], rng: random.Random, pseudo_share: float, pool: list[str],
            avoid: set[str] = frozenset(), style: WordStyle = WordStyle()) -> dict[str, str]:  # fmt: skip
    """A replacement for each word: distinct, none containing or contained in another (grep/sed tasks rely on
    that), made-up with probability `pseudo_share` (`pseudo_word`), else drawn from `pool`."""
    out: dict[str, str] = {}
    taken: list[str] = []
    for word in words:
        for _ in range(200):
            new = pseudo_word(rng, style) if rng.random() < pseudo_share or not pool else rng.choice(pool)
            if new in avoid or new in out or any(new in t or t in new for t in taken + list(words)):
                continue
            break
        else:
            new = word  # nothing fitted: keep it
        out[word] = new
        taken.append(new)
    return out


def _sub(text: Any, pattern: re.Pattern, table: dict[str, str]) -> Any:
    if not isinstance(text, str):
        return text
    return pattern.sub(lambda m: table[m.group(0)], text)


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
LS_TIME = re.compile(r"\b(?:" + "|".join(_MONTHS) + r") [ 0-3]\d (?:[0-2]\d:[0-5]\d| \d{4})\b")


def restamp(text: Any, rng: random.Random, stamps: dict[str, str]) -> Any:
    """`text` with every `ls -l` modification time (`Dec  7 10:48`, `Mar 14  2025`) replaced by a random one of the
    same width, each distinct time by the same new one throughout (`stamps` carries the choices across messages).

    Synthesis writes every trajectory at one time of day, so without this a tool result's times are a constant the
    model can key its next decision on: ROME-tiny after SFT flipped greedy decisions (read the file it had to create,
    or write it) on nothing but the directory's mtime in `ls -la` (session 11)."""
    if not isinstance(text, str):
        return text

    def new(m: re.Match) -> str:
        old = m.group(0)
        if old not in stamps:
            day = f"{rng.randint(1, 28):2d}"
            when = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}" if ":" in old else f" {rng.randint(2019, 2026)}"
            stamps[old] = f"{rng.choice(_MONTHS)} {day} {when}"
        return stamps[old]

    return LS_TIME.sub(new, text)


def relexicalize(traj: Trajectory, rng: random.Random, pseudo_share: float = 0.5, suffix: str = "~relex",
                 style: WordStyle = WordStyle()) -> Trajectory:  # fmt: skip
    """A copy of `traj` with the instance's words replaced throughout (see the module doc); the same trajectory
    when its task is not a suite instance. Token ids are cleared; the trajectory id gets `suffix`."""
    from roll.tasks.words import vocab_split

    key = _task_seed(traj)
    if key is None:
        return traj
    try:
        words = instance_words(*key)
    except Exception:  # not a suite instance after all (an imported task named like one)
        return traj
    protected = _protected(traj)
    words = [w for w in words if w not in protected]
    if not words:
        return traj
    table = mapping(words, rng, pseudo_share, list(vocab_split("train")), protected, style)
    pattern = re.compile(
        r"(?<![A-Za-z0-9_])(" + "|".join(sorted(map(re.escape, table), key=len, reverse=True)) + r")(?![A-Za-z0-9_])"
    )

    stamps: dict[str, str] = {}  # this trajectory's `ls -l` times -> new ones, the same throughout

    def message(m: dict) -> dict:
        if m.get("role") == "system":
            return m
        m = {**m, "content": _sub(m.get("content"), pattern, table)}
        if m.get("role") == "tool":
            m["content"] = restamp(m["content"], rng, stamps)
        if m.get("tool_calls"):
            m["tool_calls"] = [_call(c) for c in m["tool_calls"]]
        return m

    def _call(c: dict) -> dict:
        fn = c.get("function") if isinstance(c.get("function"), dict) else None
        if fn is None:
            return c
        return {**c, "function": {**fn, "arguments": _sub(fn.get("arguments"), pattern, table)}}

    chunks = []
    for chunk in traj.chunks:
        response = chunk.response.model_copy(update={
            "text": _sub(chunk.response.text, pattern, table),
            "tool_calls": [tc.model_copy(update={"function": _call({"function": tc.function})["function"]})
                           for tc in chunk.response.tool_calls],
        })  # fmt: skip
        chunks.append(chunk.model_copy(update={
            "trajectory_id": traj.trajectory_id + suffix,
            "messages": [message(m) for m in chunk.messages] if chunk.messages else chunk.messages,
            "prompt": _sub(chunk.prompt, pattern, table) if chunk.endpoint == "completions" else chunk.prompt,
            "response": response, "prompt_token_ids": None, "response_token_ids": None, "response_logprobs": None,
        }))  # fmt: skip
    results = [r.model_copy(update={"error": _sub(r.error, pattern, table)}) for r in traj.tool_results]
    return traj.model_copy(
        update={"trajectory_id": traj.trajectory_id + suffix, "chunks": chunks, "tool_results": results}
    )


def augment(
    trajectories: list[Trajectory],
    variants: int,
    pseudo_share: float = 0.5,
    seed: int = 0,
    style: WordStyle = WordStyle(),
) -> list[Trajectory]:
    """The trajectories followed by `variants` relexicalised copies of each (ids `<id>~relexN`)."""
    if variants <= 0:
        return list(trajectories)
    rng = random.Random(f"relex:{seed}")
    out = list(trajectories)
    for n in range(variants):
        out += [relexicalize(t, rng, pseudo_share, f"~relex{n}", style) for t in trajectories]
    return out
