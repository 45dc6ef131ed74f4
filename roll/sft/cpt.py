"""CPT data: `cpt_sequences(trajectories, tokenizer, cfg)`; tests: `.venv/bin/pytest tests/roll/test_sft_data.py -k cpt`.

Every synthesised trajectory, failures included, selected for coverage of behaviours (family, tool kinds, a
failed call, a failure then a success, turn count) rather than for correctness: with `per_behaviour` set, at
most that many trajectories of each behaviour, so common ones do not crowd out rare ones.

The mix holds three kinds of example, their counts in the config:
- `full`: the whole trajectory, packed, on the agent's real prompt (system prompt and tool schemas included);
- `task_call`: the task alone, the user's instruction (no system prompt, no tool schemas) -> the first reply
  (`task_call_to: first_change`: -> the first call that changes something, skipping the looks before it, the
  exact call the issue's short-context run learnt to fill with the task's words);
- `result_call`: the task, the previous call and its tool result -> the next reply.
The short ones are the curriculum issue 12 measured as necessary: from random weights ROME-tiny trained on the
~1010-token prompt learned the call format but copied no task words into its calls (0 % held-out for 5
minutes), while on the 34-token task alone it reached 77 % in 2.5 minutes, and then 86 % on the full prompt.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from rock.contracts import Chunk, ChunkResponse, Trajectory
from roll.algo.packing import PackedSequence, pack_trajectory
from roll.sft.data import DataError
from roll.sft.masks import changes_state, chunk_calls, outcomes
from roll.sft.relex import WordStyle, augment, lookalike_share_field, piece_share_field, word_style
from roll.sft.render import RenderError, load_tokenizer, render_chunk, render_trajectory


class CptDataConfig(BaseModel):
    """The CPT mix: how many copies of each kind of example, which trajectories, and where the loss is."""

    model_config = ConfigDict(extra="forbid")
    full: int = Field(1, ge=0, description="copies of each whole trajectory, packed, on the agent's full prompt")
    task_call: float = Field(
        1,
        ge=0,
        description="copies of each 'task alone -> first reply' example (a fraction: "
        "that share of them, drawn with the seed)",
    )
    task_call_to: Literal["first", "first_change", "first_task"] = Field(
        "first",
        description="the reply a task_call example ends in: the first; the first that changes something; "
        "the first whose arguments use the task's own words (a path or word of the instruction: not a bare look)",
    )
    result_call: float = Field(
        1,
        ge=0,
        description="copies of each 'task, last call, its result -> next reply' "
        "example (a fraction: that share of them)",
    )
    dialogue: float = Field(
        0,
        ge=0,
        description="copies of each whole trajectory without the system prompt and tool schemas (the task and "
        "every turn, packed; a fraction: that share of them): the multi-turn copying of the agent's replies on "
        "a short context, before SFT adds the ~976-token prefix",
    )
    per_behaviour: int | None = Field(None, ge=1, description="at most this many trajectories per behaviour")
    loss_on: Literal["responses", "all"] = Field("responses", description="the model's replies, or every token")
    order: Literal["shuffled", "short_first"] = Field("shuffled", description="short_first: short examples first")
    variants: int = Field(
        0,
        ge=0,
        description="relexicalised copies of each trajectory, the instance's words replaced "
        "by fresh ones (roll/sft/relex.py): word diversity is what teaches copying",
    )
    pseudo_share: float = Field(0.5, ge=0, le=1, description="share of replacement words that are made up")
    lookalike_share: float = lookalike_share_field()
    piece_share: float = piece_share_field()
    fresh: int = Field(
        0,
        ge=0,
        description="more 'task alone -> the golden first call' examples, each a new instance "
        "of a trained family built from fresh words (made up or train words, as pseudo_share says): "
        "no word set is ever repeated, as in issue 12's copy probe",
    )
    seed: int = 0


class CptReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trajectories: int = 0
    selected: int = 0
    behaviours: int = 0  # distinct behaviours among the selected
    unrenderable: int = 0
    sequences: dict[str, int] = {}  # by kind: full, task_call, result_call
    loss_tokens: int = 0


@dataclass
class CptData:
    sequences: list[PackedSequence]
    families: list[str]
    report: CptReport = field(default_factory=CptReport)


def turns_bucket(n: int) -> str:
    return "1" if n <= 1 else "2" if n == 2 else "3-4" if n <= 4 else "5-8" if n <= 8 else "9+"


def behaviour(traj: Trajectory) -> tuple:
    """What a trajectory shows: family, tools used, a failed call, a failure then a success, how many turns."""
    results = traj.tool_results
    failed = [i for i, r in enumerate(results) if not (r.parsed and r.ok)]
    recovered = any(any(r.ok for r in results[i + 1 :]) for i in failed)
    tools = tuple(sorted({r.tool for r in results if r.tool not in ("", "?")}))
    return traj.family, tools, bool(failed), recovered, turns_bucket(len(traj.chunks))


def select(trajectories: list[Trajectory], per_behaviour: int | None, seed: int) -> list[Trajectory]:
    """At most `per_behaviour` trajectories of each behaviour (a seeded pick), in the given order."""
    if per_behaviour is None:
        return list(trajectories)
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(trajectories):
        groups.setdefault(behaviour(t), []).append(i)
    rng = random.Random(seed)
    keep = {i for members in groups.values() for i in rng.sample(members, min(per_behaviour, len(members)))}
    return [t for i, t in enumerate(trajectories) if i in keep]


def task_message(chunk: Chunk) -> dict | None:
    return next((m for m in chunk.messages or [] if m.get("role") == "user"), None)


GENERIC = set(
    "app txt json csv yaml the and a to of in into on for with from file files directory line lines word "
    "words path content command contents name new".split()
)


def uses_task_words(call, task: dict) -> bool:
    """Whether a call's arguments use a word of the instruction beyond the generic ones (`/app`, `file`, ...)."""
    words = set(re.findall(r"[a-z]{3,}", str(task.get("content", "")).lower())) - GENERIC
    args = getattr(call, "arguments", None)
    if args is None and isinstance(call, dict):
        args = call.get("arguments", call.get("function", {}).get("arguments"))
    return bool(words & set(re.findall(r"[a-z]{3,}", str(args).lower())))


