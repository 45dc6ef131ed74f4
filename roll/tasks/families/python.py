"""Python families: py_bugfix (a small package with one real bug) and py_implement (a function to its docstring)
(`.venv/bin/pytest tests/roll/test_suite.py`; in sandboxes: tests/roll/test_suite_docker.py).

Both are graded by hidden tests in tests/ that the agent never sees: for py_bugfix a copy of the visible tests
plus more cases, so editing the visible tests or special-casing their inputs does not pass. Expected values
are computed here by running the reference code, so a template cannot disagree with itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from roll.tasks.families.base import Draft, Words, family, write_file

# Bytecode is neither read nor written: a fix of the same size made within the second of an earlier run
# (sed word[2:] -> word[1:]) left a stale __pycache__ that Python trusted, and the fixed code failed its tests.
PYTEST = "PYTHONDONTWRITEBYTECODE=1 python3 -m pytest -q -p no:cacheprovider"
FRESH = "find /app -name __pycache__ -prune -exec rm -rf {} +"
TESTS = '"${TEST_DIR:-/tests}"'  # where the harness put tests/ (its convention: TEST_DIR=/tests)


@dataclass(frozen=True)
class Bug:
    core: str  # the correct core.py
    broken: tuple[str, str]  # (correct text, buggy text) replaced once in core.py
    api: str  # api.py; imports from PKG.core
    cases: str  # the name of the function that makes test cases


BUGS = [
    Bug(
        core='''"""Prices and totals."""


def line_total(quantity, price):
    return quantity * price


def order_total(lines):
    """The sum of quantity * price over (name, quantity, price) lines."""
    total = 0
    for i in range(len(lines)):
        _, quantity, price = lines[i]
        total += line_total(quantity, price)
    return total
''',
        broken=("range(len(lines))", "range(1, len(lines))"),
        api='''"""Receipts."""

from PKG.core import order_total


def receipt(lines):
    """One row per (name, quantity, price) line, then the total."""
    rows = [f"{name}: {quantity} x {price}" for name, quantity, price in lines]
    rows.append(f"total: {order_total(lines)}")
    return "\\n".join(rows)
''',
        cases="_order_cases",
    ),
    Bug(
        core='''"""Splitting text into words."""


def split_words(text):
    """The words of text: the runs of characters between whitespace."""
    return text.split()
''',
        broken=("text.split()", 'text.split(" ")'),
        api='''"""Word statistics."""

from PKG.core import split_words


def count_words(text):
    return len(split_words(text))


def longest_word(text):
    words = split_words(text)
    return max(words, key=len) if words else ""
''',
        cases="_words_cases",
    ),
    Bug(
        core='''"""Keeping values in range."""


def clamp(value, low, high):
    """value limited to the range [low, high]."""
    return max(low, min(value, high))
''',
        broken=("max(low, min(value, high))", "min(low, max(value, high))"),
        api='''"""Sensor levels."""

from PKG.core import clamp


def levels(readings, low, high):
    """Each (name, value) reading, clamped to [low, high], by name."""
    return {name: clamp(value, low, high) for name, value in readings}
''',
        cases="_clamp_cases",
    ),
    Bug(
        core='''"""Order statistics."""


def median(values):
    """The middle of the sorted values; the mean of the two middle ones for an even count."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2 == 0:
        return (ordered[middle - 1] + ordered[middle]) / 2
    return ordered[middle]
''',
        broken=("ordered = sorted(values)", "ordered = list(values)"),
        api='''"""Summaries."""

from PKG.core import median


def summary(values):
    return {"low": min(values), "high": max(values), "median": median(values)}
''',
        cases="_median_cases",
    ),
    Bug(
        core='''"""Capital letters."""


def capitalize(word):
    """word with its first letter in upper case."""
    return word[:1].upper() + word[1:]
''',
        broken=("word[1:]", "word[2:]"),
        api='''"""Headings."""

from PKG.core import capitalize


def heading(words):
    return " ".join(capitalize(word) for word in words)
''',
        cases="_heading_cases",
    ),
    Bug(
        core='''"""Counting things."""


def tally(items, counts=None):
    """How many times each item occurs, added to counts (a new dict when none is given)."""
    if counts is None:
        counts = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts
