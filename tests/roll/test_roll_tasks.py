"""The word task families, their tests and solutions run with real bash: `.venv/bin/pytest tests/roll/test_roll_tasks.py`."""

import subprocess

import pytest

from roll.tasks import FAMILIES, make_tasks
from roll.tasks.words import WORDS


def bash(script: str) -> int:
    return subprocess.run(["bash", "-c", script], capture_output=True).returncode


def test_split_is_deterministic_by_seed_and_disjoint_by_word():
    a, b = make_tasks(seed=1), make_tasks(seed=1)
    assert [t.model_dump() for t in a] == [t.model_dump() for t in b]
    held_out = {t.id.split("-")[1] for t in a if t.split == "held_out"}
    assert {t.id.split("-")[1] for t in make_tasks(seed=2) if t.split == "held_out"} != held_out
    first_word = {t.id.split("-")[1]: t.split for t in a}
    assert all(first_word[t.id.split("-")[1]] == t.split for t in a)
    assert 0.1 < sum(t.split == "held_out" for t in a) / len(a) < 0.3


def test_instructions_use_real_words_and_ids_are_unique():
    tasks = make_tasks()
    assert len({t.id for t in tasks}) == len(tasks) == len(FAMILIES) * len(WORDS)
    for t in tasks:
        _, word, other = t.id.split("-")
        assert word in WORDS and other in WORDS and word != other
        assert word in t.instruction and other in t.instruction


@pytest.mark.parametrize("family", FAMILIES)
def test_solution_resolves_and_nothing_does_not(tmp_path, family):
    for task in make_tasks([family], root=str(tmp_path))[:5]:
        assert bash(task.setup) == 0
        assert bash(task.test) != 0, "the test must fail before the task is done"
        assert bash(task.solution) == 0
        assert bash(task.test) == 0, task.id


def test_wrong_content_fails(tmp_path):
    task = make_tasks(["create_file"], root=str(tmp_path))[0]
    word = task.id.split("-")[1]
    bash(task.setup)
    (tmp_path / f"{word}.txt").write_text("something else\n")
    assert bash(task.test) != 0


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(ValueError, match="create_file, make_dir"):
        make_tasks(["nope"])