def only_task_words(call, task: dict) -> bool:
    """Whether every word of a call's arguments is in the instruction or generic: the task alone determines it."""
    words = set(re.findall(r"[a-z]{3,}", str(task.get("content", "")).lower())) | GENERIC
    return set(re.findall(r"[a-z]{3,}", str(call.arguments).lower())) <= words | COMMANDS


COMMANDS = set("echo cat mkdir touch printf tee cp mv sed grep sort uniq head tail wc chmod tar git".split())


def short_chunks(traj: Trajectory, task_call_to: str = "first") -> tuple[list[Chunk], list[Chunk]]:
    """(task -> first reply, [task, last call, its result -> next reply]...) as chunks of short requests."""
    task_calls, result_calls = [], []
    for chunk in sorted(traj.chunks, key=lambda c: c.index):
        task = task_message(chunk)
        if chunk.error is not None or task is None:
            continue
        last = max((i for i, m in enumerate(chunk.messages) if m.get("role") == "assistant"), default=None)
        if last is not None and chunk.messages[last + 1 :]:  # the tool results (or iflow's format hint) after it
            short = [task, *chunk.messages[last:]]
            result_calls.append(chunk.model_copy(update={"messages": short, "tools": None}))
        calls = chunk_calls(chunk)
        changed = any(changes_state(c) and ok for c, ok in zip(calls, outcomes(traj, chunk, calls), strict=True))
        if task_call_to == "first_task":
            # the first call that uses the task's words, and the first change when the task alone determines it
            wanted = (not task_calls and any(uses_task_words(c, task) for c in calls)) or (
                changed and all(only_task_words(c, task) for c in calls) and len(task_calls) < 2
            )
        else:  # one example: the first reply, or the first that changes something
            wanted = not task_calls and (last is None if task_call_to == "first" else changed)
        if wanted:
            task_calls.append(chunk.model_copy(update={"messages": [task], "tools": None}))
    return task_calls, result_calls


