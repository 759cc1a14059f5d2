"""The NHS calendar: NHS days, working days, evidence deadlines, upload opportunities."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seftpilot.adapters.holidays_source import bank_holidays, bank_holidays_around
from seftpilot.core.calendar import (
    LONDON,
    evidence_deadline,
    in_upload_window,
    is_working_day,
    london_instant,
    next_upload_opportunity,
    next_working_day,
    nhs_day,
    nhs_day_bounds,
)

HOLIDAYS = bank_holidays(range(2025, 2029))
NOON = time(12, 0)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# -- bank holidays (England & Wales, from the holidays package) -----------------------


def test_england_and_wales_bank_holidays_2026() -> None:
    h = bank_holidays([2026])
    assert {
        date(2026, 1, 1),
        date(2026, 4, 3),  # Good Friday
        date(2026, 4, 6),  # Easter Monday
        date(2026, 5, 4),
        date(2026, 5, 25),
        date(2026, 8, 31),
        date(2026, 12, 25),
        date(2026, 12, 28),  # Boxing Day falls on a Saturday: substitute Monday
    } <= h


def test_no_scottish_or_northern_irish_only_days() -> None:
    h = bank_holidays([2026])
    assert date(2026, 1, 2) not in h  # Scotland: 2 January
    assert date(2026, 8, 3) not in h  # Scotland: first Monday of August
    assert date(2026, 11, 30) not in h  # St Andrew's Day
    assert date(2026, 3, 17) not in h  # St Patrick's Day
    assert date(2026, 7, 13) not in h  # Battle of the Boyne (substitute)


def test_christmas_on_a_saturday_moves_both_holidays() -> None:
    h = bank_holidays([2027])
    assert {date(2027, 12, 27), date(2027, 12, 28)} <= h


def test_holidays_around_covers_the_new_year() -> None:
    h = bank_holidays_around(date(2026, 12, 30))
    assert date(2027, 1, 1) in h and date(2025, 12, 25) in h
    assert bank_holidays([]) == frozenset()


# -- NHS day ----------------------------------------------------------------------------


def test_nhs_day_follows_london_not_utc() -> None:
    # 23:30 UTC in July is 00:30 BST the next day.
    assert nhs_day(utc(2026, 7, 1, 23, 30)) == date(2026, 7, 2)
    # In winter London is UTC.
    assert nhs_day(utc(2026, 1, 15, 23, 30)) == date(2026, 1, 15)
    # An offset other than UTC is converted, not ignored.
    assert nhs_day(datetime(2026, 1, 16, 1, 0, tzinfo=timezone(timedelta(hours=3)))) == date(
        2026, 1, 15
    )


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        nhs_day(datetime(2026, 1, 1, 12, 0))


def test_dst_change_days_are_23_and_25_hours_long() -> None:
    start, end = nhs_day_bounds(date(2026, 3, 29))
    assert end - start == timedelta(hours=23)
    start, end = nhs_day_bounds(date(2026, 10, 25))
    assert end - start == timedelta(hours=25)
    # The hour after the spring change belongs to the same NHS day.
    assert nhs_day(utc(2026, 3, 29, 1, 30)) == date(2026, 3, 29)
    assert nhs_day(utc(2026, 3, 28, 23, 59)) == date(2026, 3, 28)


def test_london_instant_on_dst_edges() -> None:
    # Skipped hour: 01:30 does not exist on 29 March 2026; it reads as 02:30 BST.
    assert london_instant(date(2026, 3, 29), time(1, 30)) == utc(2026, 3, 29, 1, 30)
    # Repeated hour: 01:30 on 25 October 2026 means its first occurrence (BST).
    assert london_instant(date(2026, 10, 25), time(1, 30)) == utc(2026, 10, 25, 0, 30)
    assert london_instant(date(2026, 7, 1), NOON) == utc(2026, 7, 1, 11, 0)
    assert london_instant(date(2026, 1, 5), NOON) == utc(2026, 1, 5, 12, 0)


# -- working days -------------------------------------------------------------------------


def test_working_days() -> None:
    assert is_working_day(date(2026, 3, 2), HOLIDAYS)  # Monday
    assert not is_working_day(date(2026, 3, 7), HOLIDAYS)  # Saturday
    assert not is_working_day(date(2026, 3, 8), HOLIDAYS)  # Sunday
    assert not is_working_day(date(2026, 4, 6), HOLIDAYS)  # Easter Monday
    assert is_working_day(date(2026, 4, 6), frozenset())


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2026, 3, 2), date(2026, 3, 3)),  # Mon -> Tue
        (date(2026, 3, 6), date(2026, 3, 9)),  # Fri -> Mon
        (date(2026, 3, 7), date(2026, 3, 9)),  # Sat -> Mon
        (date(2026, 4, 2), date(2026, 4, 7)),  # Thu before Easter -> Tue after
        (date(2026, 12, 24), date(2026, 12, 29)),  # Christmas Day + substitute Boxing Day
        (date(2027, 12, 24), date(2027, 12, 29)),  # both substitutes (27th, 28th)
        (date(2026, 12, 31), date(2027, 1, 4)),  # New Year's Day then a weekend
    ],
)
def test_next_working_day(day: date, expected: date) -> None:
    assert next_working_day(day, HOLIDAYS) == expected


# -- evidence deadline ---------------------------------------------------------------------


def test_deadline_is_noon_next_working_day() -> None:
    # Upload Monday 10:00 GMT -> Tuesday 12:00 GMT.
    assert evidence_deadline(utc(2026, 3, 2, 10, 0), NOON, HOLIDAYS) == utc(2026, 3, 3, 12, 0)


def test_friday_upload_is_judged_on_monday() -> None:
    assert evidence_deadline(utc(2026, 3, 6, 15, 0), NOON, HOLIDAYS) == utc(2026, 3, 9, 12, 0)


def test_christmas_eve_upload_is_judged_after_the_substitute_day() -> None:
    assert evidence_deadline(utc(2026, 12, 24, 10, 0), NOON, HOLIDAYS) == utc(2026, 12, 29, 12, 0)


def test_deadline_uses_the_nhs_day_of_the_upload_not_the_utc_day() -> None:
    # 23:30 UTC on Thursday 2 July is 00:30 BST on Friday: judged Monday, not Friday.
    deadline = evidence_deadline(utc(2026, 7, 2, 23, 30), NOON, HOLIDAYS)
    assert deadline == utc(2026, 7, 6, 11, 0)  # 12:00 BST


def test_deadline_across_spring_forward() -> None:
    # Friday 27 March (GMT) -> Monday 30 March 12:00 BST = 11:00 UTC.
    deadline = evidence_deadline(utc(2026, 3, 27, 10, 0), NOON, HOLIDAYS)
    assert deadline == utc(2026, 3, 30, 11, 0)
    assert deadline.astimezone(LONDON).hour == 12


def test_deadline_across_fall_back() -> None:
    # Friday 23 October (BST) -> Monday 26 October 12:00 GMT = 12:00 UTC.
    deadline = evidence_deadline(utc(2026, 10, 23, 10, 0), NOON, HOLIDAYS)
    assert deadline == utc(2026, 10, 26, 12, 0)
    assert deadline.astimezone(LONDON).hour == 12


@given(
    st.datetimes(
        min_value=datetime(2025, 1, 2),
        max_value=datetime(2028, 12, 20),
        timezones=st.just(UTC),
    )
)
def test_deadline_properties(uploaded_at: datetime) -> None:
    deadline = evidence_deadline(uploaded_at, NOON, HOLIDAYS)
    day = deadline.astimezone(LONDON)
    assert deadline > uploaded_at
    assert (day.hour, day.minute) == (12, 0)
    assert is_working_day(day.date(), HOLIDAYS)
    # No working day is skipped between the upload's NHS day and the deadline's.
    between = nhs_day(uploaded_at) + timedelta(days=1)
    while between < day.date():
        assert not is_working_day(between, HOLIDAYS)
        between += timedelta(days=1)


# -- upload window and next opportunity -------------------------------------------------------

NINE, FOUR = time(9, 0), time(16, 0)


def test_in_upload_window_uses_london_time() -> None:
    assert in_upload_window(utc(2026, 7, 1, 8, 30), NINE, FOUR)  # 09:30 BST
    assert not in_upload_window(utc(2026, 1, 7, 8, 30), NINE, FOUR)  # 08:30 GMT
    assert in_upload_window(utc(2026, 1, 7, 9, 0), NINE, FOUR)  # start is inside
    assert not in_upload_window(utc(2026, 1, 7, 16, 0), NINE, FOUR)  # end is outside


def test_inverted_window_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="16:00 must be earlier than its end 09:00"):
        in_upload_window(utc(2026, 1, 7, 9, 0), FOUR, NINE)


def test_opportunity_is_now_when_inside_the_window_of_an_allowed_day() -> None:
    now = utc(2026, 3, 3, 11, 0)
    assert next_upload_opportunity(now, NINE, FOUR, HOLIDAYS, date(2026, 3, 2)) == now


def test_opportunity_before_the_window_is_its_start() -> None:
    now = utc(2026, 3, 3, 6, 0)
    assert next_upload_opportunity(now, NINE, FOUR, HOLIDAYS, None) == utc(2026, 3, 3, 9, 0)


def test_never_twice_on_one_nhs_day() -> None:
    now = utc(2026, 3, 3, 11, 0)
    got = next_upload_opportunity(now, NINE, FOUR, HOLIDAYS, last_upload_day=date(2026, 3, 3))
    assert got == utc(2026, 3, 4, 9, 0)


def test_after_the_window_on_friday_waits_for_monday() -> None:
    now = utc(2026, 3, 6, 17, 0)
    assert next_upload_opportunity(now, NINE, FOUR, HOLIDAYS, None) == utc(2026, 3, 9, 9, 0)


def test_bank_holidays_are_skipped_and_summer_time_respected() -> None:
    # Good Friday 3 April to Easter Monday 6 April 2026; Tuesday 7 April is BST.
    now = utc(2026, 4, 2, 16, 30)
    assert next_upload_opportunity(now, NINE, FOUR, HOLIDAYS, None) == utc(2026, 4, 7, 8, 0)


def test_sunday_of_the_spring_change_is_never_an_upload_day() -> None:
    now = utc(2026, 3, 29, 10, 0)
    assert next_upload_opportunity(now, NINE, FOUR, HOLIDAYS, None) == utc(2026, 3, 30, 8, 0)