''',
        broken=("counts=None):", "counts={}):"),
        api='''"""The most common item."""

from PKG.core import tally


def most_common(items):
    counts = tally(items)
    return max(counts, key=counts.get)
''',
        cases="_tally_cases",
    ),
]


# Each maker returns (visible test lines, hidden test lines): asserts over the package's functions.
def _order_cases(w: Words, pkg: str) -> tuple[list[str], list[str]]:
    a, b, c, d = w.take(4)
    visible = [
        f"from {pkg}.api import receipt",
        "",
        "def test_receipt_total():",
        f'    assert receipt([("{a}", 2, 3), ("{b}", 1, 5)]).splitlines()[-1] == "total: 11"',
    ]
    n1, p1, n2, p2 = (w.rng.randint(1, 9) for _ in range(4))
    hidden = [
        f"from {pkg}.core import order_total",
        "",
        "def test_order_total():",
        f'    assert order_total([("{c}", {n1}, {p1})]) == {n1 * p1}',
        f'    assert order_total([("{c}", {n1}, {p1}), ("{d}", {n2}, {p2}), ("{a}", 1, 1)]) == {n1 * p1 + n2 * p2 + 1}',
        "    assert order_total([]) == 0",
    ]
    return visible, hidden


def _words_cases(w: Words, pkg: str) -> tuple[list[str], list[str]]:
    a, b, c, d, e = w.take(5)
    visible = [
        f"from {pkg}.api import count_words",
        "",
        "def test_count_words():",
        f'    assert count_words("{a}  {b}\\n{c}") == 3',
    ]
    hidden = [
        f"from {pkg}.api import count_words, longest_word",
        "",
        "def test_words():",
        f'    assert count_words("{d} {e}") == 2',
        f'    assert count_words("  {a}\\t{b}   {c} {d}  ") == 4',
        '    assert count_words("") == 0',
        f'    assert longest_word("{a}   {a}{b}") == "{a}{b}"',
    ]
    return visible, hidden


def _clamp_cases(w: Words, pkg: str) -> tuple[list[str], list[str]]:
    a, b, c = w.take(3)
    lo, hi = w.rng.randint(0, 10), w.rng.randint(50, 90)
    visible = [
        f"from {pkg}.api import levels",
        "",
        "def test_levels():",
        f'    assert levels([("{a}", -5), ("{b}", 20), ("{c}", 99)], 0, 50) == {{"{a}": 0, "{b}": 20, "{c}": 50}}',
    ]
    mid = (lo + hi) // 2
    hidden = [
        f"from {pkg}.core import clamp",
        "",
        "def test_clamp():",
        f"    assert clamp({mid}, {lo}, {hi}) == {mid}",
        f"    assert clamp({lo - 7}, {lo}, {hi}) == {lo}",
        f"    assert clamp({hi + 3}, {lo}, {hi}) == {hi}",
    ]
    return visible, hidden


def _median_cases(w: Words, pkg: str) -> tuple[list[str], list[str]]:
    values = w.rng.sample(range(1, 60), 5)
    even = w.rng.sample(range(1, 60), 4)
    visible = [
        f"from {pkg}.api import summary",
        "",
        "def test_summary():",
        '    assert summary([9, 1, 5])["median"] == 5',
    ]
    s, e = sorted(values), sorted(even)
    hidden = [
        f"from {pkg}.core import median",
        "",
        "def test_median():",
        f"    assert median({values}) == {s[2]}",
        f"    assert median({even}) == {(e[1] + e[2]) / 2}",
        "    assert median([4]) == 4",
    ]
    return visible, hidden


def _heading_cases(w: Words, pkg: str) -> tuple[list[str], list[str]]:
    a, b, c, d = w.take(4)
    visible = [
        f"from {pkg}.api import heading",
        "",
        "def test_heading():",
        f'    assert heading(["{a}", "{b}"]) == "{a.capitalize()} {b.capitalize()}"',
    ]
    hidden = [
        f"from {pkg}.core import capitalize",
        "",
        "def test_capitalize():",
        f'    assert capitalize("{c}") == "{c.capitalize()}"',
        f'    assert capitalize("{d}") == "{d.capitalize()}"',
        '    assert capitalize("x") == "X"',
        '    assert capitalize("") == ""',
    ]
    return visible, hidden


def _tally_cases(w: Words, pkg: str) -> tuple[list[str], list[str]]:
    a, b, c, d = w.take(4)
    visible = [
        f"from {pkg}.core import tally",
        "",
        "def test_tally_starts_empty():",
        f'    assert tally(["{a}", "{b}", "{a}"]) == {{"{a}": 2, "{b}": 1}}',
        f'    assert tally(["{c}"]) == {{"{c}": 1}}',
    ]
    hidden = [
        f"from {pkg}.api import most_common",
        f"from {pkg}.core import tally",
        "",
        "def test_tally():",
        f'    assert tally(["{d}", "{d}"]) == {{"{d}": 2}}',
        f'    assert tally(["{d}"], {{"{d}": 1}}) == {{"{d}": 2}}',
        f'    assert most_common(["{a}", "{c}", "{c}"]) == "{c}"',
        f'    assert most_common(["{b}"]) == "{b}"',
    ]
    return visible, hidden


CONFTEST = '''"""Lets `python3 -m pytest /app/tests` import the package from any directory."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
'''


@family("py_bugfix", category="python", steps=2, difficulty="hard",
        description="fix a real bug in a small multi-file Python package so its unit tests pass")  # fmt: skip
def py_bugfix(w: Words) -> Draft:
    pkg = w.one(module=True)
    bug = w.rng.choice(BUGS)
    visible, hidden = globals()[bug.cases](w, pkg)
    right, wrong = bug.broken
    core = bug.core.replace(right, wrong)
    assert bug.core.count(right) == 1 and core.count(wrong) == 1
    api = bug.api.replace("PKG", pkg)
    visible_py = "\n".join(visible) + "\n"
    root = f"/app/{pkg}"
    setup = "\n".join([
        f"rm -rf {root} /app/tests && mkdir -p {root} /app/tests",
        write_file(f"{root}/__init__.py", f'"""The {pkg} package."""\n'),
        write_file(f"{root}/core.py", core),
        write_file(f"{root}/api.py", api),
        write_file("/app/tests/conftest.py", CONFTEST),
        write_file(f"/app/tests/test_{pkg}.py", visible_py),
    ])  # fmt: skip
    return Draft(
        instruction=f"Fix the bug in the Python package {root} so that `python3 -m pytest /app/tests` passes",
        setup=setup,
        test=(
            f"cd /app && {FRESH}\nPYTHONPATH=/app {PYTEST} {TESTS}/test_visible.py {TESTS}/test_hidden.py "
            '|| fail "the unit tests fail"\n'
        ),
        files={"test_visible.py": visible_py, "test_hidden.py": "\n".join(hidden) + "\n"},
        steps=[f"cat {root}/core.py", f"sed -i 's/{_sed(wrong, '.[]*^$')}/{_sed(right, '&')}/' {root}/core.py"],
    )


def _sed(text: str, special: str) -> str:
    """text as a literal sed pattern (special=".[]*^$") or replacement ("&"), inside single quotes."""
    assert "'" not in text and "/" not in text and "\\" not in text
    return "".join("\\" + ch if ch in special else ch for ch in text)


@dataclass(frozen=True)
class Spec:
    name: str
    signature: str
    doc: str  # the docstring body, examples included
    body: str  # the reference implementation's body
    args: str  # the name of the function that makes argument tuples for the hidden tests


SPECS = [
    Spec(
        "count_vowels",
        "text",
        'How many vowels (a, e, i, o, u, upper or lower case) text contains.\n\n    >>> count_vowels("Apple")\n    2',
        'return sum(ch in "aeiouAEIOU" for ch in text)',
        "_one_text",
    ),  # fmt: skip
    Spec(
        "acronym",
        "phrase",
        "The first letter of each whitespace-separated word of phrase, in upper case.\n\n"
        "    >>> acronym(\"portable network graphics\")\n    'PNG'",
        'return "".join(word[0].upper() for word in phrase.split())',
        "_one_phrase",
    ),  # fmt: skip
    Spec(
        "dedupe",
        "items",
        "items without repeats: the first occurrence of each, in their order.\n\n"
        "    >>> dedupe(['b', 'a', 'b', 'c', 'a'])\n    ['b', 'a', 'c']",
        "seen = set()\n    return [x for x in items if not (x in seen or seen.add(x))]",
        "_one_list",
    ),  # fmt: skip
    Spec(
        "longest_word",
        "text",
        "The longest whitespace-separated word of text; the first of those that tie; "
        '"" when there is none.\n\n    >>> longest_word("a bb cc")\n    \'bb\'',
        'return max(text.split(), key=len, default="")',
        "_one_phrase",
    ),  # fmt: skip
    Spec(
        "compress",
        "text",
        "Run-length encoding: each run of one character becomes the character and the "
        "run's length.\n\n    >>> compress(\"aaabcc\")\n    'a3b1c2'",
        "out = []\n    for ch in text:\n        if out and out[-1][0] == ch:\n            out[-1][1] += 1\n"
        '        else:\n            out.append([ch, 1])\n    return "".join(f"{c}{n}" for c, n in out)',
        "_one_runs",
    ),  # fmt: skip
    Spec(
        "rotate",
        "items, k",
        "items rotated left by k places (k may exceed the length); a new list.\n\n"
        "    >>> rotate([1, 2, 3, 4], 1)\n    [2, 3, 4, 1]",
        "if not items:\n        return []\n    k %= len(items)\n    return items[k:] + items[:k]",
        "_list_and_k",
    ),  # fmt: skip
    Spec(
        "caesar",
        "text, shift",
        "text with each lowercase letter a-z moved shift places on in the alphabet, "
        "wrapping from z to a; other characters unchanged.\n\n    >>> caesar('abz!', 1)\n    'bca!'",
        'return "".join(chr((ord(c) - 97 + shift) % 26 + 97) if "a" <= c <= "z" else c for c in text)',
        "_text_and_shift",
    ),  # fmt: skip
]


def _one_text(w: Words) -> list[tuple]:
    a, b, c = w.take(3)
    return [(a,), (f"{b.upper()} {c}",), ("",), ("xyz",)]


def _one_phrase(w: Words) -> list[tuple]:
    a, b, c, d = w.take(4)
    return [(f"{a} {b} {c}",), (f"  {d}\t{a}{b} ",), (d,)]


def _one_list(w: Words) -> list[tuple]:
    a, b, c = w.take(3)
    return [([a, b, a, c, b, a],), ([c],), ([],)]


def _one_runs(w: Words) -> list[tuple]:
    a, b = w.take(2)
    return [(a,), (f"{b[0] * 4}{a}{a[-1] * 3}",), ("",)]


def _list_and_k(w: Words) -> list[tuple]:
    items = w.take(w.rng.randint(3, 6))
    return [(items, 2), (items, len(items) + 1), (items, 0), ([], 3)]


def _text_and_shift(w: Words) -> list[tuple]:
    a, b = w.take(2)
    return [(a, w.rng.randint(1, 25)), (f"{b} {a}!", 13), ("zzz", 27)]


def _source(spec: Spec, body: str) -> str:
    return f'def {spec.name}({spec.signature}):\n    """{spec.doc}\n    """\n    {body}\n'


@family("py_implement", category="python", steps=1, difficulty="medium",
        description="implement a Python function to its docstring; hidden tests")  # fmt: skip
def py_implement(w: Words) -> Draft:
    mod = w.one(module=True)
    spec = w.rng.choice(SPECS)
    reference = _source(spec, spec.body)
    space: dict = {}
    exec(reference, space)  # our own reference code: the expected values come from running it
    cases = globals()[spec.args](w)
    asserts = [f"    assert {spec.name}({', '.join(map(repr, args))}) == {space[spec.name](*args)!r}" for args in cases]
    hidden = f"from {mod} import {spec.name}\n\n\ndef test_{spec.name}():\n" + "\n".join(asserts) + "\n"
    header = f'"""{mod}: one small helper."""\n\n\n'
    path = f"/app/{mod}.py"
    return Draft(
        instruction=f"Implement the function {spec.name} in {path} as its docstring describes",
        setup=write_file(path, header + _source(spec, "raise NotImplementedError")),
        test=f'cd /app && {FRESH}\nPYTHONPATH=/app {PYTEST} {TESTS}/test_hidden.py || fail "{spec.name} is not right"\n',
        files={"test_hidden.py": hidden},
        steps=[write_file(path, header + reference)],
    )
