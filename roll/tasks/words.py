"""Tiny task families built from real English words (`pytest tests/roll/test_roll_tasks.py`).

Real words, not random strings: a byte-level BPE tokenizer has them as few tokens and the agent can copy
them from the instruction, so reward is reachable. Instances are split train/held-out by a seeded
shuffle of the first word, so one word never appears on both sides.
"""

from __future__ import annotations

import random
import shlex

from roll.tasks.instance import TaskInstance

WORDS = """
apple river stone cloud garden window silver orange planet forest candle winter summer bridge
pencil rocket button coffee dragon harbor island jungle ladder mirror needle ocean pepper rabbit
saddle tiger violin wagon yellow zebra anchor basket castle desert engine feather guitar hammer
jacket kettle lemon magnet nickel paper quartz ribbon shadow tunnel valley walnut butter copper
falcon ginger honey lantern marble meadow pillow puzzle salmon thunder tomato velvet whistle cotton
""".split()

FAMILIES = ("create_file", "make_dir")


def _create_file(word: str, other: str, root: str) -> dict:
    path = f"{root}/{word}.txt"
    q = shlex.quote(path)
    return {
        "instruction": f"Create the file {path} containing exactly {other}",
        "setup": f"mkdir -p {shlex.quote(root)} && rm -f {q}",
        # $(...) drops trailing newlines, so `echo other > file` counts as exactly `other`
        "test": f'test -f {q} && test "$(cat {q})" = {shlex.quote(other)}',
        "solution": f"echo {shlex.quote(other)} > {q}",
    }


def _make_dir(word: str, other: str, root: str) -> dict:
    path = f"{root}/{word}/{other}"
    q = shlex.quote(path)
    return {
        "instruction": f"Create the directory {path}",
        "setup": f"mkdir -p {shlex.quote(root)} && rm -rf {shlex.quote(f'{root}/{word}')}",
        "test": f"test -d {q}",
        "solution": f"mkdir -p {q}",
    }


_BUILDERS = {"create_file": _create_file, "make_dir": _make_dir}


def make_tasks(
    families: list[str] | tuple[str, ...] = FAMILIES,
    seed: int = 0,
    held_out_fraction: float = 0.2,
    root: str = "/root",
) -> list[TaskInstance]:
    """Every (family, word, other word) instance, split by word; deterministic in `seed`."""
    unknown = sorted(set(families) - set(_BUILDERS))
    if unknown:
        raise ValueError(f"unknown task families {unknown}; known: {', '.join(FAMILIES)}")
    rng = random.Random(seed)
    words = WORDS[:]
    rng.shuffle(words)
    held_out = set(words[: round(len(words) * held_out_fraction)])
    tasks = []
    for family in families:
        for i, word in enumerate(words):
            other = words[(i + 1 + rng.randrange(len(words) - 1)) % len(words)]  # never the word itself
            tasks.append(
                TaskInstance(
                    id=f"{family}-{word}-{other}",
                    family=family,
                    split="held_out" if word in held_out else "train",
                    **_BUILDERS[family](word, other, root),
                )
            )
    return tasks
