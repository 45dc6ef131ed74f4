"""What a family builder returns and the registry the suite reads (`.venv/bin/pytest tests/roll/test_suite.py`).

A family is one function `build(w: Words) -> Draft`, registered with `@family(...)`. `Words` hands out
distinct words of the instance's split (its `rng` is seeded by family and seed), so the same (family, seed)
gives the same task in every process. `roll/tasks/suite.py` turns a Draft into a `TaskSpec`.
"""

from __future__ import annotations

import keyword
import random
import shlex
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict

Difficulty = Literal["easy", "medium", "hard"]


class FamilyInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    category: str
    steps: int  # tool calls the golden solution needs, at the least
    heldout_only: bool = False  # never trained on: only held-out instances exist
    description: str
    difficulty: Difficulty = "easy"


@dataclass(frozen=True)
class Draft:
    """One generated instance before it becomes a TaskSpec. Every path is absolute under /app."""

    instruction: str
    setup: str  # bash; the suite prepends `mkdir -p /app && cd /app`
    test: str  # bash body of tests/run-tests.sh; `fail MSG` exits 1, falling off the end is a pass
    steps: list[str]  # the solution as tool calls, in order (solution_steps)
    solution: str = ""  # bash; empty = the steps joined (not so where a step is meant to fail)
    files: dict[str, str] = field(default_factory=dict)  # more files of tests/ (hidden unit tests)
    min_steps: int | None = None  # None = the family's steps


BUILDERS: dict[str, Callable[[Words], Draft]] = {}
INFOS: dict[str, FamilyInfo] = {}


def family(name: str, *, category: str, steps: int, description: str, difficulty: Difficulty = "easy",
           heldout_only: bool = False):  # fmt: skip
    """Register a builder under `name` with its FamilyInfo."""

    def register(fn: Callable[[Words], Draft]) -> Callable[[Words], Draft]:
        if name in BUILDERS:
            raise ValueError(f"family {name} registered twice")
        BUILDERS[name] = fn
        INFOS[name] = FamilyInfo(name=name, category=category, steps=steps, heldout_only=heldout_only,
                                 description=description, difficulty=difficulty)  # fmt: skip
        return fn

    return register


# Names that would shadow a module the package or pytest imports if used as /app/NAME.py or /app/NAME/.
_NOT_MODULES = set(sys.stdlib_module_names) | set(keyword.kwlist) | {"test", "tests", "conftest", "pytest", "setup"}


class Words:
    """Distinct words from one split's vocabulary; no word is handed out twice in one instance."""

    def __init__(self, rng: random.Random, pool: Iterable[str]):
        self.rng = rng
        self._pool = list(pool)
        self._used: set[str] = set()

    def take(self, k: int = 1, *, unlike: Iterable[str] = (), module: bool = False) -> list[str]:
        """k unused words; `unlike`: none contains, or is contained in, any of these (for grep and sed);
        `module`: usable as a Python module name without shadowing one."""
        unlike = list(unlike)
        ok = [
            w
            for w in self._pool
            if w not in self._used and not any(u in w or w in u for u in unlike) and not (module and w in _NOT_MODULES)
        ]
        if len(ok) < k:
            raise ValueError(f"vocabulary too small: wanted {k} words, {len(ok)} left")
        picked = self.rng.sample(ok, k)
        self._used.update(picked)
        return picked

    def one(self, **kw) -> str:
        return self.take(1, **kw)[0]

    def filler(self, k: int, *, unlike: Iterable[str] = ()) -> list[str]:
        """k words that may repeat and may be handed out again (file bodies, decoy lines)."""
        unlike = list(unlike)
        ok = [w for w in self._pool if not any(u in w or w in u for u in unlike)]
        return [self.rng.choice(ok) for _ in range(k)]


def q(s: str) -> str:
    return shlex.quote(s)


def lines_of(words: Iterable[str]) -> str:
    """The words one per line, as a printf command's output (for setup and expected contents)."""
    return "printf '%s\\n' " + " ".join(q(w) for w in words)


def check_exact(path: str, expected: str) -> str:
    """Test lines: `path` is a file holding exactly `expected` (one trailing newline or none)."""
    return (
        f'[ -f {q(path)} ] || fail "{path} does not exist"\n'
        f'[ "$(cat {q(path)})" = {q(expected)} ] || fail "{path} does not hold exactly {expected}"\n'
    )


def check_lines(path: str, lines: list[str]) -> str:
    """Test lines: `path` holds exactly these lines (trailing newlines aside)."""
    return (
        f'[ -f {q(path)} ] || fail "{path} does not exist"\n'
        f'[ "$(cat {q(path)})" = "$({lines_of(lines)})" ] || fail "{path} does not hold the expected lines"\n'
    )


def check_number(path: str, n: int | str) -> str:
    """Test lines: `path` holds the number n (whitespace around it ignored)."""
    return (
        f'[ -f {q(path)} ] || fail "{path} does not exist"\n'
        f'[ "$(tr -d \'[:space:]\' < {q(path)})" = {q(str(n))} ] || fail "{path} does not hold {n}"\n'
    )


def write_file(path: str, text: str) -> str:
    """A bash command that writes `text` to `path` verbatim (a quoted heredoc: nothing is expanded)."""
    marker = "ALE_EOF"
    assert marker not in text
    body = text if text.endswith("\n") else text + "\n"
    return f"cat > {q(path)} <<'{marker}'\n{body}{marker}"
