"""The believed pool over scripted histories, and the plans that move it to a target."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seftpilot.core.ledger import (
    HistoryEntry,
    PlannedStep,
    StuckMark,
    derive_pool,
    plan,
)

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def day(n: int) -> datetime:
    return T0 + timedelta(days=n)


def sub(
    sid: int,
    action: str,
    refs: list[str],
    verdict: str | None = "confirmed_success",
    uploaded: int | None = None,
    rejected: tuple[str, ...] = (),
) -> HistoryEntry:
    return HistoryEntry(
        sid,
        action,  # type: ignore[arg-type]
        verdict,
        day(uploaded if uploaded is not None else sid),
        [(r, "rejected" if r in rejected else None) for r in refs],
    )


# -- pool ---------------------------------------------------------------------------------


def test_accepted_add_then_accepted_delete() -> None:
    pool = derive_pool(
        [sub(1, "ADD", ["A", "B", "C"]), sub(2, "DELETE", ["B"], "presumed_success")]
    )
    assert list(pool) == ["A", "C"]
    assert pool.members["A"].submission_id == 1
    assert pool.members["A"].added_at == day(1)
    assert pool.last_change == day(2) and pool.last_submission_id == 2


@pytest.mark.parametrize("verdict", ["failed", "unknown", None])
def test_failed_or_unknown_verdicts_change_nothing(verdict: str | None) -> None:
    history = [
        sub(1, "ADD", ["A", "B"]),
        sub(2, "DELETE", ["A"], verdict),
        sub(3, "ADD", ["X"], verdict),
    ]
    pool = derive_pool(history)
    assert list(pool) == ["A", "B"]
    assert pool.last_submission_id == 1


def test_unaccepted_refs_are_never_read() -> None:
    def explode():  # type: ignore[no-untyped-def]
        raise AssertionError("refs of an unaccepted submission were read")
        yield

    entry = HistoryEntry(9, "ADD", "failed", day(1), explode())
    assert len(derive_pool([entry])) == 0


def test_pool_follows_upload_time_not_list_order() -> None:
    history = [
        sub(2, "DELETE", ["A"], uploaded=5),
        sub(1, "ADD", ["A", "B"], uploaded=1),
        sub(3, "ADD", ["C"], uploaded=3),
    ]
    pool = derive_pool(history)
    assert list(pool) == ["B", "C"]


def test_readding_keeps_the_original_add() -> None:
    pool = derive_pool([sub(1, "ADD", ["A"]), sub(2, "ADD", ["A", "B"])])
    assert list(pool) == ["A", "B"]
    assert pool.members["A"].submission_id == 1


def test_rows_rejected_one_by_one_stay_out() -> None:
    history = [
        sub(1, "ADD", ["A", "B", "C"], rejected=("B",)),
        # NHS refused the DELETE row for C: C stays in.
        sub(2, "DELETE", ["A", "C"], rejected=("C",)),
    ]
    assert list(derive_pool(history)) == ["C"]


def test_uploaded_without_time_counts_for_nothing() -> None:
    entry = HistoryEntry(1, "ADD", "confirmed_success", None, [("A", None)])
    assert len(derive_pool([entry])) == 0


def test_stuck_references_are_reported_apart_with_the_delete_they_survived() -> None:
    history = [sub(1, "ADD", ["A", "B"]), sub(2, "DELETE", ["A", "B"])]
    marks = [
        StuckMark("A", day(10), "returned file 2026-03 still lists it"),
        StuckMark("B", day(10), "old", resolved=True),
    ]
    pool = derive_pool(history, marks)
    assert list(pool) == []
    assert list(pool.stuck) == ["A"]
    stuck = pool.stuck["A"]
    assert (stuck.deleted_by, stuck.deleted_at) == (2, day(2))
    assert stuck.evidence.startswith("returned file")


def test_an_accepted_add_after_a_stuck_mark_makes_it_a_member_again() -> None:
    history = [sub(1, "ADD", ["A"]), sub(2, "DELETE", ["A"]), sub(3, "ADD", ["A"])]
    pool = derive_pool(history, [StuckMark("A", day(2), "still there")])
    assert list(pool) == ["A"]
    assert pool.stuck == {}


def test_late_failure_after_presumed_success_drops_the_changes() -> None:
    # The store passes the current verdict: a presumed success later failed is 'failed'.
    history = [sub(1, "ADD", ["A"]), sub(2, "ADD", ["B"], "failed")]
    assert list(derive_pool(history)) == ["A"]


# -- plan ---------------------------------------------------------------------------------


def shape(steps: list[PlannedStep]) -> list[tuple[int, str, int, int]]:
    return [(s.order, s.action, s.count, s.day_offset) for s in steps]


def test_diff_deletes_only_what_leaves_and_adds_only_what_is_new() -> None:
    steps = plan(["A", "B", "C"], ["B", "C", "D", "E"])
    assert shape(steps) == [(1, "DELETE", 1, 0), (2, "ADD", 2, 1)]
    assert steps[0].refs == ("A",)
    assert steps[1].refs == ("D", "E")
    assert steps[1].waits_for == (1,)
    assert steps[0].waits_for == ()


def test_replace_deletes_the_whole_pool_then_adds_the_whole_target() -> None:
    steps = plan(["A", "B"], ["B", "C"], "replace")
    assert shape(steps) == [(1, "DELETE", 2, 0), (2, "ADD", 2, 1)]
    assert steps[0].refs == ("A", "B") and steps[1].refs == ("B", "C")


def test_empty_diff_is_nothing_to_do() -> None:
    assert plan(["A", "B"], ["B", "A"]) == []
    assert plan([], []) == []
    assert plan([], [], "replace") == []


def test_first_submission_is_all_adds() -> None:
    steps = plan([], ["A", "B"])
    assert shape(steps) == [(1, "ADD", 2, 0)]
    assert steps[0].waits_for == ()


def test_only_leavers_means_only_a_delete() -> None:
    assert shape(plan(["A", "B"], ["A"])) == [(1, "DELETE", 1, 0)]


def test_never_mixes_actions_and_deletes_come_first() -> None:
    steps = plan([f"P{i}" for i in range(7)], [f"T{i}" for i in range(5)], max_rows=3)
    actions = [s.action for s in steps]
    assert actions == ["DELETE"] * 3 + ["ADD"] * 2
    for s in steps:
        assert len(set(s.refs)) == s.count  # each file's rows are distinct
    # One file per NHS day: offsets are strictly increasing by one.
    assert [s.day_offset for s in steps] == list(range(len(steps)))


def test_split_at_the_row_limit_covers_every_row_once_in_order() -> None:
    target = [f"R{i:03d}" for i in range(10)]
    steps = plan([], target, max_rows=4)
    assert [(s.count, s.part, s.parts) for s in steps] == [(4, 1, 3), (4, 2, 3), (2, 3, 3)]
    assert [r for s in steps for r in s.refs] == target
    steps = plan([], target, max_rows=5)
    assert [s.count for s in steps] == [5, 5]
    assert len(plan([], target)) == 1  # the real limit (1,000,000) is far away


def test_adds_wait_for_every_delete_before_them() -> None:
    steps = plan(["A", "B", "C"], ["X", "Y", "Z"], max_rows=2)
    adds = [s for s in steps if s.action == "ADD"]
    assert all(s.waits_for == (1, 2) for s in adds)


def test_duplicates_in_target_count_once() -> None:
    assert shape(plan([], ["A", "A", "B"])) == [(1, "ADD", 2, 0)]


def test_deletes_follow_pool_order_adds_follow_target_order() -> None:
    steps = plan(["Z", "M", "A"], ["Q", "B"], "diff")
    assert steps[0].refs == ("Z", "M", "A")
    assert steps[1].refs == ("Q", "B")


def test_bad_strategy_or_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="strategy"):
        plan([], ["A"], "merge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_rows"):
        plan([], ["A"], max_rows=0)


def test_plan_accepts_a_derived_pool() -> None:
    pool = derive_pool([sub(1, "ADD", ["A", "B"])])
    assert shape(plan(pool, ["B", "C"])) == [(1, "DELETE", 1, 0), (2, "ADD", 1, 1)]


refs = st.lists(st.sampled_from([f"S{i}" for i in range(30)]), max_size=30, unique=True)


@given(
    pool=refs, target=refs, strategy=st.sampled_from(["diff", "replace"]), limit=st.integers(1, 7)
)
def test_accepting_every_step_moves_the_pool_to_the_target(
    pool: list[str], target: list[str], strategy: str, limit: int
) -> None:
    history = [sub(1, "ADD", pool)] if pool else []
    steps = plan(derive_pool(history), target, strategy, max_rows=limit)  # type: ignore[arg-type]
    for s in steps:
        history.append(sub(s.order + 1, s.action, list(s.refs)))
        assert s.count <= limit
    assert set(derive_pool(history)) == set(target)
    seen_add = False
    for s in steps:
        seen_add = seen_add or s.action == "ADD"
        assert not (seen_add and s.action == "DELETE")
    if strategy == "diff":
        assert sum(s.count for s in steps) == len(set(pool) ^ set(target))
