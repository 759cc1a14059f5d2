"""The NHS calendar: NHS days, working days, upload windows and evidence deadlines.

Owns the rules of *when*: which Europe/London day an instant belongs to, which days are
working days (Monday to Friday, not an England & Wales bank holiday), when an upload may
happen and when its evidence window closes.

Pure: bank holidays are passed in as a ``frozenset[date]`` (see
``adapters.holidays_source``) and ``now`` is an argument. It must not read the clock,
open files of its own or log. Every instant it accepts must be timezone-aware; every
instant it returns is timezone-aware UTC, the form the Clock and the ledger use.

Daylight saving: local times are built with ``zoneinfo`` on the day they fall on, so a
12:00 deadline is 12:00 GMT in winter and 12:00 BST in summer. A configured local time
that does not exist (inside the spring-forward hour) resolves to the instant an hour
later on the wall clock, one that occurs twice (autumn) to its first occurrence. Both
changes fall on a Sunday, which is never a working day, so deadlines and upload slots
are not affected in practice; the tests pin the behaviour anyway.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

LONDON = ZoneInfo("Europe/London")

# No real calendar has a year of holidays; this bounds every search loop.
_MAX_SEARCH_DAYS = 400


def _require_aware(instant: datetime, name: str) -> None:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {instant.isoformat()}")


def nhs_day(instant: datetime) -> date:
    """The Europe/London calendar day ``instant`` falls on (the unit of "one upload a day")."""
    _require_aware(instant, "instant")
    return instant.astimezone(LONDON).date()


def london_instant(day: date, at: time) -> datetime:
    """The UTC instant of wall-clock ``at`` in London on ``day`` (DST-correct)."""
    # fold=0: a repeated autumn time means its first occurrence; a skipped spring time
    # is read with the pre-transition offset, i.e. it lands one hour later on the clock.
    local = datetime.combine(day, at.replace(tzinfo=None), tzinfo=LONDON)
    return local.astimezone(UTC)


def nhs_day_bounds(day: date) -> tuple[datetime, datetime]:
    """``[start, end)`` of the NHS day in UTC (23 or 25 hours long on DST change days)."""
    return london_instant(day, time(0, 0)), london_instant(day + timedelta(days=1), time(0, 0))


def is_working_day(day: date, holidays: frozenset[date]) -> bool:
    """Monday to Friday and not an England & Wales bank holiday."""
    return day.weekday() < 5 and day not in holidays


def next_working_day(day: date, holidays: frozenset[date]) -> date:
    """The first working day strictly after ``day``."""
    candidate = day
    for _ in range(_MAX_SEARCH_DAYS):
        candidate += timedelta(days=1)
        if is_working_day(candidate, holidays):
            return candidate
    raise ValueError(f"no working day within {_MAX_SEARCH_DAYS} days after {day}")


def evidence_deadline(uploaded_at: datetime, deadline: time, holidays: frozenset[date]) -> datetime:
    """When the evidence window of an upload closes (UTC).

    At the configured London time ``deadline`` on the next NHS working day after the NHS
    day of the upload. An upload on Friday evening is judged on Monday (Tuesday after a
    bank holiday Monday); one on Christmas Eve 2026 (Thursday) is judged on Tuesday 29th,
    because the 25th and the substitute Boxing Day on the 28th are bank holidays.
    """
    _require_aware(uploaded_at, "uploaded_at")
    return london_instant(next_working_day(nhs_day(uploaded_at), holidays), deadline)


def _check_window(start: time, end: time) -> None:
    if not start < end:
        raise ValueError(
            f"upload window start {start:%H:%M} must be earlier than its end {end:%H:%M} "
            "(both Europe/London, on the same day)"
        )


def in_upload_window(now: datetime, start: time, end: time) -> bool:
    """Whether London wall-clock time of ``now`` is in ``[start, end)``.

    Only the time of day: whether the day itself allows an upload is
    ``next_upload_opportunity``'s question.
    """
    _require_aware(now, "now")
    _check_window(start, end)
    local = now.astimezone(LONDON).time().replace(tzinfo=None)
    return start <= local < end


def upload_allowed_on(day: date, holidays: frozenset[date], last_upload_day: date | None) -> bool:
    """Whether an upload may happen on NHS day ``day`` at all.

    Working days only: NHS England's intake processes files overnight and reports the
    next morning, so a file sent on a Saturday or a bank holiday waits, unobserved, for
    the same processing as one sent on the next working day, and its evidence window
    would be longer for nothing. Never on or before the NHS day of the last upload.
    """
    if last_upload_day is not None and day <= last_upload_day:
        return False
    return is_working_day(day, holidays)


def next_upload_opportunity(
    now: datetime,
    start: time,
    end: time,
    holidays: frozenset[date],
    last_upload_day: date | None,
) -> datetime:
    """The earliest instant at or after ``now`` when an upload may happen (UTC).

    That is: ``now`` itself when it is inside the window of an allowed day, else the
    window start of the next allowed day (``upload_allowed_on``).
    """
    _require_aware(now, "now")
    _check_window(start, end)
    day = nhs_day(now)
    for _ in range(_MAX_SEARCH_DAYS):
        if upload_allowed_on(day, holidays, last_upload_day):
            opens, closes = london_instant(day, start), london_instant(day, end)
            candidate = max(now.astimezone(UTC), opens)
            if candidate < closes:
                return candidate
        day += timedelta(days=1)
    raise ValueError(f"no upload opportunity within {_MAX_SEARCH_DAYS} days of {now.isoformat()}")
