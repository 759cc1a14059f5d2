"""Correlation of NHS notices to submissions: file name, NIC, window, ambiguity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from seftpilot.core.correlate import Candidate, correlate

A = "NIC-402963-P0Y5D"
B = "NIC-123456-ABCDE"
MON = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def candidate(sid: int, nic: str, uploaded: datetime, file_name: str | None = None) -> Candidate:
    return Candidate(
        submission_id=sid,
        nic=nic,
        file_name=file_name if file_name is not None else f"{nic}.csv",
        uploaded_at=uploaded,
        window_start=uploaded,
        window_end=uploaded + timedelta(days=1, hours=2),
    )


# Two agreements uploaded the same morning: their windows overlap.
A1 = candidate(1, A, MON)
B1 = candidate(2, B, MON + timedelta(minutes=30))
NEXT_MORNING = MON + timedelta(hours=20)


def test_file_name_in_captures_picks_the_agreement_then_the_window_decides() -> None:
    c = correlate(NEXT_MORNING, {"file": f"{B}.csv"}, "Your submission failed", [A1, B1])
    assert (c.submission_id, c.ambiguous) == (2, False)
    assert "file name NIC-123456-ABCDE.csv" in c.reason


def test_file_name_unique_to_one_submission_picks_it() -> None:
    dated = candidate(3, A, MON, file_name="NIC-402963-P0Y5D_20260302.csv")
    other = candidate(4, A, MON + timedelta(minutes=5), file_name="NIC-402963-P0Y5D_x.csv")
    c = correlate(
        NEXT_MORNING, {}, "File nic-402963-p0y5d_20260302.CSV was rejected", [dated, other]
    )
    assert c.submission_id == 3
    assert "file name NIC-402963-P0Y5D_20260302.csv" in c.reason


def test_nic_number_in_the_text() -> None:
    c = correlate(NEXT_MORNING, {}, f"Agreement {A}: 3 rows failed validation", [A1, B1])
    assert c.submission_id == 1
    assert "NIC NIC-402963-P0Y5D" in c.reason


def test_window_alone_when_nothing_is_quoted() -> None:
    c = correlate(NEXT_MORNING, {}, "Your cohort file could not be processed", [A1])
    assert c.submission_id == 1
    assert "quotes no file name or NIC" in c.reason


def test_overlapping_windows_without_a_quote_are_ambiguous() -> None:
    c = correlate(NEXT_MORNING, {"reason": "invalid header"}, "failed", [A1, B1])
    assert c.submission_id is None
    assert c.ambiguous is True
    assert "submissions 1, 2; not guessing" in c.reason


def test_same_agreement_two_open_windows_is_ambiguous() -> None:
    # A retry uploaded the next day while the first window is still open.
    retry = candidate(5, A, MON + timedelta(days=1))
    late = MON + timedelta(days=1, hours=1)
    c = correlate(late, {}, f"{A}.csv failed", [A1, retry])
    assert c.ambiguous and c.submission_id is None


def test_outside_every_window_is_not_guessed() -> None:
    c = correlate(MON + timedelta(days=3), {}, f"{A}.csv failed", [A1, B1])
    assert (c.submission_id, c.ambiguous) == (None, False)
    assert "outside every open evidence window (of submissions 1, which it names)" in c.reason


def test_unknown_nic_is_not_ours() -> None:
    c = correlate(NEXT_MORNING, {}, "NIC-999999-ZZZZZ failed", [A1, B1])
    assert (c.submission_id, c.ambiguous) == (None, False)
    assert "NIC-999999-ZZZZZ" in c.reason


def test_notice_before_the_upload_cannot_concern_it() -> None:
    c = correlate(MON - timedelta(hours=1), {}, f"{A}.csv failed", [A1])
    assert c.submission_id is None
    assert "before" in c.reason


def test_no_candidates() -> None:
    c = correlate(NEXT_MORNING, {}, "failed", [])
    assert (c.submission_id, c.ambiguous) == (None, False)
