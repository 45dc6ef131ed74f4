"""The generated task suite: `FAMILIES`, `generate(family, seed)`, `generate_suite(...)`, `split_of(family, seed)`
(`.venv/bin/pytest tests/roll/test_suite.py`; every family run in real sandboxes: tests/roll/test_suite_docker.py).

An instance is a pure function of (family, seed): the seed picks the split (train 0..999, held-out 1000..)
and seeds the builder's random draws; the split picks the half of the vocabulary its words come from
(`roll.tasks.words.vocab_split`), so no held-out instruction can equal a train one. Held-out-only families
(`FamilyInfo.heldout_only`) are never trained on: they have held-out seeds only.

Every task runs on `rock/base:bookworm` in /app: `environment.setup` builds the starting state, the tests are
`tests/run-tests.sh` (exit 0 = resolved) plus any hidden unit tests beside it, and `solution_steps` is the
golden solution as one shell command per tool call.
"""

from __future__ import annotations

import random

from roll.tasks.families import chains, data, files, python, system, text  # noqa: F401  (they register)
from roll.tasks.families.base import BUILDERS, INFOS, Draft, FamilyInfo, Words
from roll.tasks.spec import Environment, Split, TaskSpec
from roll.tasks.words import vocab_split

IMAGE = "rock/base:bookworm"
WORKDIR = "/app"
HELDOUT_SEED = 1000  # held-out instances use seeds 1000, 1001, ...; train ones 0 .. 999
TIMEOUTS = {"easy": (120.0, 60.0), "medium": (240.0, 60.0), "hard": (480.0, 120.0)}  # (agent, test) seconds

# Single-step word families first (what a tiny model learns first), then by skill; held-out-only ones last.
ORDER = (
    "create_file", "make_dir", "append_line", "rename_file", "move_file", "read_then_write",
    "grep_count", "sort_unique", "sed_replace", "json_transform", "csv_transform", "py_bugfix", "py_implement",
    "git_ops", "permissions", "archive", "env_process", "multi_step_chain", "error_recovery",
    "symlink", "count_words", "find_largest",
)  # fmt: skip
assert set(ORDER) == set(INFOS), "every registered family has a place in ORDER"
FAMILIES: dict[str, FamilyInfo] = {name: INFOS[name] for name in ORDER}

__all__ = ["FAMILIES", "HELDOUT_SEED", "FamilyInfo", "SuiteError", "generate", "generate_suite", "split_of"]


class SuiteError(ValueError):
    """A family, seed or split the suite does not have; the message is one line naming it."""


def split_of(family: str, seed: int) -> Split:
    """The split of (family, seed): "heldout" from seed 1000 on, else "train"."""
    info = _info(family)
    if seed < 0:
        raise SuiteError(
            f"seed {seed} of {family}: seeds are >= 0 (train 0..{HELDOUT_SEED - 1}, held-out {HELDOUT_SEED}..)"
        )
    if seed >= HELDOUT_SEED:
        return "heldout"
    if info.heldout_only:
        raise SuiteError(f"family {family} is held-out only: its seeds start at {HELDOUT_SEED}, not {seed}")
    return "train"


def generate(family: str, seed: int) -> TaskSpec:
    """The instance (family, seed); the same in every process."""
    split = split_of(family, seed)
    info = FAMILIES[family]
    rng = random.Random(f"ale-suite:{family}:{seed}")  # a str seed hashes the same in every process
    draft = BUILDERS[family](Words(rng, vocab_split(split)))
    return _spec(info, seed, split, draft)


def generate_suite(families: list[str] | None = None, split: str | None = None, train_per_family: int = 8,
                   heldout_per_family: int = 4, train_start: int = 0) -> list[TaskSpec]:  # fmt: skip
    """Train seeds train_start..train_start+train_per_family-1 and held-out seeds 1000.. of each family (all when
    None), in that order; `split` ("train" or "heldout") keeps one side. Held-out-only families give held-out
    instances only."""
    if split not in (None, "train", "heldout"):
        raise SuiteError(f"unknown split {split!r}; known: train, heldout")
    if train_per_family < 0 or heldout_per_family < 0:
        raise SuiteError("instances per family must be >= 0")
    if train_start < 0 or train_start + train_per_family > HELDOUT_SEED:
        raise SuiteError(
            f"train seeds lie in 0..{HELDOUT_SEED - 1}: train_start {train_start} + train_per_family "
            f"{train_per_family} is past them"
        )
    names = list(FAMILIES) if families is None else list(families)
    for name in names:
        _info(name)
    tasks = []
    for name in names:
        if split != "heldout" and not FAMILIES[name].heldout_only:
            tasks += [generate(name, seed) for seed in range(train_start, train_start + train_per_family)]
        if split != "train":
            tasks += [generate(name, HELDOUT_SEED + i) for i in range(heldout_per_family)]
    return tasks


def _info(family: str) -> FamilyInfo:
    if family not in FAMILIES:
        raise SuiteError(f"unknown task family {family!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[family]


def _spec(info: FamilyInfo, seed: int, split: Split, draft: Draft) -> TaskSpec:
    task_id = f"{info.name}-{seed}"
    tests = {
        "run-tests.sh": (
            f"#!/bin/bash\n# The tests of {task_id}: exit 0 = resolved (generated by roll.tasks.suite).\n"
            'fail() { echo "FAIL: $*"; exit 1; }\n' + draft.test + "echo PASS\n"
        ),
        **draft.files,
    }
    agent_s, test_s = TIMEOUTS[info.difficulty]
    return TaskSpec(
        id=task_id,
        instruction=draft.instruction,
        family=info.name,
        split=split,
        seed=seed,
        difficulty=info.difficulty,
        category=info.category,
        steps=draft.min_steps or info.steps,
        agent_timeout_s=agent_s,
        test_timeout_s=test_s,
        workdir=WORKDIR,
        environment=Environment(image=IMAGE, setup=f"set -e\nmkdir -p {WORKDIR} && cd {WORKDIR}\n{draft.setup}\n"),
        tests=tests,
        grading="exit_code",
        solution=f"#!/bin/bash\nset -e\ncd {WORKDIR}\n{draft.solution or chr(10).join(draft.steps)}\n",
        solution_steps=list(draft.steps),
        source="generated",
    )
