"""core.alerts: dedupe, reminders, clearing, the hourly cap, mail composition, text hygiene
and the watchdogs' judgements. Pure: no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seftpilot.core.alerts import (
    AlertState,
    OutgoingItem,
    clean_subject,
    clean_text,
    compose,
    may_send,
    new_data_overdue,
    nhs_silent,
    on_clear,
    on_raise,
    rate_limited_until,
    release_reminder_missing,
)

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def alert(**kw: object) -> AlertState:
    values: dict[str, object] = {
        "key": "k",
        "severity": "warning",
        "subject": "s",
        "text": "t",
        "state": "open",
        "first_raised_at": NOW - DAY,
        "last_seen_at": NOW - DAY,
        "last_sent_at": NOW - timedelta(hours=2),
        "sent_count": 1,
    }
    values.update(kw)
    return AlertState(**values)  # type: ignore[arg-type]


def test_raise_new_duplicate_reminder() -> None:
    reminder = timedelta(hours=24)
    assert on_raise(None, NOW, reminder) == "new"
    assert on_raise(alert(state="cleared"), NOW, reminder) == "new"
    assert on_raise(alert(), NOW, reminder) == "duplicate"
    assert on_raise(alert(last_sent_at=NOW - reminder), NOW, reminder) == "reminder"
    # A mail still owed about it: never a second one on top.
    assert on_raise(alert(pending="raised", last_sent_at=None), NOW, reminder) == "duplicate"
    assert on_raise(alert(pending="reminder", last_sent_at=NOW - 3 * DAY), NOW, reminder) == (
        "duplicate"
    )


def test_clear_says_so_only_when_the_operator_was_told() -> None:
    assert on_clear(None) == "none"
    assert on_clear(alert(state="cleared")) == "none"
    assert on_clear(alert(sent_count=0, last_sent_at=None, pending="raised")) == "silent"
    assert on_clear(alert()) == "cleared"


def test_hourly_cap_and_when_it_lifts() -> None:
    sent = [NOW - timedelta(minutes=m) for m in (50, 40, 30)]
    assert may_send(sent, NOW, 4)
    assert not may_send(sent, NOW, 3)
    assert rate_limited_until(sent, NOW, 3) == NOW + timedelta(minutes=10)
    assert rate_limited_until(sent, NOW, 4) == NOW
    assert may_send([NOW - timedelta(minutes=61)] * 10, NOW, 1)


def item(key: str, kind: str = "raised", severity: str = "warning") -> OutgoingItem:
    return OutgoingItem(key, kind, severity, f"subject {key}", "text", NOW)  # type: ignore[arg-type]


def test_compose_single_summary_and_after_restart() -> None:
    one = compose([item("a", severity="high")])
    assert not one.summary
    assert one.subject == "[seftpilot] ALERT (high): subject a"
    assert compose([item("a", "cleared")]).subject == "[seftpilot] cleared: subject a"
    many = compose(
        [item("c", "cleared"), item("w"), item("h", severity="critical"), item("r", "reminder")]
    )
    assert many.summary
    assert many.subject == "[seftpilot] alerts: 2 new, 1 still open, 1 cleared"
    assert [i.key for i in many.items] == ["h", "w", "r", "c"]  # worst first, cleared last
    restart = compose([item("a")], after_restart=True)
    assert restart.summary and restart.after_restart
    assert restart.subject.startswith("[seftpilot] after a restart: 1 new")
    with pytest.raises(ValueError):
        compose([])


@given(st.text(max_size=300))
def test_clean_subject_is_one_safe_line(text: str) -> None:
    cleaned = clean_subject(text)
    assert "\r" not in cleaned and "\n" not in cleaned and "\x00" not in cleaned
    assert "\u202e" not in cleaned  # no bidi override
    assert len(cleaned) <= 150


def test_clean_text_keeps_lines_and_drops_escapes() -> None:
    assert clean_text("a\r\nb\x1b[31m\rc\u2028d") == "a\nb [31m\nc d"
    assert len(clean_text("x" * 10_000)) == 4000


def test_new_data_overdue_counts_from_the_first_unanswered_add() -> None:
    within = timedelta(days=60)
    adds = [(1, NOW - 70 * DAY), (2, NOW - 10 * DAY)]
    assert new_data_overdue([], None, NOW, within) is None
    found = new_data_overdue(adds, None, NOW, within)
    assert found is not None and "#1" in found.subject and "none has ever arrived" in found.text
    # A notice after ADD #1 answers it; #2 is only 10 days old.
    assert new_data_overdue(adds, NOW - 20 * DAY, NOW, within) is None
    assert new_data_overdue(adds, NOW - 80 * DAY, NOW, within) is not None
    assert new_data_overdue([(3, NOW - 60 * DAY)], None, NOW, within) is None  # exactly N days


def test_nhs_silence_needs_listening_and_counts_from_the_last_mail() -> None:
    within = timedelta(days=45)
    assert nhs_silent(None, None, NOW, within, ["nhs.net"]) is None  # never listened: no judgement
    assert nhs_silent(None, NOW - 44 * DAY, NOW, within, ["nhs.net"]) is None
    found = nhs_silent(NOW - 50 * DAY, NOW - 400 * DAY, NOW, within, ["nhs.net"])
    assert found is not None and "50 days" in found.subject and "nhs.net" in found.text


def test_release_reminder_cadence() -> None:
    monthly = [NOW - k * 28 * DAY for k in (3, 2, 1)]  # last one 28 days ago
    assert release_reminder_missing(monthly[-1:], NOW + 365 * DAY) is None  # one: no cadence
    assert release_reminder_missing(monthly, NOW) is None
    assert release_reminder_missing(monthly, NOW + 7 * DAY) is None  # slack of 7 days
    found = release_reminder_missing(monthly, NOW + 8 * DAY)
    assert found is not None and "every 28 days" in found.text
