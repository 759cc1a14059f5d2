"""Alerts to the operator: raise, clear, remind, batch, send.

Owns the ``alerts`` table (migration 4) and the alert mails. Anything that wants a human
calls ``raise_alert(runtime, key, subject, text, severity=...)``; the same key raised again
is the same alert (deduplicated), reminded every ``operator.alert_reminder_hours`` while it
is raised again, and ``clear_alert`` sends one "cleared" mail. An alert lasts while its
raiser keeps raising it: a one-off alert is mailed once and stays listed (digest, status)
until cleared.

Mails are coalesced: whatever is owed when a mail goes (new, reminders, cleared) goes in
that one mail, a single item as itself, several as one summary. At most
``MAX_MAILS_PER_HOUR`` alert mails go per hour; the rest wait (pending in the ledger) and
go together as one summary. While alerts are *held* (``hold_alerts``: the service holds
them from building its jobs until the end of its first pass, see ``service/monitor.py``)
nothing is sent; ``release_alerts`` then sends ONE summary of everything the reconciling
first pass found, instead of a storm after downtime.

Alerts are delivered at least once: a crash between the SMTP accept and the ledger update
repeats that mail. A failed send never raises to the caller (the alert stays pending and
the monitor's flush job retries); ledger errors do raise.

Must not put untrusted text in a header: subjects are sanitised to one clean line, bodies
lose every control character but line breaks, and everything passes ``logs.redact`` so a
registered secret can never leave in an alert. Must not decide what deserves an alert:
callers (and the watchdogs) do.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import weakref
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from seftpilot.adapters.store import Store, utcnow_iso
from seftpilot.core.alerts import (
    AlertMail,
    AlertState,
    OutgoingItem,
    clean_subject,
    clean_text,
    compose,
    may_send,
    on_clear,
    on_raise,
)
from seftpilot.errors import ConfigError, TransportError
from seftpilot.logs import redact

if TYPE_CHECKING:
    from seftpilot.service.runtime import Runtime

log = logging.getLogger(__name__)

MAX_MAILS_PER_HOUR = 6

_holds: weakref.WeakKeyDictionary[Store, int] = weakref.WeakKeyDictionary()
_holds_lock = threading.Lock()
# One flush at a time per process: the intake thread and the job loop may both raise.
_flush_lock = threading.Lock()


def _dt(text: str | None) -> datetime | None:
    if not text:
        return None
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _state(row: sqlite3.Row) -> AlertState:
    first = _dt(row["first_raised_at"])
    seen = _dt(row["last_seen_at"])
    assert first is not None and seen is not None
    return AlertState(
        key=row["key"],
        severity=row["severity"],
        subject=row["subject"],
        text=row["text"],
        state=row["state"],
        first_raised_at=first,
        last_seen_at=seen,
        last_sent_at=_dt(row["last_sent_at"]),
        sent_count=int(row["sent_count"]),
        pending=row["pending"],
        cleared_at=_dt(row["cleared_at"]),
        clear_text=row["clear_text"],
    )


def _reminder(runtime: Runtime) -> timedelta:
    return timedelta(hours=runtime.settings.operator.alert_reminder_hours)


# -- holding ------------------------------------------------------------------------------
def hold_alerts(runtime: Runtime) -> None:
    """Record alerts without sending them until ``release_alerts`` (nested holds count)."""
    with _holds_lock:
        _holds[runtime.store] = _holds.get(runtime.store, 0) + 1


def release_alerts(runtime: Runtime, *, after_restart: bool = True) -> int:
    """End one hold; when none is left, send what is owed as one summary. Returns mails sent."""
    with _holds_lock:
        left = max(0, _holds.get(runtime.store, 0) - 1)
        _holds[runtime.store] = left
    if left:
        return 0
    return flush_alerts(runtime, after_restart=after_restart)


def held(runtime: Runtime) -> bool:
    with _holds_lock:
        return _holds.get(runtime.store, 0) > 0


# -- raising and clearing -------------------------------------------------------------------
def raise_alert(
    runtime: Runtime, key: str, subject: str, text: str, *, severity: str = "warning"
) -> bool:
    """Raise the alert ``key``. True when the operator will be told (new, or a reminder is
    due), False when it duplicates an alert already mailed within the reminder interval.

    ``subject`` and ``text`` may quote mail (captures): they are sanitised here. Never
    raises for a failed send: the alert stays pending and is retried."""
    now = runtime.clock.now()
    clean_subj = clean_subject(redact(subject))
    clean_body = clean_text(redact(text))
    with runtime.store.transaction() as conn:
        row = conn.execute("SELECT * FROM alerts WHERE key=?", (key,)).fetchone()
        existing = _state(row) if row else None
        outcome = on_raise(existing, now, _reminder(runtime))
        if existing is None:
            conn.execute(
                "INSERT INTO alerts(key, severity, subject, text, state, first_raised_at,"
                " last_seen_at, pending) VALUES (?,?,?,?,'open',?,?,'raised')",
                (key, severity, clean_subj, clean_body, utcnow_iso(now), utcnow_iso(now)),
            )
        elif outcome == "new":  # it had cleared; it is back
            conn.execute(
                "UPDATE alerts SET severity=?, subject=?, text=?, state='open', first_raised_at=?,"
                " last_seen_at=?, pending='raised', cleared_at=NULL, clear_text=NULL,"
                " sent_count=0, version=version+1 WHERE key=?",
                (severity, clean_subj, clean_body, utcnow_iso(now), utcnow_iso(now), key),
            )
        else:
            # The newest wording wins: a watchdog's text says how long it has lasted.
            conn.execute(
                "UPDATE alerts SET severity=?, subject=?, text=?, last_seen_at=?,"
                " pending=CASE WHEN ?='reminder' THEN 'reminder' ELSE pending END,"
                " version=version+1 WHERE key=?",
                (severity, clean_subj, clean_body, utcnow_iso(now), outcome, key),
            )
        if outcome != "duplicate":
            Store.append_event(
                conn,
                f"alert.{'raised' if outcome == 'new' else 'reminder'}",
                at=now,
                subject_type="alert",
                detail={"key": key, "severity": severity},
            )
    if outcome != "duplicate":
        log.warning("alert %s (%s): %s", key, outcome, clean_subj)
        flush_alerts(runtime)
        return True
    return False


def clear_alert(runtime: Runtime, key: str, text: str) -> bool:
    """Clear the alert ``key``: True when a "cleared" mail is owed (the operator had been
    told of it), False when it was not open or was never mailed (then nothing is said)."""
    now = runtime.clock.now()
    with runtime.store.transaction() as conn:
        row = conn.execute("SELECT * FROM alerts WHERE key=?", (key,)).fetchone()
        outcome = on_clear(_state(row) if row else None)
        if outcome == "none":
            return False
        conn.execute(
            "UPDATE alerts SET state='cleared', cleared_at=?, clear_text=?, pending=?,"
            " version=version+1 WHERE key=?",
            (
                utcnow_iso(now),
                clean_text(redact(text)),
                "cleared" if outcome == "cleared" else None,
                key,
            ),
        )
        Store.append_event(conn, "alert.cleared", at=now, subject_type="alert", detail={"key": key})
    if outcome == "cleared":
        log.info("alert %s cleared", key)
        flush_alerts(runtime)
        return True
    return False


# -- sending --------------------------------------------------------------------------------
def _recent_mails(runtime: Runtime, now: datetime) -> list[datetime]:
    rows = runtime.store.query(
        "SELECT at FROM events WHERE kind='alert.mail_sent' AND at > ? ORDER BY at",
        (utcnow_iso(now - timedelta(hours=1)),),
    )
    return [d for r in rows if (d := _dt(r["at"])) is not None]


def pending_alerts(runtime: Runtime) -> list[AlertState]:
    rows = runtime.store.query("SELECT * FROM alerts WHERE pending IS NOT NULL ORDER BY rowid")
    return [_state(r) for r in rows]


def _item(alert: AlertState) -> OutgoingItem:
    assert alert.pending is not None
    cleared = alert.pending == "cleared"
    return OutgoingItem(
        key=alert.key,
        kind=alert.pending,
        severity=alert.severity,
        subject=alert.subject,
        text=(alert.clear_text or "") if cleared else alert.text,
        first_raised_at=alert.first_raised_at,
        cleared_at=alert.cleared_at,
    )


def render_alert_mail(mail: AlertMail, now: datetime) -> str:
    from seftpilot.service.render import render_text

    return redact(render_text("alert.txt.j2", {"mail": mail, "now": now}))


def flush_alerts(runtime: Runtime, *, after_restart: bool = False) -> int:
    """Send what is owed in one mail, unless held or rate-limited. Returns mails sent (0/1)."""
    if held(runtime):
        return 0
    with _flush_lock:
        owed = pending_alerts(runtime)
        if not owed:
            return 0
        now = runtime.clock.now()
        if not may_send(_recent_mails(runtime, now), now, MAX_MAILS_PER_HOUR):
            log.warning(
                "%d alert(s) wait: %d alert mails went in the last hour (the cap)",
                len(owed),
                MAX_MAILS_PER_HOUR,
            )
            return 0
        recipients = runtime.settings.operator.emails
        if not recipients:
            log.error(
                "%d alert(s) cannot be mailed: operator.emails is empty (they are listed by "
                "`seftpilot status`)",
                len(owed),
            )
            return 0
        mail = compose([_item(a) for a in owed], after_restart=after_restart)
        from seftpilot.adapters.smtp import build_message

        message = build_message(
            recipients,
            mail.subject,
            render_alert_mail(mail, now),
            headers={"X-Seftpilot-Alert": "summary" if mail.summary else "single"},
            sender=runtime.settings.smtp.from_address,
            now=now,
        )
        try:
            message_id = runtime.mailer.send(message)
        except (TransportError, ConfigError) as exc:
            log.warning("alert mail not sent (%d alert(s) stay pending): %s", len(owed), exc)
            return 0
        _record_sent(runtime, owed, now, message_id, mail)
        return 1


def _record_sent(
    runtime: Runtime, owed: list[AlertState], now: datetime, message_id: str, mail: AlertMail
) -> None:
    with runtime.store.transaction() as conn:
        for alert in owed:
            # Only what this mail said is settled: a change meanwhile stays owed.
            conn.execute(
                "UPDATE alerts SET pending=NULL, last_sent_at=?, sent_count=sent_count+1,"
                " version=version+1 WHERE key=? AND pending IS ? AND state=?",
                (utcnow_iso(now), alert.key, alert.pending, alert.state),
            )
        Store.append_event(
            conn,
            "alert.mail_sent",
            at=now,
            subject_type="alert",
            detail={
                "message_id": message_id,
                "keys": [a.key for a in owed],
                "summary": mail.summary,
                "after_restart": mail.after_restart,
            },
        )


# -- reading --------------------------------------------------------------------------------
def open_alerts(runtime: Runtime) -> list[AlertState]:
    rows = runtime.store.query(
        "SELECT * FROM alerts WHERE state='open' ORDER BY first_raised_at, key"
    )
    return [_state(r) for r in rows]


def cleared_since(runtime: Runtime, since: datetime) -> list[AlertState]:
    rows = runtime.store.query(
        "SELECT * FROM alerts WHERE state='cleared' AND cleared_at >= ? ORDER BY cleared_at",
        (utcnow_iso(since),),
    )
    return [_state(r) for r in rows]


def alert_mails_since(runtime: Runtime, since: datetime) -> list[dict[str, Any]]:
    rows = runtime.store.query(
        "SELECT at, detail FROM events WHERE kind='alert.mail_sent' AND at >= ? ORDER BY at",
        (utcnow_iso(since),),
    )
    import json

    return [{"at": r["at"], **json.loads(r["detail"])} for r in rows]