def golden_first_call(task) -> list[dict]:
    """The first call of `task`'s golden solution, as canonical OpenAI tool calls (ROME's format once rendered)."""
    from roll.data.teacher import act_steps
    from roll.sft.render import canonical_calls

    step = act_steps(task)[0]
    return canonical_calls([{"id": "call_0", "type": "function",
                             "function": {"name": step.tool, "arguments": step.arguments}}])  # fmt: skip


POOL_FIRST, POOL_MORE = 12, 40  # words offered to a fresh task's builder first; made up, when it needs more


def fresh_tasks(families: list[str], n: int, pseudo_share: float, seed: int, style: WordStyle = WordStyle()) -> list:
    """`n` new instances (TaskSpecs) of `families`, round robin, each built by its family's builder from a word pool
    of its own: made-up words (a `pseudo_share` of them) or the train vocabulary. The same seed, the same tasks."""
    from roll.sft.relex import pseudo_word
    from roll.tasks import suite
    from roll.tasks.families.base import BUILDERS, Words
    from roll.tasks.words import vocab_split

    rng, train = random.Random(f"cpt-fresh:{seed}"), list(vocab_split("train"))
    out = []
    for i in range(n):
        family = families[i % len(families)]
        made_up = rng.random() < pseudo_share
        # A small pool first (a builder takes a few words; made-up words and filtering the whole vocabulary in
        # `Words.take` were most of the time), the whole one when the builder needs more. A uniform sample of the
        # vocabulary hands out its words as uniformly as the vocabulary itself.
        for size in (POOL_FIRST, POOL_MORE):
            if made_up:  # dict, not set: a set of strings iterates in the process's hash order
                pool = list(dict.fromkeys(pseudo_word(rng, style) for _ in range(size)))
            else:
                pool = rng.sample(train, size) if size == POOL_FIRST else train
            try:
                draft = BUILDERS[family](Words(random.Random(rng.random()), pool))
                break
            except ValueError as e:
                if size == POOL_MORE or not str(e).startswith("vocabulary too small"):
                    raise
        out.append(suite._spec(suite.FAMILIES[family], 0, "train", draft))
    return out


def fresh_examples(families: list[str], n: int, tokenizer, pseudo_share: float, seed: int,
                   style: WordStyle = WordStyle()) -> list[tuple[PackedSequence, str]]:  # fmt: skip
    """`n` task-alone examples of `fresh_tasks`, the target the golden solution's first call in ROME's format."""
    out = []
    for i, task in enumerate(fresh_tasks(families, n, pseudo_share, seed, style)):
        chunk = Chunk(trajectory_id=f"fresh-{i}", sandbox_id="", index=0, latency_s=0.0, created_at=0.0,
                      messages=[{"role": "user", "content": task.instruction}],
                      response=ChunkResponse(text="", tool_calls=golden_first_call(task)))  # fmt: skip
        out.append((single(chunk, tokenizer, f"fresh-{i}"), task.family))
    return out


def single(chunk: Chunk, tokenizer, trajectory_id: str) -> PackedSequence:
    prompt, response = render_chunk(chunk, tokenizer)
    update = {"trajectory_id": trajectory_id, "prompt_token_ids": prompt, "response_token_ids": response}
    (seq,) = pack_trajectory([chunk.model_copy(update=update | {"response_logprobs": [0.0] * len(response)})])
    return seq


def copies(make, n: int, trajectory_id: str) -> list[PackedSequence]:
    # Distinct ids per copy: a batch refuses the same (trajectory, chunk) twice (it would count its loss twice).
    return [make(trajectory_id + (f"#{c}" if c else "")) for c in range(n)]


def without_prefix(traj: Trajectory) -> Trajectory:
    """The trajectory with its system messages and tool schemas left out of every request (token ids cleared)."""
    chunks = [c.model_copy(update={"messages": [m for m in c.messages or [] if m.get("role") != "system"] or None,
                                   "tools": None, "prompt_token_ids": None, "response_token_ids": None})
              for c in traj.chunks]  # fmt: skip
    return traj.model_copy(update={"chunks": chunks})


