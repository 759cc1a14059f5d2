"""Verdicts: every row of DESIGN.md's table, the precedence, and every reason."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seftpilot.core.verdict import (
    AMBIGUOUS,
    Canary,
    Evidence,
    MailEvidence,
    Verdict,
    VerdictKind,
    decide,
    listening_gaps,
    verdict_due,
)

ME = 7
OTHER = 8
# Upload Monday 2 March 2026 10:00 GMT; the window closes Tuesday 12:00 GMT.
START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
END = datetime(2026, 3, 3, 12, 0, tzinfo=UTC)
MAX_GAP = timedelta(minutes=30)


def every(minutes: int, start: datetime = START, end: datetime = END) -> list[datetime]:
    out, t = [], start
    while t <= end:
        out.append(t)
        t += timedelta(minutes=minutes)
    return out


def at(hours: float) -> datetime:
    return START + timedelta(hours=hours)


def evidence(**changes: Any) -> Evidence:
    base = Evidence(
        submission_id=ME,
        window_start=START,
        window_end=END,
        listening=every(5),
        max_gap=MAX_GAP,
        canary_required=True,
        canaries=[Canary(at(0.5), at(0.5) + timedelta(minutes=2))],
        mails=[],
    )
    return replace(base, **changes)


def mail(
    hours: float,
    class_: str,
    correlated: int | str | None = ME,
    captures: dict[str, str] | None = None,
) -> MailEvidence:
    return MailEvidence(
        received_at=at(hours),
        class_=class_,
        correlated=correlated,  # type: ignore[arg-type]
        captures=captures or {},
        ref="Cohort submission",
    )


def has(reasons: Sequence[str], *fragments: str) -> bool:
    return any(all(f in r for f in fragments) for r in reasons)


# -- the table ----------------------------------------------------------------------------


def test_presumed_success_with_full_evidence() -> None:
    v = decide(evidence(mails=[mail(20, "release_reminder", None)]))
    assert v.kind is VerdictKind.PRESUMED_SUCCESS
    assert v.kind.successful
    assert has(v.reasons, "listening unbroken")
    assert has(v.reasons, "canary sent Mon 02 Mar 10:30 arrived")
    assert has(v.reasons, "all 1 NHS mails in the window matched a rule")


def test_confirmed_success_needs_no_listening_proof() -> None:
    v = decide(
        evidence(
            listening=[],
            canaries=[],
            mails=[mail(20, "submission_succeeded", captures={"link": "https://x/summary"})],
        )
    )
    assert v.kind is VerdictKind.CONFIRMED_SUCCESS
    assert v.captures == ({"link": "https://x/summary"},)
    assert has(v.reasons, "success notice", "submission_succeeded")


def test_failed_keeps_the_captures() -> None:
    v = decide(evidence(mails=[mail(20, "submission_failed", captures={"reason": "bad DOB"})]))
    assert v.kind is VerdictKind.FAILED
    assert not v.kind.successful
    assert v.captures == ({"reason": "bad DOB"},)
    assert has(v.reasons, "failure notice", "submission_failed mail received Tue 03 Mar 06:00")


def test_failure_beats_missing_evidence() -> None:
    v = decide(
        evidence(
            listening=[],
            canaries=[Canary(at(1))],
            auth_broken_during_window=True,
            mails=[mail(3, "unmatched", None), mail(20, "submission_failed")],
        )
    )
    assert v.kind is VerdictKind.FAILED


def test_conflicting_notices_are_unknown() -> None:
    v = decide(evidence(mails=[mail(19, "submission_failed"), mail(20, "submission_succeeded")]))
    assert v.kind is VerdictKind.UNKNOWN
    assert has(v.reasons, "conflicting notices", "submission_failed", "submission_succeeded")
    assert len(v.captures) == 2


def test_notices_for_other_submissions_do_not_count() -> None:
    v = decide(
        evidence(
            mails=[mail(19, "submission_failed", OTHER), mail(20, "submission_succeeded", OTHER)]
        )
    )
    assert v.kind is VerdictKind.PRESUMED_SUCCESS


def test_mail_outside_the_window_is_ignored() -> None:
    v = decide(evidence(mails=[mail(-1, "submission_failed"), mail(27, "unmatched", None)]))
    assert v.kind is VerdictKind.PRESUMED_SUCCESS


# -- stray (ambiguous or uncorrelated) notices --------------------------------------------------


@pytest.mark.parametrize(
    ("correlated", "wording"),
    [(AMBIGUOUS, "could concern more than one submission"), (None, "could not be correlated")],
)
def test_stray_failure_blocks_presumed_success(correlated: str | None, wording: str) -> None:
    v = decide(evidence(mails=[mail(20, "submission_failed", correlated)]))
    assert v.kind is VerdictKind.UNKNOWN
    assert has(v.reasons, "submission_failed", wording, "may concern this submission")


def test_stray_failure_blocks_confirmed_success() -> None:
    v = decide(
        evidence(mails=[mail(19, "submission_failed", AMBIGUOUS), mail(20, "submission_succeeded")])
    )
    assert v.kind is VerdictKind.UNKNOWN
    assert has(v.reasons, "could concern more than one submission")
    assert has(v.reasons, "success notice")


def test_stray_success_blocks_presumed_but_not_confirmed() -> None:
    stray = mail(19, "submission_succeeded", AMBIGUOUS)
    assert decide(evidence(mails=[stray])).kind is VerdictKind.UNKNOWN
    v = decide(evidence(mails=[stray, mail(20, "submission_succeeded")]))
    assert v.kind is VerdictKind.CONFIRMED_SUCCESS


def test_operator_defined_classes() -> None:
    ev = evidence(
        mails=[mail(20, "pve_rejected")],
        failure_classes=frozenset({"pve_rejected"}),
    )
    assert decide(ev).kind is VerdictKind.FAILED
    # Under the default vocabulary the same mail is just another matched mail.
    assert decide(replace(ev, failure_classes=frozenset())).kind is VerdictKind.PRESUMED_SUCCESS


# -- every reason for unknown -------------------------------------------------------------------


def test_gap_between_polls_is_named_with_times_and_length() -> None:
    polls = [t for t in every(5) if not (at(16.1) < t < at(16.95))]  # 02:05 .. 02:55 missing
    v = decide(evidence(listening=polls))
    assert v.kind is VerdictKind.UNKNOWN
    assert v.reasons == (
        "listening gap of 55 min from Tue 03 Mar 02:05 to Tue 03 Mar 03:00 exceeds 30 min",
    )


def test_gap_at_the_start_and_at_the_end_count() -> None:
    polls = every(5, at(1), at(20))
    v = decide(evidence(listening=polls, canaries=[Canary(at(1.5), at(1.6))]))
    assert v.kind is VerdictKind.UNKNOWN
    assert has(v.reasons, "listening gap of 1 h from Mon 02 Mar 10:00 to Mon 02 Mar 11:00")
    assert has(v.reasons, "listening gap of 6 h from Tue 03 Mar 06:00 to Tue 03 Mar 12:00")


def test_a_gap_of_exactly_the_limit_is_allowed() -> None:
    assert decide(evidence(listening=every(30))).kind is VerdictKind.PRESUMED_SUCCESS
    assert decide(evidence(listening=every(31))).kind is VerdictKind.UNKNOWN


def test_no_listening_at_all() -> None:
    v = decide(evidence(listening=[]))
    assert v.reasons == (
        "no successful poll or IDLE cycle was recorded from Mon 02 Mar 10:00 to Tue 03 Mar 12:00",
    )


def test_polls_outside_the_window_do_not_cover_it() -> None:
    outside = every(5, START - timedelta(days=1), START - timedelta(minutes=1))
    assert decide(evidence(listening=outside)).kind is VerdictKind.UNKNOWN


def test_auth_broken() -> None:
    v = decide(evidence(auth_broken_during_window=True))
    assert v.reasons == ("mailbox authentication failed during the window",)


def test_no_canary_sent() -> None:
    v = decide(evidence(canaries=[Canary(at(-2), at(-1.9))]))
    assert v.reasons == ("no mail-path canary was sent during the window",)


def test_canary_lost() -> None:
    v = decide(evidence(canaries=[Canary(at(0.5))]))
    assert v.reasons == ("canary sent Mon 02 Mar 10:30 did not arrive within 30 min",)


def test_canary_late() -> None:
    v = decide(evidence(canaries=[Canary(at(0.5), at(2))]))
    assert v.reasons == (
        "canary sent Mon 02 Mar 10:30 arrived Mon 02 Mar 12:00, later than the 30 min allowed",
    )


def test_one_lost_canary_spoils_an_arrived_one() -> None:
    v = decide(evidence(canaries=[Canary(at(0.5), at(0.6)), Canary(at(24.5))]))
    assert v.kind is VerdictKind.UNKNOWN
    assert has(v.reasons, "canary sent Tue 03 Mar 10:30 did not arrive")


def test_canary_still_in_flight_at_the_end_is_neither_proof_nor_loss() -> None:
    in_flight = Canary(END - timedelta(minutes=10))
    ok = decide(evidence(canaries=[Canary(at(0.5), at(0.6)), in_flight]))
    assert ok.kind is VerdictKind.PRESUMED_SUCCESS
    only = decide(evidence(canaries=[in_flight]))
    assert only.reasons == (
        "no mail-path canary sent during the window had arrived when it closed",
    )


def test_canary_arriving_after_the_window_closed() -> None:
    late = Canary(END - timedelta(minutes=10), END + timedelta(minutes=5))
    v = decide(evidence(canaries=[late]))
    assert v.reasons == ("canary sent Tue 03 Mar 11:50 arrived only after the window closed",)


def test_canaries_not_required() -> None:
    assert decide(evidence(canary_required=False, canaries=[])).kind is (
        VerdictKind.PRESUMED_SUCCESS
    )


def test_unmatched_nhs_mail() -> None:
    v = decide(evidence(mails=[mail(3, "unmatched", None)]))
    assert v.kind is VerdictKind.UNKNOWN
    assert v.reasons == (
        "unmatched mail received Mon 02 Mar 13:00 (Cohort submission) matched no rule; "
        "classify it (`seftpilot rules test`) and fix the rules",
    )


def test_every_reason_is_listed_together() -> None:
    v = decide(
        evidence(
            listening=[],
            auth_broken_during_window=True,
            canaries=[Canary(at(0.5))],
            mails=[mail(3, "unmatched", None), mail(4, "submission_failed", AMBIGUOUS)],
        )
    )
    assert v.kind is VerdictKind.UNKNOWN
    assert len(v.reasons) == 5
    for fragment in ("may concern", "no successful poll", "authentication", "canary", "no rule"):
        assert has(v.reasons, fragment)


# -- the rest ------------------------------------------------------------------------------------


def test_times_in_reasons_are_london_wall_clock() -> None:
    summer_start = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)  # 10:00 BST
    v = decide(
        evidence(
            window_start=summer_start, window_end=summer_start + timedelta(hours=4), listening=[]
        )
    )
    assert has(v.reasons, "from Wed 01 Jul 10:00 to Wed 01 Jul 14:00")


def test_verdict_round_trips_through_json_form() -> None:
    v = decide(evidence(mails=[mail(20, "submission_failed", captures={"reason": "x"})]))
    assert Verdict.from_dict(v.to_dict()) == v
    assert v.to_dict()["kind"] == "failed"


def test_verdict_due() -> None:
    assert not verdict_due(END - timedelta(seconds=1), END)
    assert verdict_due(END, END)


def test_inverted_window_is_refused() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        decide(evidence(window_start=END, window_end=START))


@given(st.lists(st.integers(min_value=0, max_value=26 * 60), max_size=80))
def test_gaps_are_exactly_the_long_stretches_without_a_poll(minutes: list[int]) -> None:
    polls = [START + timedelta(minutes=m) for m in minutes]
    inside = [p for p in polls if p <= END]
    gaps = listening_gaps(polls, START, END, MAX_GAP)
    edges = {START, END, *inside}
    for gap in gaps:
        assert gap.length > MAX_GAP
        assert gap.start in edges and gap.end in edges
        assert not any(gap.start < p < gap.end for p in inside)
    # Brute force on the minute grid: a minute lies in a gap iff the nearest edges
    # around it (polls or window ends) are more than MAX_GAP apart.
    for m in range(0, 26 * 60 + 1, 7):
        t = START + timedelta(minutes=m)
        before = max(e for e in edges if e <= t)
        after = min(e for e in edges if e >= t)
        in_gap = any(g.start <= t <= g.end for g in gaps)
        if after - before > MAX_GAP:
            assert in_gap
        elif before == after == t:
            pass  # on a poll: may be the edge of a neighbouring gap
        else:
            assert not in_gap
