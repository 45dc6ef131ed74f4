"""Structured-data families: json_transform and csv_transform (`.venv/bin/pytest tests/roll/test_suite.py`).

Each instance picks one variant (filter, rename, map; sum, select, argmax). JSON answers are checked by
parsing them, so any formatting the agent's tool writes is accepted.
"""

from __future__ import annotations

import json

from roll.tasks.families.base import Draft, Words, check_exact, check_lines, check_number, family, q, write_file


def _items(w: Words, kinds: list[str]) -> list[dict]:
    names = w.take(w.rng.randint(5, 8))
    counts = w.rng.sample(range(1, 100), len(names))  # distinct: a largest one exists
    items = [{"name": n, "kind": w.rng.choice(kinds), "count": c} for n, c in zip(names, counts, strict=True)]
    items[0]["kind"] = kinds[0]  # the kind an instruction asks about occurs at least once
    return items


def _check_json(path: str, expected) -> str:
    script = (
        f"import json, sys\nsys.exit(0 if json.load(open({path!r})) == json.loads({json.dumps(expected)!r}) else 1)"
    )
    return (
        f'[ -f {path} ] || fail "{path} does not exist"\n'
        f'python3 -c {q(script)} || fail "{path} does not hold the expected JSON"\n'
    )


def _py(script: str) -> str:
    return f"python3 -c {q(script)}"


@family("json_transform", category="data", steps=1, difficulty="medium",
        description="filter, rename or map the fields of a JSON list")  # fmt: skip
def json_transform(w: Words) -> Draft:
    src_name, dst_name = w.take(2)
    kinds = w.take(3)
    items = _items(w, kinds)
    src, dst = f"/app/{src_name}.json", f"/app/{dst_name}.json"
    load = f'import json; d = json.load(open("{src}")); '
    variant = w.rng.choice(["filter", "rename", "map"])
    if variant == "filter":
        kind = kinds[0]
        expected = [i["name"] for i in items if i["kind"] == kind]
        instruction = f'Write to {dst} a JSON list of the names of the items in {src} whose kind is "{kind}"'
        step = _py(load + f'json.dump([i["name"] for i in d if i["kind"] == "{kind}"], open("{dst}", "w"))')
    elif variant == "rename":
        field = w.one()
        expected = [{field if k == "kind" else k: v for k, v in i.items()} for i in items]
        instruction = f'Write to {dst} the items of {src} with the field "kind" renamed to "{field}"'
        step = _py(load + f'json.dump([{{("{field}" if k == "kind" else k): v for k, v in i.items()}} for i in d], '
                   f'open("{dst}", "w"))')  # fmt: skip
    else:
        expected = {i["name"]: i["count"] for i in items}
        instruction = f"Write to {dst} a JSON object that maps the name of each item in {src} to its count"
        step = _py(load + f'json.dump({{i["name"]: i["count"] for i in d}}, open("{dst}", "w"))')
    return Draft(
        instruction=instruction,
        setup=write_file(src, json.dumps(items, indent=2)),
        test=_check_json(dst, expected),
        steps=[step],
    )


@family("csv_transform", category="data", steps=1, difficulty="medium",
        description="sum, select or find the largest in a CSV column")  # fmt: skip
def csv_transform(w: Words) -> Draft:
    src_name, dst_name = w.take(2)
    places = w.take(3)
    rows = [(i["name"], i["kind"], i["count"]) for i in _items(w, places)]
    src, dst = f"/app/{src_name}.csv", f"/app/{dst_name}.txt"
    place = places[0]
    variant = w.rng.choice(["sum", "select", "largest"])
    if variant == "sum":
        instruction = f"Write to {dst} the sum of the amount column of {src} over the rows whose place is {place}"
        test = check_number(dst, sum(a for _, p, a in rows if p == place))
        step = f"awk -F, '$2 == \"{place}\" {{ s += $3 }} END {{ print s }}' {src} > {dst}"
    elif variant == "select":
        instruction = f"Write to {dst} the names of the rows of {src} whose place is {place}, one per line, in order"
        test = check_lines(dst, [n for n, p, _ in rows if p == place])
        step = f"awk -F, '$2 == \"{place}\" {{ print $1 }}' {src} > {dst}"
    else:
        instruction = f"Write to {dst} the name of the row of {src} with the largest amount"
        test = check_exact(dst, max(rows, key=lambda r: r[2])[0])
        step = f"tail -n +2 {src} | sort -t, -k3 -n | tail -1 | cut -d, -f1 > {dst}"
    body = "name,place,amount\n" + "".join(f"{n},{p},{a}\n" for n, p, a in rows)
    return Draft(instruction=instruction, setup=write_file(src, body), test=test, steps=[step])