def loss_everywhere(seq: PackedSequence) -> PackedSequence:
    return dataclasses.replace(seq, loss_mask=torch.ones_like(seq.loss_mask))


def cpt_dataset(trajectories: list[Trajectory], tokenizer, cfg: CptDataConfig | None = None) -> CptData:
    """The CPT mix over `trajectories` (all of them: failures teach too), with its counts."""
    cfg = cfg or CptDataConfig()
    if not trajectories:
        raise DataError("no trajectories for CPT; make some: roll data synth --out DIR")
    tokenizer = load_tokenizer(tokenizer)
    chosen = select(trajectories, cfg.per_behaviour, cfg.seed)
    report = CptReport(trajectories=len(trajectories), selected=len(chosen))
    report.behaviours = len({behaviour(t) for t in chosen})
    style = word_style(cfg, tokenizer)
    chosen = augment(chosen, cfg.variants, cfg.pseudo_share, cfg.seed, style)
    pick = random.Random(f"cpt-copies:{cfg.seed}")
    short: list[tuple[PackedSequence, str]] = []
    full: list[tuple[PackedSequence, str]] = []
    kinds = Counter()
    for traj in chosen:
        tid = traj.trajectory_id
        try:
            if cfg.full:
                packed = pack_trajectory(render_trajectory(traj, tokenizer))
                for c in range(cfg.full):
                    full += [(dataclasses.replace(s, trajectory_id=tid + (f"#{c}" if c else "")), traj.family)
                             for s in packed]  # fmt: skip
                kinds["full"] += cfg.full * len(packed)
            n = int(cfg.dialogue) + (cfg.dialogue % 1 > 0 and pick.random() < cfg.dialogue % 1)
            if n:
                packed = pack_trajectory(render_trajectory(without_prefix(traj), tokenizer))
                for c in range(n):
                    short += [(dataclasses.replace(s, trajectory_id=f"{tid}~dialogue#{c}"), traj.family)
                              for s in packed]  # fmt: skip
                kinds["dialogue"] += n * len(packed)
            tasks, results = short_chunks(traj, cfg.task_call_to)
            for kind, chunks, copies_of in (
                ("task_call", tasks, cfg.task_call),
                ("result_call", results, cfg.result_call),
            ):
                for chunk in chunks:
                    n = int(copies_of) + (pick.random() < copies_of % 1)
                    made = copies(lambda i, ch=chunk: single(ch, tokenizer, i), n, f"{tid}~{kind}")
                    short += [(s, traj.family) for s in made]
                    kinds[kind] += len(made)
        except RenderError:
            report.unrenderable += 1
    if cfg.fresh:
        families = sorted({t.family for t in chosen})
        made = fresh_examples(families, cfg.fresh, tokenizer, cfg.pseudo_share, cfg.seed, style)
        short += made
        kinds["fresh"] += len(made)
    rng = random.Random(cfg.seed)
    if cfg.order == "short_first":
        mixed = rng.sample(short, len(short)) + rng.sample(full, len(full))
    else:
        mixed = rng.sample(short + full, len(short) + len(full))
    if not mixed:
        raise DataError(f"the CPT mix is empty ({report.unrenderable} unrenderable; counts {cfg.model_dump()})")
    sequences = [loss_everywhere(s) if cfg.loss_on == "all" else s for s, _ in mixed]
    report.sequences = {k: v for k, v in sorted(kinds.items()) if v}
    report.loss_tokens = sum(int(s.loss_mask.sum()) for s in sequences)
    return CptData(sequences, [f for _, f in mixed], report)


def cpt_sequences(trajectories: list[Trajectory], tokenizer, cfg: CptDataConfig | None = None) -> list[PackedSequence]:
    """The CPT mix as packed sequences (see `cpt_dataset` for the counts)."""
    return cpt_dataset(trajectories, tokenizer, cfg).sequences
