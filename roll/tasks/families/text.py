"""Text-processing families: grep_count, sort_unique, sed_replace and the held-out count_words
(`.venv/bin/pytest tests/roll/test_suite.py`).

The word searched for or replaced is never part of another word in the file (and no word in the file is part
of it), so "contains the word X" and "every X" mean one thing whether the agent uses grep, grep -w or awk.
"""

from __future__ import annotations

from roll.tasks.families.base import Draft, Words, check_lines, check_number, family, lines_of, q


def _lines(w: Words, n: int, *, unlike: list[str]) -> list[list[str]]:
    return [w.filler(w.rng.randint(2, 4), unlike=unlike) for _ in range(n)]


@family("grep_count", category="text", steps=1, description="count the lines of a file that contain a word")
def grep_count(w: Words) -> Draft:
    name, target, out = w.take(3)
    rows = _lines(w, w.rng.randint(8, 16), unlike=[target])
    hits = w.rng.sample(range(len(rows)), w.rng.randint(1, len(rows) - 2))
    for i in hits:  # some lines hold the word twice: the count is of lines, not of occurrences
        for _ in range(w.rng.choice([1, 1, 2])):
            rows[i].insert(w.rng.randint(0, len(rows[i])), target)
    path, answer = f"/app/{name}.txt", f"/app/{out}.txt"
    return Draft(
        instruction=f"Write the number of lines in {path} that contain {target} to {answer}",
        setup=f"{lines_of(' '.join(r) for r in rows)} > {path}",
        test=check_number(answer, len(hits)),
        steps=[f"grep -c {target} {path} > {answer}"],
    )


@family("sort_unique", category="text", steps=1, description="sort the lines of a file and drop duplicates")
def sort_unique(w: Words) -> Draft:
    name, out = w.take(2)
    distinct = w.take(w.rng.randint(5, 9))
    body = distinct + w.rng.choices(distinct, k=w.rng.randint(2, 5))
    w.rng.shuffle(body)
    src, dst = f"/app/{name}.txt", f"/app/{out}.txt"
    return Draft(
        instruction=f"Sort the lines of {src} alphabetically, remove duplicate lines, and write the result to {dst}",
        setup=f"{lines_of(body)} > {src}",
        test=check_lines(dst, sorted(distinct)),
        steps=[f"sort -u {src} > {dst}"],
    )


@family("sed_replace", category="text", steps=1, description="replace every occurrence of a word in a file")
def sed_replace(w: Words) -> Draft:
    name, old = w.take(2)
    new = w.one(unlike=[old])
    rows = _lines(w, w.rng.randint(4, 8), unlike=[old, new])
    for i in w.rng.sample(range(len(rows)), w.rng.randint(2, len(rows))):
        rows[i].insert(w.rng.randint(0, len(rows[i])), old)
    rows[0].append(old)  # twice on one line at least: a replace without /g misses it
    path = f"/app/{name}.txt"
    before = [" ".join(r) for r in rows]
    after = [line.replace(old, new) for line in before]
    return Draft(
        instruction=f"In {path}, replace every {old} with {new}",
        setup=f"{lines_of(before)} > {path}",
        test=check_lines(path, after),
        steps=[f"sed -i 's/{old}/{new}/g' {path}"],
    )


@family("count_words", category="text", steps=1, heldout_only=True, description="count the words in a file")
def count_words(w: Words) -> Draft:
    name, out = w.take(2)
    rows = _lines(w, w.rng.randint(3, 7), unlike=[])
    rows[-1] = [f"  {rows[-1][0]}", *rows[-1][1:]]  # uneven spacing: splitting on single spaces miscounts
    path, answer = f"/app/{name}.txt", f"/app/{out}.txt"
    return Draft(
        instruction=f"Write the number of words in {path} to {answer}",
        setup=f"{lines_of('   '.join(r) if i % 2 else ' '.join(r) for i, r in enumerate(rows))} > {q(path)}",
        test=check_number(answer, sum(len(r) for r in rows)),
        steps=[f"wc -w < {path} > {answer}"],
    )
