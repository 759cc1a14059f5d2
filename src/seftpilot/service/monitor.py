"""Monitoring: the dead-man's-switch heartbeat, the mail-path canary, the watchdogs, the
daily digest, and the facts ``seftpilot status`` shows.

Owns the ``canaries``, ``heartbeat_pings`` and ``digests`` tables (migration 4) and the
timer jobs ``seftpilot watch`` runs (``jobs(runtime)``, to be placed LAST in the
watcher's job list): building them holds alerts, and the last job (``AlertFlushJob``)
releases them at the end of the first pass, so what the reconciling first pass after a
restart finds goes out as one summary (see ``service/alerts.py``).

- ``HeartbeatJob``: after each listening cycle the intake records, pings
  ``heartbeat.url`` (success, with a run id); when no cycle came for one expected cycle
  plus ``heartbeat.grace_seconds``, pings ``/fail`` once with a short reason and raises the
  ``listening.stale`` alert. A failed ping is logged, never fatal.
- ``CanaryJob``: daily at ``canary.send_time`` (Europe/London) and once inside every open
  evidence window, mails a unique token (``X-Seftpilot-Canary`` header and subject) to the
  watched mailbox through SMTP, claimed in the ledger by its slot first; one not back within
  ``canary.max_delay_minutes`` is lost (``canary.lost`` alert; verdicts see it through
  ``canaries_between``). ``register_handlers`` records arrivals (class ``canary``).
- ``WatchdogJob``: hourly (and at start) checks new-data overdue, NHS silence, a missing
  release reminder, expiring credentials and abandoned mail; one alert each, cleared when
  the condition ends.
- ``DigestJob``: daily at ``operator.digest_time`` (Europe/London), one per NHS day
  (claimed in the ledger), one after downtime, sent even when there is no news.

Must not decide verdicts (the submission workflow does, with ``canaries_between``) or
what a mail means (the rules do). Reads a few mail-intake tables directly (read-only).
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from seftpilot.adapters.heartbeat import Heartbeat, new_run_id
from seftpilot.adapters.store import Store, utcnow_iso
from seftpilot.core.alerts import (
    AlertState,
    clean_subject,
    expiry_finding,
    new_data_overdue,
    nhs_silent,
    release_reminder_missing,
)
from seftpilot.core.calendar import london_instant, next_upload_opportunity, nhs_day
from seftpilot.core.digest import (
    ActionLine,
    AlertFacts,
    CanaryFacts,
    CanaryRecord,
    DeliveryFacts,
    Digest,
    Facts,
    HeartbeatFacts,
    MailLine,
    PoolChange,
    PoolFacts,
    SubmissionFacts,
    WindowFacts,
    build_digest,
)
from seftpilot.core.ledger import ACCEPTED
from seftpilot.core.verdict import Canary, listening_gaps
from seftpilot.errors import ConfigError, TransportError
from seftpilot.logs import redact
from seftpilot.service import alerts

if TYPE_CHECKING:
    from seftpilot.adapters.mail_store import MailRecord
    from seftpilot.core.message import Message
    from seftpilot.core.rules import Classification
    from seftpilot.service.dispatch import Dispatcher
    from seftpilot.service.runtime import Runtime
    from seftpilot.service.watcher import Job

log = logging.getLogger(__name__)

CANARY_CLASS = "canary"
CANARY_HEADER = "X-Seftpilot-Canary"
DIGEST_LOOKBACK = timedelta(days=7)
STALE_CLAIM = timedelta(minutes=10)  # a digest claim this old with nothing sent: a crash

# Alert keys (stable: the ledger dedupes on them, docs/monitoring.md lists them).
KEY_LISTENING = "listening.stale"
KEY_CANARY_LOST = "canary.lost"
KEY_CANARY_NOT_SENT = "canary.not_sent"
KEY_NHS_SILENT = "watchdog.nhs_silence"
KEY_RELEASE = "watchdog.release_reminder"
KEY_ABANDONED = "watchdog.mail_abandoned"


def _dt(text: str | None) -> datetime | None:
    if not text:
        return None
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _need(text: str | None) -> datetime:
    when = _dt(text)
    assert when is not None
    return when


def _account(runtime: Runtime) -> tuple[str, str]:
    imap = runtime.settings.imap
    # The intake names accounts this way (service.intake.account_name); kept in step.
    return f"{imap.username or 'anonymous'}@{imap.host}", imap.folder


def expected_cycle(runtime: Runtime) -> timedelta:
    """How often the intake records a listening cycle when all is well."""
    imap = runtime.settings.imap
    return timedelta(seconds=imap.idle_renew_seconds if imap.idle else imap.poll_interval_seconds)


def stale_after(runtime: Runtime) -> timedelta:
    return expected_cycle(runtime) + timedelta(seconds=runtime.settings.heartbeat.grace_seconds)


def last_listening(runtime: Runtime) -> datetime | None:
    account, folder = _account(runtime)
    rows = runtime.store.query(
        "SELECT max(at) AS at FROM listening WHERE account=? AND folder=?", (account, folder)
    )
    return _dt(rows[0]["at"]) if rows else None


# == canaries ===============================================================================
def canary_address(runtime: Runtime) -> str:
    address = runtime.settings.canary.address or runtime.settings.imap.username
    if "@" not in address:
        raise ConfigError(
            f"no address to send the mail-path canary to ({address or 'empty'!r})",
            key="canary.address",
            hint="set canary.address to the watched mailbox's e-mail address",
        )
    return address


def new_token(now: datetime) -> str:
    """Unique and unguessable (64 random bits): a forged canary cannot fake listening."""
    return f"sp-{now.astimezone(UTC):%Y%m%d%H%M}-{secrets.token_hex(8)}"


def canaries_between(runtime: Runtime, start: datetime, end: datetime) -> list[Canary]:
    """Canaries sent in ``[start, end]`` with their arrival (None when not (yet) back).

    A canary that arrived later than ``canary.max_delay_minutes`` keeps its late arrival
    time, so ``core.verdict`` treats it as lost."""
    rows = runtime.store.query(
        "SELECT sent_at, arrived_at FROM canaries WHERE sent_at IS NOT NULL AND sent_at>=?"
        " AND sent_at<=? ORDER BY sent_at",
        (utcnow_iso(start), utcnow_iso(end)),
    )
    return [Canary(_need(r["sent_at"]), _dt(r["arrived_at"])) for r in rows]


def canary_records(runtime: Runtime, since: datetime) -> list[CanaryRecord]:
    rows = runtime.store.query(
        "SELECT * FROM canaries WHERE coalesce(sent_at, created_at)>=? ORDER BY created_at",
        (utcnow_iso(since),),
    )
    return [
        CanaryRecord(
            token=r["token"],
            slot=r["slot"],
            sent_at=_dt(r["sent_at"]),
            arrived_at=_dt(r["arrived_at"]),
            lost_at=_dt(r["lost_at"]),
            error=r["error"],
        )
        for r in rows
    ]


def _claim_canary(runtime: Runtime, slot: str, address: str, now: datetime) -> str | None:
    """The token to send for ``slot``: a new claim, or the unsent earlier one (a failed
    or interrupted send is retried with the same token). None: already sent."""
    with runtime.store.transaction() as conn:
        row = conn.execute("SELECT token, sent_at FROM canaries WHERE slot=?", (slot,)).fetchone()
        if row is not None:
            if row["sent_at"] is not None:
                return None
            conn.execute("UPDATE canaries SET attempts=attempts+1 WHERE token=?", (row["token"],))
            return str(row["token"])
        token = new_token(now)
        conn.execute(
            "INSERT INTO canaries(token, slot, address, created_at, attempts) VALUES (?,?,?,?,1)",
            (token, slot, address, utcnow_iso(now)),
        )
        return token


def send_canary(runtime: Runtime, slot: str) -> str | None:
    """Send the canary of ``slot`` unless it went already; returns its token, or None."""
    from seftpilot.adapters.smtp import build_message

    now = runtime.clock.now()
    address = canary_address(runtime)
    token = _claim_canary(runtime, slot, address, now)
    if token is None:
        return None
    message = build_message(
        address,
        f"seftpilot canary {token}",
        "This message tests the mail path into this mailbox for seftpilot: it was sent "
        "through the configured SMTP server and must come back through IMAP within "
        f"{runtime.settings.canary.max_delay_minutes} minutes.\n"
        "Please leave it (or let it be filed); do not reply. It carries no data.\n",
        headers={CANARY_HEADER: token},
        sender=runtime.settings.smtp.from_address,
        now=now,
    )
    try:
        runtime.mailer.send(message)
    except TransportError as exc:
        with runtime.store.transaction() as conn:
            conn.execute("UPDATE canaries SET error=? WHERE token=?", (str(exc)[:500], token))
        raise
    sent = runtime.clock.now()
    with runtime.store.transaction() as conn:
        conn.execute(
            "UPDATE canaries SET sent_at=?, error=NULL WHERE token=?", (utcnow_iso(sent), token)
        )
        Store.append_event(
            conn, "canary.sent", at=sent, subject_type="canary", detail={"slot": slot}
        )
    log.info("canary %s sent to the watched mailbox (slot %s)", token, slot)
    return token


def record_canary_arrival(
    runtime: Runtime, token: str, *, mail_id: int | None, at: datetime
) -> bool:
    """Record that canary ``token`` arrived (idempotent). False for an unknown token."""
    max_delay = timedelta(minutes=runtime.settings.canary.max_delay_minutes)
    with runtime.store.transaction() as conn:
        row = conn.execute("SELECT * FROM canaries WHERE token=?", (token,)).fetchone()
        if row is None:
            Store.append_event(
                conn,
                "canary.unknown_token",
                at=at,
                subject_type="mail",
                subject_id=mail_id,
                detail={"token": clean_subject(token, 100)},
            )
            log.warning("a canary with an unknown token arrived (mail %s); ignored", mail_id)
            return False
        if row["arrived_at"] is not None:
            return True
        conn.execute(
            "UPDATE canaries SET arrived_at=?, mail_id=? WHERE token=? AND arrived_at IS NULL",
            (utcnow_iso(at), mail_id, token),
        )
        sent = _dt(row["sent_at"])
        # The send may be unrecorded (crash after SMTP accepted it): then it counts from
        # its claim, the earliest it can have left.
        sent = sent or _need(row["created_at"])
        on_time = at - sent <= max_delay
        Store.append_event(
            conn,
            "canary.arrived",
            at=at,
            subject_type="canary",
            detail={"token": token, "on_time": on_time, "delay_s": (at - sent).total_seconds()},
        )
    if on_time:
        alerts.clear_alert(
            runtime,
            KEY_CANARY_LOST,
            f"A mail-path canary sent {sent.isoformat(timespec='minutes')} arrived in time: "
            "mail reaches the mailbox again.",
        )
    return True


def mark_lost_canaries(runtime: Runtime, now: datetime) -> list[CanaryRecord]:
    """Mark every sent canary overdue by ``max_delay`` as lost; returns the newly lost."""
    cutoff = now - timedelta(minutes=runtime.settings.canary.max_delay_minutes)
    with runtime.store.transaction() as conn:
        rows = conn.execute(
            "SELECT * FROM canaries WHERE sent_at IS NOT NULL AND arrived_at IS NULL"
            " AND lost_at IS NULL AND sent_at<=?",
            (utcnow_iso(cutoff),),
        ).fetchall()
        for r in rows:
            conn.execute(
                "UPDATE canaries SET lost_at=? WHERE token=?", (utcnow_iso(now), r["token"])
            )
            Store.append_event(
                conn, "canary.lost", at=now, subject_type="canary", detail={"token": r["token"]}
            )
    return [
        CanaryRecord(r["token"], r["slot"], _dt(r["sent_at"]), None, now, r["error"]) for r in rows
    ]


def register_handlers(dispatcher: Dispatcher, runtime: Runtime) -> None:
    """Record canary arrivals from the intake (messages the rules class ``canary``)."""

    def on_canary(record: MailRecord, message: Message, classification: Classification) -> None:
        token = str(classification.captures.get("canary_id") or "").strip()
        if not token:
            token = (message.header(CANARY_HEADER) or "").strip().split(" ")[0]
        if not token:
            log.warning("mail %s was classed canary but carries no token; ignored", record.id)
            return
        record_canary_arrival(runtime, token, mail_id=record.id, at=runtime.clock.now())

    dispatcher.on(CANARY_CLASS, on_canary)


def _open_windows(runtime: Runtime) -> list[tuple[int, datetime, datetime | None]]:
    return [
        (s.id, s.uploaded_at, s.evidence_deadline)
        for s in runtime.ledger.list_submissions(states=["uploaded"])
        if s.uploaded_at is not None
    ]


def due_canary_slots(runtime: Runtime, now: datetime) -> tuple[list[str], datetime | None]:
    """(slots due now, when the next one falls due). Only today's daily slot counts: after
    downtime one canary goes, not one per missed day."""
    if not runtime.settings.canary.enabled:
        return [], None
    rows = runtime.store.query("SELECT slot, sent_at FROM canaries")
    sent = {r["slot"] for r in rows if r["sent_at"] is not None}
    sent_times = [_need(r["sent_at"]) for r in rows if r["sent_at"] is not None]
    due: list[str] = []
    later: list[datetime] = []
    today = nhs_day(now)
    for day in (today, today + timedelta(days=1)):
        at = london_instant(day, runtime.settings.canary.send_time)
        slot = f"daily:{day.isoformat()}"
        if slot in sent:
            continue
        if at <= now and day == today:
            due.append(slot)
        elif at > now:
            later.append(at)
            break
    for sub_id, start, deadline in _open_windows(runtime):
        if deadline is not None and now >= deadline:
            continue
        slot = f"window:{sub_id}"
        covered = any(start <= t <= (deadline or now) for t in sent_times)
        if slot not in sent and not covered:
            due.append(slot)
    return due, min(later) if later else None


# == jobs ====================================================================================
class HeartbeatJob:
    """Reports listening cycles to the dead-man's switch; flags stale listening."""

    name = "heartbeat"

    def __init__(self, runtime: Runtime, *, check_every: timedelta = timedelta(seconds=30)):
        self.runtime = runtime
        self.heartbeat = Heartbeat(runtime.settings.heartbeat)
        self.check_every = min(check_every, expected_cycle(runtime))
        self.started = runtime.clock.now()
        self._last_run: datetime | None = None
        rows = runtime.store.query(
            "SELECT signal, listening_at FROM heartbeat_pings WHERE id=(SELECT max(id) FROM "
            "heartbeat_pings WHERE signal='success') OR id=(SELECT max(id) FROM "
            "heartbeat_pings WHERE signal='fail')"
        )
        self.reported = max(
            (_need(r["listening_at"]) for r in rows if r["signal"] == "success"), default=None
        )
        self.failed_for: datetime | None = max(
            (_need(r["listening_at"]) for r in rows if r["signal"] == "fail" and r["listening_at"]),
            default=None,
        )

    def next_due(self, now: datetime) -> datetime | None:
        return now if self._last_run is None else self._last_run + self.check_every

    def _record(
        self,
        now: datetime,
        signal: str,
        run_id: str,
        *,
        ok: bool,
        at: datetime | None,
        reason: str,
    ) -> None:
        with self.runtime.store.transaction() as conn:
            conn.execute(
                "INSERT INTO heartbeat_pings(at, signal, run_id, ok, listening_at, reason)"
                " VALUES (?,?,?,?,?,?)",
                (utcnow_iso(now), signal, run_id, int(ok), utcnow_iso(at) if at else None, reason),
            )

    def run(self, now: datetime) -> None:
        self._last_run = now
        latest = last_listening(self.runtime)
        limit = stale_after(self.runtime)
        if latest is not None and (self.reported is None or latest > self.reported):
            self.reported = latest
            self.failed_for = None
            if self.heartbeat.enabled:
                run_id = new_run_id()
                ok = self.heartbeat.success(run_id, f"listening cycle at {latest.isoformat()}")
                self._record(now, "success", run_id, ok=ok, at=latest, reason="")
            if now - latest <= limit:
                alerts.clear_alert(
                    self.runtime,
                    KEY_LISTENING,
                    f"Listening resumed: a cycle at {latest:%H:%M} UTC.",
                )
                return
        baseline = latest or self.started
        if now - baseline <= limit:
            return
        minutes = int((now - baseline).total_seconds() // 60)
        reason = (
            f"no listening cycle for {minutes} min (last {latest.isoformat(timespec='minutes')})"
            if latest
            else f"no listening cycle recorded in {minutes} min since the service started"
        )
        if self.failed_for != baseline:
            self.failed_for = baseline
            if self.heartbeat.enabled:
                run_id = new_run_id()
                ok = self.heartbeat.fail(run_id, reason)
                self._record(now, "fail", run_id, ok=ok, at=baseline, reason=reason)
        alerts.raise_alert(
            self.runtime,
            KEY_LISTENING,
            "the mailbox is not being listened to",
            f"{reason}; expected one every {int(expected_cycle(self.runtime).total_seconds())} "
            f"s plus {self.runtime.settings.heartbeat.grace_seconds} s grace.\nWhile this lasts "
            "no silence can count as success. Next step: look at the service log for IMAP "
            "errors, then `seftpilot check --connect`.",
            severity="high",
        )


class CanaryJob:
    """Sends the daily and per-window canaries and declares overdue ones lost."""

    name = "canary"
    RECHECK = timedelta(seconds=30)

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._due_cache: tuple[datetime, datetime | None] | None = None

    def _compute(self, now: datetime) -> datetime | None:
        due, later = due_canary_slots(self.runtime, now)
        if due:
            return now
        candidates = [later] if later else []
        max_delay = timedelta(minutes=self.runtime.settings.canary.max_delay_minutes)
        rows = self.runtime.store.query(
            "SELECT min(sent_at) AS s FROM canaries WHERE sent_at IS NOT NULL AND "
            "arrived_at IS NULL AND lost_at IS NULL"
        )
        if rows and rows[0]["s"]:
            candidates.append(_need(rows[0]["s"]) + max_delay)
        return min(candidates) if candidates else None

    def next_due(self, now: datetime) -> datetime | None:
        if not self.runtime.settings.canary.enabled:
            return None
        if self._due_cache is None or now - self._due_cache[0] >= self.RECHECK:
            self._due_cache = (now, self._compute(now))
        return self._due_cache[1]

    def run(self, now: datetime) -> None:
        self._due_cache = None
        lost = mark_lost_canaries(self.runtime, now)
        if lost:
            limit = self.runtime.settings.canary.max_delay_minutes
            listed = "\n".join(
                f"- canary sent {c.sent_at:%Y-%m-%d %H:%M} UTC (token {c.token})"
                for c in lost
                if c.sent_at
            )
            alerts.raise_alert(
                self.runtime,
                KEY_CANARY_LOST,
                "a mail-path canary did not arrive",
                f"The canary mail below did not come back through IMAP within {limit} min:\n"
                f"{listed}\nUntil one arrives in time, no open evidence window can end in "
                "presumed success (its verdict will be unknown).\nNext step: check the SMTP "
                "server's queue, the mailbox's spam/quarantine and server-side rules.",
                severity="high",
            )
        due, _ = due_canary_slots(self.runtime, now)
        if not due:
            return
        try:
            for slot in due:
                send_canary(self.runtime, slot)
        except ConfigError as exc:
            alerts.raise_alert(
                self.runtime, KEY_CANARY_NOT_SENT, "the mail-path canary cannot be sent", str(exc)
            )
            return
        except TransportError as exc:
            alerts.raise_alert(
                self.runtime,
                KEY_CANARY_NOT_SENT,
                "the mail-path canary cannot be sent",
                f"{exc}\nWithout canaries no evidence window can end in presumed success. "
                "The service retries.",
            )
            raise
        alerts.clear_alert(self.runtime, KEY_CANARY_NOT_SENT, "Canaries are being sent again.")


class WatchdogJob:
    """Hourly checks for silences and expiries that no single event reveals."""

    name = "watchdogs"

    def __init__(self, runtime: Runtime, *, every: timedelta = timedelta(hours=1)) -> None:
        self.runtime = runtime
        self.every = every
        self._last_run: datetime | None = None

    def next_due(self, now: datetime) -> datetime | None:
        return now if self._last_run is None else self._last_run + self.every

    def run(self, now: datetime) -> None:
        self._last_run = now
        run_watchdogs(self.runtime, now)


def _mail_times(runtime: Runtime, sql: str, params: tuple[Any, ...] = ()) -> list[datetime]:
    return [_need(r[0]) for r in runtime.store.query(sql, params) if r[0]]


def run_watchdogs(runtime: Runtime, now: datetime) -> None:
    """Raise or clear each watchdog's alert for the state of the ledger at ``now``."""
    settings = runtime.settings
    wd = settings.watchdogs
    several = len(settings.agreement) > 1
    for agreement in settings.agreement:
        key = f"watchdog.new_data.{agreement.nic}"
        adds = [
            (s.id, s.uploaded_at)
            for s in runtime.ledger.list_submissions(agreement.nic, states=ACCEPTED)
            if s.action == "ADD" and s.uploaded_at is not None
        ]
        sql = "SELECT max(received_at) FROM mail_messages WHERE class='new_data'"
        params: tuple[Any, ...] = ()
        if several:
            sql += " AND coalesce(json_extract(captures, '$.nic'), ?) = ?"
            params = (agreement.nic, agreement.nic)
        last_new = _mail_times(runtime, sql, params)
        finding = new_data_overdue(
            adds, last_new[0] if last_new else None, now, timedelta(days=wd.new_data_within_days)
        )
        if finding:
            alerts.raise_alert(
                runtime, key, finding.subject, finding.text, severity=finding.severity
            )
        else:
            alerts.clear_alert(runtime, key, "A new-data notice arrived (or no ADD waits for one).")

    senders = sorted({s.lower() for a in settings.agreement for s in a.nhs_senders})
    if senders:
        last_nhs: datetime | None = None
        for r in runtime.store.query(
            "SELECT from_addr, max(received_at) AS at FROM mail_messages GROUP BY from_addr"
        ):
            domain = str(r["from_addr"] or "").lower().rpartition("@")[2]
            if any(domain == s or domain.endswith("." + s) for s in senders):
                at = _need(r["at"])
                last_nhs = at if last_nhs is None or at > last_nhs else last_nhs
        first_listening = _mail_times(runtime, "SELECT min(at) FROM listening")
        finding = nhs_silent(
            last_nhs,
            first_listening[0] if first_listening else None,
            now,
            timedelta(days=wd.nhs_silence_days),
            senders,
        )
        if finding:
            alerts.raise_alert(runtime, KEY_NHS_SILENT, finding.subject, finding.text)
        else:
            alerts.clear_alert(runtime, KEY_NHS_SILENT, "Mail from NHS England arrived.")

    reminders = _mail_times(
        runtime,
        "SELECT received_at FROM mail_messages WHERE class='release_reminder' ORDER BY received_at",
    )
    finding = release_reminder_missing(reminders, now)
    if finding:
        alerts.raise_alert(runtime, KEY_RELEASE, finding.subject, finding.text)
    else:
        alerts.clear_alert(runtime, KEY_RELEASE, "A release reminder arrived.")

    from seftpilot.adapters.oauth import expiry_warnings

    warned = set()
    for warning in expiry_warnings(settings, now):
        key = f"watchdog.expiry.{warning.key}"
        warned.add(key)
        f = expiry_finding(warning.what, warning.key, warning.message(), warning.expired)
        alerts.raise_alert(runtime, key, f.subject, f.text, severity=f.severity)
    for row in runtime.store.query(
        "SELECT key FROM alerts WHERE state='open' AND key LIKE 'watchdog.expiry.%'"
    ):
        if row["key"] not in warned:
            alerts.clear_alert(runtime, row["key"], "The credential was renewed.")

    abandoned = runtime.mail.abandoned()
    if abandoned:
        listed = "\n".join(
            f"- mail #{m.id} (uid {m.uid}, rule {m.rule}): {clean_subject(m.last_error or '', 160)}"
            for m in abandoned[:20]
        )
        alerts.raise_alert(
            runtime,
            KEY_ABANDONED,
            f"{len(abandoned)} mail(s) could not be handled",
            f"These messages failed every handling attempt and were set aside:\n{listed}\n"
            "Next step: read them in the mailbox, fix the cause (rules, a server), then "
            "`seftpilot mail` to handle them again.",
        )
    else:
        alerts.clear_alert(runtime, KEY_ABANDONED, "No mail is set aside any more.")


class DigestJob:
    """The daily digest at ``operator.digest_time`` Europe/London, one per NHS day."""

    name = "digest"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._done: date | None = None

    def _sent(self, day: date) -> bool:
        if self._done == day:
            return True
        rows = self.runtime.store.query(
            "SELECT 1 FROM digests WHERE day=? AND sent_at IS NOT NULL", (day.isoformat(),)
        )
        if rows:
            self._done = day
        return bool(rows)

    def next_due(self, now: datetime) -> datetime | None:
        return next_digest_at(self.runtime, now, sent_today=self._sent(nhs_day(now)))

    def run(self, now: datetime) -> None:
        result = send_digest(self.runtime)
        self._done = result.day if result.sent or result.already else None


class AlertFlushJob:
    """Releases the start-up hold after the first pass (one summary), then sends alerts
    that waited (rate limit, SMTP down)."""

    name = "alerts"
    RETRY = timedelta(minutes=5)
    RECHECK = timedelta(minutes=1)

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.released = False
        self._next: datetime | None = None

    def next_due(self, now: datetime) -> datetime | None:
        if not self.released:
            return now
        if self._next is None or now >= self._next:
            if alerts.pending_alerts(self.runtime):
                return now
            self._next = now + self.RECHECK
        return self._next

    def run(self, now: datetime) -> None:
        if not self.released:
            self.released = True
            alerts.release_alerts(self.runtime, after_restart=True)
        else:
            alerts.flush_alerts(self.runtime)
        self._next = now + self.RETRY if alerts.pending_alerts(self.runtime) else None


def jobs(runtime: Runtime) -> list[Job]:
    """The monitoring timers for ``seftpilot watch``, in order; put them after every other
    job so that alerts raised in the first pass are held and sent as one summary."""
    alerts.hold_alerts(runtime)
    return [
        HeartbeatJob(runtime),
        CanaryJob(runtime),
        WatchdogJob(runtime),
        DigestJob(runtime),
        AlertFlushJob(runtime),
    ]


# == the digest ===============================================================================
def next_digest_at(runtime: Runtime, now: datetime, *, sent_today: bool) -> datetime:
    """Today's digest time if today's is not sent yet (at once when that time has passed:
    after downtime one digest goes, not one per missed day), else tomorrow's."""
    today = nhs_day(now)
    at = london_instant(today, runtime.settings.operator.digest_time)
    if sent_today:
        return london_instant(today + timedelta(days=1), runtime.settings.operator.digest_time)
    return at


@dataclass(frozen=True)
class DigestSent:
    day: date
    sent: bool
    already: bool = False
    message_id: str | None = None
    sent_at: datetime | None = None


def _claim_digest(runtime: Runtime, day: date, now: datetime) -> bool:
    with runtime.store.transaction() as conn:
        cur = conn.execute(
            "INSERT INTO digests(day, claimed_at, attempts) VALUES (?,?,1) ON CONFLICT(day) DO "
            "UPDATE SET claimed_at=excluded.claimed_at, attempts=attempts+1, error=NULL "
            "WHERE digests.sent_at IS NULL AND (digests.error IS NOT NULL OR "
            "digests.claimed_at < ?)",
            (day.isoformat(), utcnow_iso(now), utcnow_iso(now - STALE_CLAIM)),
        )
        return cur.rowcount == 1


def digest_sent_on(runtime: Runtime, day: date) -> datetime | None:
    rows = runtime.store.query("SELECT sent_at FROM digests WHERE day=?", (day.isoformat(),))
    return _dt(rows[0]["sent_at"]) if rows else None


def send_digest(runtime: Runtime, *, force: bool = False) -> DigestSent:
    """Send today's digest, once per NHS day (claimed in the ledger first). ``force`` sends
    another copy without claiming (an operator asking by hand)."""
    from seftpilot.adapters.smtp import build_message

    now = runtime.clock.now()
    day = nhs_day(now)
    recipients = runtime.settings.operator.emails
    if not recipients:
        raise ConfigError(
            "nobody to send the digest to",
            key="operator.emails",
            hint="list the operators' addresses in [operator] emails",
        )
    if not force and not _claim_digest(runtime, day, now):
        return DigestSent(day, sent=False, already=True, sent_at=digest_sent_on(runtime, day))
    digest = current_digest(runtime, now=now)
    text, html = render_digest(digest)
    message = build_message(
        recipients,
        clean_subject(digest.subject, 200),
        text,
        html,
        sender=runtime.settings.smtp.from_address,
        now=now,
    )
    try:
        message_id = runtime.mailer.send(message)
    except TransportError as exc:
        if not force:
            with runtime.store.transaction() as conn:
                conn.execute(
                    "UPDATE digests SET error=? WHERE day=?", (str(exc)[:500], day.isoformat())
                )
        raise
    sent = runtime.clock.now()
    with runtime.store.transaction() as conn:
        if not force:
            conn.execute(
                "UPDATE digests SET sent_at=?, message_id=? WHERE day=?",
                (utcnow_iso(sent), message_id, day.isoformat()),
            )
        Store.append_event(
            conn,
            "digest.sent",
            at=sent,
            subject_type="digest",
            detail={"day": day.isoformat(), "forced": force, "headline": digest.headline},
        )
    return DigestSent(day, sent=True, message_id=message_id, sent_at=sent)


def render_digest(digest: Digest, *, title: str = "daily digest") -> tuple[str, str]:
    """(plain text, HTML) of ``digest``; secrets registered with ``logs`` are redacted.

    ``status`` renders the same facts under its own title."""
    from seftpilot.service.render import render_text

    context = {"d": digest, "title": title}
    return (
        redact(render_text("digest.txt.j2", context)),
        redact(render_text("digest.html.j2", context)),
    )


def current_digest(
    runtime: Runtime, *, now: datetime | None = None, since: datetime | None = None
) -> Digest:
    return build_digest(gather_facts(runtime, now=now, since=since))


# -- facts ------------------------------------------------------------------------------------
def deliveries(runtime: Runtime, limit: int = 20) -> list[DeliveryFacts] | None:
    """Recent deliveries, or None when the ledger has no deliveries table (forwarding is
    another module's; this reads only columns it can find)."""
    tables = runtime.store.query(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='deliveries'"
    )
    if not tables:
        return None
    try:
        rows = runtime.store.query("SELECT * FROM deliveries ORDER BY rowid DESC LIMIT ?", (limit,))
    except Exception:  # a schema we cannot read must not stop the digest
        log.warning("the deliveries table could not be read; the digest leaves it out")
        return None
    out: list[DeliveryFacts] = []
    for r in reversed(rows):
        keys = set(r.keys())
        at = next(
            (_dt(r[k]) for k in ("updated_at", "uploaded_at", "created_at") if k in keys and r[k]),
            None,
        )
        detail = ", ".join(
            f"{k.replace('_', ' ')} {r[k]}"
            for k in ("file_count", "remote_name", "archive_name", "total_bytes")
            if k in keys and r[k] is not None
        )
        out.append(
            DeliveryFacts(
                id=int(r["id"]) if "id" in keys else 0,
                state=str(r["state"]) if "state" in keys else "?",
                at=at,
                detail=clean_subject(detail, 200),
            )
        )
    return out


def _mail_line(r: sqlite3.Row) -> MailLine:
    return MailLine(
        received_at=_need(r["received_at"]),
        class_=r["class"],
        rule=r["rule"],
        subject=clean_subject(r["subject"] or "(no subject)", 120),
        from_addr=clean_subject(r["from_addr"] or "", 120),
        submission_id=r["submission_id"],
    )


def _submission_facts(runtime: Runtime, now: datetime, since: datetime) -> list[SubmissionFacts]:
    from seftpilot.adapters.ledger_store import Submission

    settings = runtime.settings
    account, folder = _account(runtime)
    max_gap = timedelta(minutes=settings.submission.max_listening_gap_minutes)
    subs: list[Submission] = runtime.ledger.list_submissions()
    last_day: dict[str, date] = {}
    for s in subs:
        if s.nhs_day and (s.agreement not in last_day or s.nhs_day > last_day[s.agreement]):
            last_day[s.agreement] = s.nhs_day
    out: list[SubmissionFacts] = []
    for s in subs:
        base = SubmissionFacts(
            id=s.id,
            agreement=s.agreement,
            action=s.action,
            state=s.state,
            attempt=s.attempt,
            row_count=s.row_count,
            created_at=s.created_at,
            file_name=s.file_name,
            uploaded_at=s.uploaded_at,
            evidence_deadline=s.evidence_deadline,
            verdict=s.verdict,
            verdict_at=s.verdict_at,
            reasons=tuple(clean_subject(str(r), 300) for r in s.verdict_detail.get("reasons", ())),
        )
        if not base.newsworthy(since):
            continue
        extra: dict[str, Any] = {}
        if s.state == "due":
            try:
                extra["next_upload_at"] = next_upload_opportunity(
                    now,
                    settings.submission.upload_window_start,
                    settings.submission.upload_window_end,
                    runtime.holidays(now.date()),
                    last_day.get(s.agreement),
                )
            except ValueError:
                extra["next_upload_at"] = None
        if s.uploaded_at is not None:
            start = s.uploaded_at
            deadline = s.evidence_deadline
            end = min(deadline, now) if deadline else (s.verdict_at or now)
            end = max(end, start)
            cov = runtime.mail.coverage(account, folder, start, end)
            extra["window"] = WindowFacts(
                start=start,
                deadline=deadline,
                end=end,
                open=s.state == "uploaded" and (deadline is None or now < deadline),
                polls=len(cov.timestamps),
                gaps=tuple(listening_gaps(cov.timestamps, start, end, max_gap)),
                max_gap=max_gap,
            )
            extra["mails"] = tuple(
                _mail_line(r)
                for r in runtime.store.query(
                    "SELECT received_at, class, rule, subject, from_addr, submission_id"
                    " FROM mail_messages"
                    " WHERE (submission_id=? OR "
                    "(received_at>=? AND received_at<=?)) AND coalesce(class,'')<>? "
                    "ORDER BY received_at LIMIT 50",
                    (s.id, utcnow_iso(start), utcnow_iso(end), CANARY_CLASS),
                )
            )
            extra["canaries"] = tuple(canaries_between(runtime, start, end))
        extra["actions"] = tuple(
            ActionLine(_need(e["at"]), _action_text(e["kind"], e["detail"]))
            for e in runtime.store.events("submission", s.id)
        )
        out.append(replace(base, **extra))
    return out


def _action_text(kind: str, detail: dict[str, Any]) -> str:
    what = kind.removeprefix("submission.").replace("_", " ")
    for key in ("verdict", "rows", "nhs_day", "file_name", "reason"):
        if detail.get(key):
            what += f" ({key.replace('_', ' ')}: {clean_subject(str(detail[key]), 80)})"
            break
    return what


def _pool_facts(runtime: Runtime, since: datetime) -> list[PoolFacts]:
    out = []
    nics = [a.nic for a in runtime.settings.agreement]
    for nic in nics:
        pool = runtime.ledger.pool(nic)
        changes = tuple(
            PoolChange(s.id, s.action, s.row_count, str(s.verdict), s.verdict_at)
            for s in runtime.ledger.list_submissions(nic, states=ACCEPTED)
            if s.verdict_at is not None and s.verdict_at >= since
        )
        out.append(PoolFacts(nic, len(pool), len(pool.stuck), pool.last_change, changes))
    return out


def _heartbeat_facts(runtime: Runtime, now: datetime, since: datetime) -> HeartbeatFacts:
    latest = last_listening(runtime)
    limit = stale_after(runtime)
    last = runtime.store.query("SELECT * FROM heartbeat_pings ORDER BY id DESC LIMIT 1")
    failed = runtime.store.query(
        "SELECT count(*) FROM heartbeat_pings WHERE ok=0 AND at>=?", (utcnow_iso(since),)
    )
    return HeartbeatFacts(
        configured=runtime.settings.heartbeat.url is not None,
        last_listening_at=latest,
        stale=latest is None or now - latest > limit,
        stale_after=limit,
        last_ping_at=_dt(last[0]["at"]) if last else None,
        last_ping_signal=last[0]["signal"] if last else None,
        last_ping_ok=bool(last[0]["ok"]) if last else None,
        failed_pings=int(failed[0][0]) if failed else 0,
    )


def _alert_facts(states: Sequence[AlertState]) -> list[AlertFacts]:
    return [
        AlertFacts(
            key=a.key,
            severity=a.severity,
            subject=a.subject,
            state=a.state,
            first_raised_at=a.first_raised_at,
            last_seen_at=a.last_seen_at,
            cleared_at=a.cleared_at,
            mailed=a.sent_count > 0 or a.last_sent_at is not None,
        )
        for a in states
    ]


def gather_facts(
    runtime: Runtime, *, now: datetime | None = None, since: datetime | None = None
) -> Facts:
    """Read from the ledger everything the digest and ``seftpilot status`` report.

    ``since`` defaults to when the previous digest went (at most a week back)."""
    now = now or runtime.clock.now()
    if since is None:
        rows = runtime.store.query(
            "SELECT max(sent_at) FROM digests WHERE sent_at IS NOT NULL AND day<?",
            (nhs_day(now).isoformat(),),
        )
        previous = _dt(rows[0][0]) if rows and rows[0][0] else None
        since = max(previous, now - DIGEST_LOOKBACK) if previous else now - DIGEST_LOOKBACK
    due_slots, later_slot = due_canary_slots(runtime, now)
    next_canary = now if due_slots else later_slot
    mails = [
        _mail_line(r)
        for r in runtime.store.query(
            "SELECT received_at, class, rule, subject, from_addr, submission_id FROM mail_messages"
            " WHERE received_at>=? AND "
            "coalesce(class,'')<>? ORDER BY received_at LIMIT 200",
            (utcnow_iso(since), CANARY_CLASS),
        )
    ]
    today_sent = digest_sent_on(runtime, nhs_day(now)) is not None
    return Facts(
        now=now,
        since=since,
        submissions=_submission_facts(runtime, now, since),
        pools=_pool_facts(runtime, since),
        heartbeat=_heartbeat_facts(runtime, now, since),
        canary=CanaryFacts(
            enabled=runtime.settings.canary.enabled,
            max_delay=timedelta(minutes=runtime.settings.canary.max_delay_minutes),
            recent=tuple(canary_records(runtime, since)),
            next_at=next_canary,
        ),
        open_alerts=_alert_facts(alerts.open_alerts(runtime)),
        cleared_alerts=_alert_facts(alerts.cleared_since(runtime, since)),
        mails=mails,
        deliveries=deliveries(runtime),
        release_reminders=[m for m in mails if m.class_ == "release_reminder"],
        next_digest_at=max(now, next_digest_at(runtime, now, sent_today=today_sent)),
        agreements=[a.nic for a in runtime.settings.agreement],
    )


def status_document(runtime: Runtime) -> dict[str, Any]:
    """``seftpilot status --json``: the digest's facts plus what the service itself knows."""
    digest = current_digest(runtime)
    doc = digest.to_dict()
    doc["alert_mails_last_day"] = len(
        alerts.alert_mails_since(runtime, runtime.clock.now() - timedelta(days=1))
    )
    return json.loads(redact(json.dumps(doc, default=str)))  # type: ignore[no-any-return]
