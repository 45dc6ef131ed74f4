"""The generated suite without Docker: families, determinism, splits, shapes of the tasks.

    .venv/bin/pytest tests/roll/test_suite.py -q

Running every family in real sandboxes (tests fail before the solution, pass after) is
tests/roll/test_suite_docker.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from roll.tasks import FAMILIES as PACKAGE_FAMILIES
from roll.tasks import TaskSpec, generate, generate_suite
from roll.tasks.suite import FAMILIES, HELDOUT_SEED, SuiteError, split_of
from roll.tasks.words import VOCAB, WORDS, vocab_split

REQUIRED = {
    "create_file", "make_dir", "append_line", "rename_file", "move_file", "read_then_write", "grep_count",
    "sort_unique", "sed_replace", "json_transform", "csv_transform", "py_bugfix", "py_implement", "git_ops",
    "permissions", "archive", "env_process", "multi_step_chain", "error_recovery",
}  # fmt: skip
SINGLE_STEP_WORD = ["create_file", "make_dir", "append_line", "rename_file", "move_file"]
TRAINED = [f for f, info in FAMILIES.items() if not info.heldout_only]


def _seeds(family: str, n: int) -> list[int]:
    train = [] if FAMILIES[family].heldout_only else list(range(n))
    return train + [HELDOUT_SEED + i for i in range(n)]


def _all(n: int = 6) -> list[TaskSpec]:
    return [generate(f, s) for f in FAMILIES for s in _seeds(f, n)]


def test_the_families_of_the_issue_and_two_heldout_only_ones():
    assert REQUIRED <= set(FAMILIES)
    assert PACKAGE_FAMILIES is FAMILIES
    assert len(TRAINED) >= 14
    heldout_only = [f for f, info in FAMILIES.items() if info.heldout_only]
    assert len(heldout_only) >= 2 and not REQUIRED & set(heldout_only)
    for name, info in FAMILIES.items():
        assert info.name == name and info.description and info.steps >= 1


def test_vocabulary_is_real_words_split_once_into_disjoint_halves():
    assert len(VOCAB) >= 300 and len(set(VOCAB)) == len(VOCAB)
    assert set(WORDS) <= set(VOCAB) and all(re.fullmatch("[a-z]{3,9}", w) for w in VOCAB)
    train, heldout = set(vocab_split("train")), set(vocab_split("heldout"))
    assert not train & heldout and train | heldout == set(VOCAB)
    assert 0.15 < len(heldout) / len(VOCAB) < 0.25
    with pytest.raises(ValueError, match="unknown split"):
        vocab_split("test")


def test_instances_are_a_function_of_family_and_seed_even_across_processes():
    tasks = _all(3)
    assert [t.model_dump() for t in tasks] == [t.model_dump() for t in _all(3)]
    assert len({t.instruction for t in tasks}) == len(tasks)
    # A fresh interpreter with another hash seed must build the very same tasks (no set or hash order leaks).
    code = (
        "import json, sys\nfrom roll.tasks.suite import FAMILIES, generate\n"
        "seeds = json.loads(sys.argv[1])\n"
        "print(json.dumps([generate(f, s).model_dump() for f in FAMILIES for s in seeds[f]]))"
    )
    seeds = {f: _seeds(f, 3) for f in FAMILIES}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(seeds)], capture_output=True, text=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}, check=True)  # fmt: skip
    assert json.loads(out.stdout) == [t.model_dump() for t in tasks]


def test_split_of_seeds_and_bad_input():
    assert split_of("create_file", 0) == "train" and split_of("create_file", HELDOUT_SEED - 1) == "train"
    assert split_of("create_file", HELDOUT_SEED) == "heldout" and split_of("symlink", HELDOUT_SEED + 5) == "heldout"
    with pytest.raises(SuiteError, match="symlink is held-out only"):
        generate("symlink", 0)
    with pytest.raises(SuiteError, match="seeds are >= 0"):
        generate("create_file", -1)
    with pytest.raises(SuiteError, match=r"unknown task family 'nope'; known: create_file, make_dir"):
        generate("nope", 0)
    with pytest.raises(SuiteError, match="unknown split"):
        generate_suite(split="test")
    with pytest.raises(SuiteError, match="unknown task family 'nope'"):
        generate_suite(["create_file", "nope"])


def test_generate_suite_counts_splits_and_ids():
    tasks = generate_suite()
    n_heldout_only = len(FAMILIES) - len(TRAINED)
    assert len(tasks) == 8 * len(TRAINED) + 4 * len(FAMILIES)
    assert len({t.id for t in tasks}) == len(tasks)
    train = generate_suite(split="train", train_per_family=2)
    assert {t.split for t in train} == {"train"} and len(train) == 2 * len(TRAINED)
    assert all(t.seed < HELDOUT_SEED for t in train)
    heldout = generate_suite(split="heldout", heldout_per_family=3)
    assert {t.split for t in heldout} == {"heldout"} and len(heldout) == 3 * len(FAMILIES)
    assert sorted(t.seed for t in heldout if t.family == "symlink") == [1000, 1001, 1002]
    only = generate_suite(["symlink", "create_file"], train_per_family=1, heldout_per_family=1)
    assert [t.id for t in only] == ["symlink-1000", "create_file-0", "create_file-1000"]
    assert n_heldout_only >= 2 and not [t for t in train if FAMILIES[t.family].heldout_only]


def test_train_start_skips_the_first_train_seeds_and_bad_ranges_are_refused():
    later = generate_suite(["create_file", "make_dir"], split="train", train_per_family=3, train_start=12)
    assert [t.id for t in later] == [f"{f}-{s}" for f in ("create_file", "make_dir") for s in (12, 13, 14)]
    assert later[0] == generate("create_file", 12)  # the same instance as seed 12 generated alone
    heldout = generate_suite(["create_file"], split="heldout", train_start=12)
    assert [t.seed for t in heldout] == [1000, 1001, 1002, 1003]
    with pytest.raises(SuiteError, match="train_start 998"):
        generate_suite(["create_file"], train_per_family=3, train_start=998)  # seeds 998-1000: one is held-out
    with pytest.raises(SuiteError, match="train_start -1"):
        generate_suite(["create_file"], train_start=-1)


def test_heldout_instructions_use_heldout_words_and_never_equal_a_train_one():
    train_words, heldout_words = set(vocab_split("train")), set(vocab_split("heldout"))
    tasks = _all(30)
    train = {t.instruction for t in tasks if t.split == "train"}
    heldout = {t.instruction for t in tasks if t.split == "heldout"}
    assert not train & heldout
    for t in tasks:
        used = set(re.findall("[a-z]+", t.instruction)) & set(VOCAB)
        assert used, t.instruction
        assert used <= (heldout_words if t.split == "heldout" else train_words), (t.id, used)


def test_task_shape_and_every_script_parses():
    for t in _all(4):
        assert t.environment.image == "rock/base:bookworm" and t.workdir == "/app" and t.grading == "exit_code"
        assert t.tests["run-tests.sh"].startswith("#!/bin/bash") and t.source == "generated"
        assert t.difficulty == FAMILIES[t.family].difficulty and t.category == FAMILIES[t.family].category
        assert len(t.solution_steps) >= t.steps >= 1
        scripts = [t.environment.setup, t.tests["run-tests.sh"], t.solution, *t.solution_steps]
        for script in scripts:
            r = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
            assert r.returncode == 0, (t.id, script, r.stderr)
        for name, text in t.tests.items():
            if name.endswith(".py"):
                compile(text, f"{t.id}/{name}", "exec")


def test_single_step_word_families_are_short_and_one_call():
    for family in SINGLE_STEP_WORD:
        assert FAMILIES[family].steps == 1
        for seed in _seeds(family, 10):
            t = generate(family, seed)
            assert t.steps == 1 and len(t.solution_steps) == 1 and len(t.instruction) <= 70, t.instruction
    t = generate("create_file", 3)
    name, other = re.fullmatch(r"Create the file /app/(\w+)\.txt containing exactly (\w+)", t.instruction).groups()
    assert t.solution_steps == [f"echo {other} > /app/{name}.txt"]


def test_read_then_write_needs_the_tool_result():
    for seed in _seeds("read_then_write", 10):
        t = generate("read_then_write", seed)
        src, dst = re.fullmatch(r"Write the word in (\S+) to (\S+)", t.instruction).groups()
        word = re.search(rf"echo (\w+) > {src}", t.environment.setup).group(1)
        assert word not in t.instruction and t.solution_steps == [f"cat {src}", f"echo {word} > {dst}"]


def test_multi_step_chain_needs_five_calls_each_on_the_previous_result():
    assert FAMILIES["multi_step_chain"].steps >= 5
    for seed in _seeds("multi_step_chain", 10):
        t = generate("multi_step_chain", seed)
        setup, steps = t.environment.setup, t.solution_steps
        assert t.steps >= 5 and len(steps) >= 5
        reads = [s.removeprefix("cat ") for s in steps[:-1]]
        assert reads[0] in t.instruction and all(r not in t.instruction for r in reads[1:])
        for cur, nxt in zip(reads, reads[1:], strict=False):  # each file names the next one
            assert f"echo {nxt} > {cur}" in setup
        word = re.search(rf"echo (\w+) > {reads[-1]}\n", setup).group(1)
        assert steps[-1].startswith(f"echo {word} > ") and word not in t.instruction


def test_error_recovery_plays_a_failing_first_command_but_its_solution_does_not():
    variants = set()
    for seed in _seeds("error_recovery", 20):
        t = generate("error_recovery", seed)
        assert len(t.solution_steps) >= 2 and t.solution_steps[0] not in t.solution.splitlines()
        variants.add(t.solution_steps[0].split()[0])
    assert len(variants) >= 3  # echo (missing folder), cat (compressed), python, ./script


def test_python_families_grade_with_hidden_tests():
    for seed in _seeds("py_bugfix", 8):
        t = generate("py_bugfix", seed)
        assert {"test_visible.py", "test_hidden.py"} <= set(t.tests)
        assert '"${TEST_DIR:-/tests}"/test_hidden.py' in t.tests["run-tests.sh"]
        assert t.tests["test_hidden.py"] != t.tests["test_visible.py"]
    for seed in _seeds("py_implement", 8):
        t = generate("py_implement", seed)
        assert "test_hidden.py" in t.tests and "raise NotImplementedError" in t.environment.setup
