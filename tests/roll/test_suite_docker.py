"""Every suite family in real sandboxes: tests fail before the solution and pass after it.

    .venv/bin/pytest tests/roll/test_suite_docker.py -q

For each family, 2 train seeds and 1 held-out seed (held-out-only families: 3 held-out seeds), plus one train
seed for each further variant of the family (`_seeds`), run in one ROCK sandbox per family, a few families at
once, the way the harness runs a task: setup, then `tests/` written to /tests and `bash /tests/run-tests.sh` run
with cwd = workdir and TEST_DIR=/tests. Without the solution the tests must fail; after it they must pass.
Every second instance of a family plays `solution_steps` as separate commands (one tool call each) instead of
`solution`, so the steps the oracle teacher plays are checked too; for error_recovery the first step, the
obvious command, must itself fail.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from rock.launch import RockProcess
from roll.tasks.spec import TaskSpec
from roll.tasks.suite import FAMILIES, HELDOUT_SEED, generate
from roll.tasks.words import VOCAB

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CONCURRENCY = 4


def _shape(task: TaskSpec) -> str:
    """The instance with its words and numbers blanked: one shape per variant (filter or rename, .gz or .xz,
    which bug, which function) of a family."""
    text = task.instruction + "\n" + task.solution_steps[-1]
    return re.sub(r"\d+", "N", re.sub(r"[A-Za-z]+", lambda m: "W" if m.group().lower() in VOCAB else m.group(), text))


def _seeds(family: str) -> list[int]:
    """2 train seeds and 1 held-out one (3 held-out for held-out-only families), then more train seeds until
    every variant that the first 60 train seeds show has run once."""
    if FAMILIES[family].heldout_only:
        return [HELDOUT_SEED, HELDOUT_SEED + 1, HELDOUT_SEED + 2]
    seeds = [0, 1, HELDOUT_SEED]
    seen = {_shape(generate(family, s)) for s in seeds}
    for seed in range(2, 60):
        shape = _shape(generate(family, seed))
        if shape not in seen:
            seen.add(shape)
            seeds.append(seed)
    return seeds


def _tests(sb, task: TaskSpec):
    return sb.exec(f"bash /tests/{task.test_entry}", cwd=task.workdir, env={"TEST_DIR": "/tests"},
                   timeout=task.test_timeout_s)  # fmt: skip


def _run_instance(sb, task: TaskSpec, play_steps: bool) -> list[str]:
    """What went wrong with one instance (empty = it behaves)."""
    sb.exec("rm -rf /app /tests && mkdir -p /tests", timeout=30)
    for name, text in task.tests.items():
        sb.write_file(f"/tests/{name}", text)
    r = sb.exec(task.environment.setup, timeout=60)
    if r.exit_code != 0:
        return [f"{task.id}: setup failed ({r.exit_code}): {(r.stderr or r.stdout)[-300:]}"]
    before = _tests(sb, task)
    if before.exit_code == 0:
        return [f"{task.id}: the tests pass before the solution ran"]
    problems = []
    if play_steps:
        for i, step in enumerate(task.solution_steps):
            r = sb.exec(step, cwd=task.workdir, timeout=60)
            if i == 0 and task.family == "error_recovery" and r.exit_code == 0:
                problems.append(f"{task.id}: the obvious first command succeeded: {step!r}")
    else:
        r = sb.exec(task.solution, cwd=task.workdir, timeout=60)
        if r.exit_code != 0:
            problems.append(f"{task.id}: solution failed ({r.exit_code}): {(r.stderr or r.stdout)[-300:]}")
    after = _tests(sb, task)
    if after.exit_code != 0 or "PASS" not in after.stdout:
        how = "solution_steps" if play_steps else "solution"
        problems.append(f"{task.id}: tests fail after the {how}: {(after.stdout + after.stderr)[-400:]}")
    return problems


def _run_family(client, family: str) -> list[str]:
    with client.create_sandbox(image="rock/base:bookworm", memory="512m", pids_limit=256) as sb:
        problems = []
        for i, seed in enumerate(_seeds(family)):
            problems += _run_instance(sb, generate(family, seed), play_steps=i % 2 == 1)
        return problems


@pytest.fixture(scope="module")
def outcomes(docker_client) -> dict[str, list[str]]:
    """Every family run once for the whole module, CONCURRENCY families at a time."""
    with RockProcess() as rock, rock.client() as client, ThreadPoolExecutor(CONCURRENCY) as pool:
        futures = {family: pool.submit(_run_family, client, family) for family in FAMILIES}
        return {family: future.result() for family, future in futures.items()}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_fails_before_and_resolves_after_its_solution(outcomes, family):
    assert outcomes[family] == []
