"""Sequential rollback and parallel initialization against hand-worked schedules:
`.venv/bin/pytest tests/roll/test_rollback.py` (pure Python, well under a second).
"""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from roll.algo.rollback import ParallelInit, RollbackConfig, SequentialRollback, make_schedule

T, F = True, False


def feed(schedule, start: int, outcomes: list[bool]) -> list[list[int]]:
    """Record `outcomes` at `start` one by one; returns where the schedule pointed after each."""
    seen = []
    for ok in outcomes:
        schedule.record(start, ok)
        seen.append(schedule.next_starts(1))
    return seen


def test_sequential_hand_worked_schedule_with_two_critical_chunks():
    cfg = RollbackConfig(group=2, threshold=0.75, drop=0.5, budget=4, critical_budget=6)
    s = SequentialRollback(4, cfg)
    assert s.next_starts(3) == [3, 3, 3]  # the last chunk first
    # start 3: T T -> rate 1.0 >= 0.75: learned, one chunk back
    assert feed(s, 3, [T, T]) == [[3], [2]]
    # start 2: T F -> 0.5, 1.0 - 0.5 >= drop: chunk 2 critical; stays until T T (rate 1.0) after 5 attempts
    assert feed(s, 2, [T, F, F, T, T]) == [[2], [2], [2], [2], [1]]
    assert s.critical == [2]
    # a late outcome of start 3 counts in its stats and moves nothing
    s.record(3, F)
    assert s.next_starts(1) == [1] and s.report()[0].attempts == 3
    # start 1: T T -> learned at once (1.0 vs 1.0 is no drop)
    assert feed(s, 1, [T, T]) == [[1], [0]]
    # start 0: F F -> 0.0, 1.0 below start 1's: critical; never learned, left after its critical budget of 6
    assert feed(s, 0, [F] * 6) == [[0]] * 6
    assert s.done and s.critical == [0, 2] and s.next_starts(2) == [0, 0]
    rows = {r.start: r for r in s.report()}
    assert [r.start for r in s.report()] == [3, 2, 1, 0]
    assert (rows[2].attempts, rows[2].resolved, rows[2].rate, rows[2].critical, rows[2].learned) == (5, 3, 1.0, T, T)
    assert (rows[0].attempts, rows[0].rate, rows[0].critical, rows[0].learned) == (6, 0.0, T, F)
    assert s.events == [
        "start 3 learned (rate 1.00 after 2 attempts)",
        "chunk 2 critical: rate 0.50 at start 2 after 1.00 at 3",
        "start 2 learned (rate 1.00 after 5 attempts)",
        "start 1 learned (rate 1.00 after 2 attempts)",
        "chunk 0 critical: rate 0.00 at start 0 after 1.00 at 1",
        "start 0 left unlearned (rate 0.00, budget of 6 attempts spent)",
        "rollback done: attempts start at chunk 0",
    ]


def test_sequential_unlearned_start_without_a_drop_moves_on_after_its_budget_and_is_not_critical():
    s = SequentialRollback(2, RollbackConfig(group=2, threshold=0.5, drop=0.5, budget=4, critical_budget=8))
    assert feed(s, 1, [F, F, F, F]) == [[1], [1], [1], [0]]  # no later start to drop from; budget 4
    assert feed(s, 0, [F, F]) == [[0], [0]]  # 0.0 after 0.0: no drop, not critical
    assert s.critical == [] and not s.done
    feed(s, 0, [T, T])
    assert s.done and s.critical == []


def test_sequential_small_drop_is_not_critical_and_measures_only_since_arrival():
    s = SequentialRollback(3, RollbackConfig(group=2, threshold=0.5, drop=0.6))
    feed(s, 2, [T, T])  # 1.0
    feed(s, 1, [T, F])  # 0.5: learned (>= 0.5), drop 0.5 < 0.6: not critical
    assert s.next_starts(1) == [0] and s.critical == []
    s.record(0, T)  # one outcome is not a group: nothing decided yet
    assert s.next_starts(1) == [0] and not s.done


def test_one_chunk_reference_and_bad_starts():
    s = SequentialRollback(1, RollbackConfig(group=1))
    assert s.next_starts(1) == [0]
    s.record(0, True)
    assert s.done
    with pytest.raises(ValueError, match="start 1 is not a chunk of this reference"):
        s.record(1, True)
    with pytest.raises(ValueError, match="at least one chunk"):
        SequentialRollback(0)


def test_config_is_validated():
    with pytest.raises(ValidationError, match="must be at least group"):
        RollbackConfig(group=8, budget=4)
    with pytest.raises(ValidationError, match="extra"):
        RollbackConfig(windw=3)
    with pytest.raises(ValidationError):
        RollbackConfig(threshold=1.5)
    assert isinstance(make_schedule(3), SequentialRollback)
    assert isinstance(make_schedule(3, RollbackConfig(mode="parallel")), ParallelInit)


def test_parallel_weights_follow_critical_and_unlearned_starts():
    p = ParallelInit(3, RollbackConfig(mode="parallel", group=2, threshold=0.5, drop=0.5))
    assert p.weights() == [2.0, 2.0, 2.0]  # nothing measured: all unlearned
    feed(p, 2, [T, T])
    assert p.weights() == [2.0, 2.0, 1.0]  # start 2 learned
    feed(p, 1, [F, F])
    assert p.critical == [1] and p.weights() == [2.0, 4.0, 1.0]  # 0.0 after 1.0 at start 2: critical
    feed(p, 0, [T, T])
    assert p.critical == [1] and p.weights() == [1.0, 4.0, 1.0]  # start 0 at 1.0 after 0.0: a rise, not critical
    assert not p.done
    feed(p, 1, [T, T])
    assert p.weights() == [1.0, 1.0, 1.0] and p.done
    feed(p, 1, [F, F])  # forgotten: unlearned again, and still critical
    assert p.weights() == [1.0, 4.0, 1.0] and not p.done
    assert p.events[-1] == "start 1 unlearned again (rate 0.00)"


def test_parallel_draws_are_seeded_and_proportional_to_the_weights():
    cfg = RollbackConfig(mode="parallel", group=2, seed=7)
    p = ParallelInit(3, cfg)
    feed(p, 2, [T, T])
    feed(p, 1, [F, F])
    feed(p, 0, [T, T])
    assert p.weights() == [1.0, 4.0, 1.0]
    draws = p.next_starts(6000)
    share = Counter(draws)
    assert abs(share[1] / 6000 - 4 / 6) < 0.03 and abs(share[0] / 6000 - 1 / 6) < 0.03
    q = ParallelInit(3, cfg)
    feed(q, 2, [T, T])
    feed(q, 1, [F, F])
    feed(q, 0, [T, T])
    assert q.next_starts(6000) == draws  # same seed, same outcomes: the same starts
    r = ParallelInit(2, RollbackConfig(mode="parallel", group=1, learned_weight=0.0))
    feed(r, 0, [T])
    feed(r, 1, [T])
    assert r.done and r.next_starts(3) == [0, 0, 0]  # nothing left to favour: whole attempts
