"""Alert decisions: deduplication, reminders, rate limits, what one alert mail says, and
the watchdogs' judgements. Pure.

Owns, as values and functions:

* what a call to raise or clear an alert means given the alert's recorded state
  (``on_raise``: new, reminder or duplicate; ``on_clear``: cleared, silent or nothing);
* whether another alert mail may go now (``may_send``: a cap per hour, so a fault that
  raises a hundred alerts sends one summary, not a hundred mails);
* the shape of the next alert mail (``compose``): one item as itself, several as one
  summary (always one summary after the service's own downtime);
* sanitising untrusted text for a subject line or a body (captures from mail end up here);
* the watchdogs' pure judgements (new data overdue, NHS silent, release reminder missing,
  something about to expire), each returning a ``Finding`` or ``None``.

Must not read the clock, the ledger or the network, nor log: ``service/alerts.py`` and
``service/monitor.py`` gather the facts and act on the answers.
"""

from __future__ import annotations

import statistics
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Literal
from zoneinfo import ZoneInfo

from seftpilot.core.rules import sanitize_capture

LONDON = ZoneInfo("Europe/London")

Severity = Literal["info", "warning", "high", "critical"]
SEVERITIES: tuple[str, ...] = ("critical", "high", "warning", "info")
RaiseOutcome = Literal["new", "reminder", "duplicate"]
ClearOutcome = Literal["cleared", "silent", "none"]
Pending = Literal["raised", "reminder", "cleared"]

SUBJECT_PREFIX = "[seftpilot]"
MAX_SUBJECT = 150
MAX_TEXT = 4000


@dataclass(frozen=True)
class AlertState:
    """One alert as recorded (one row per key)."""

    key: str
    severity: str
    subject: str
    text: str
    state: Literal["open", "cleared"]
    first_raised_at: datetime
    last_seen_at: datetime
    last_sent_at: datetime | None = None
    sent_count: int = 0
    pending: Pending | None = None
    cleared_at: datetime | None = None
    clear_text: str | None = None


def on_raise(existing: AlertState | None, now: datetime, reminder: timedelta) -> RaiseOutcome:
    """What raising an alert means now.

    ``new`` when the key has no open alert; ``reminder`` when it is open, the operator was
    told, and ``reminder`` has passed since the last mail about it; ``duplicate`` otherwise
    (including while a mail about it is still owed).
    """
    if existing is None or existing.state == "cleared":
        return "new"
    if existing.pending is not None or existing.last_sent_at is None:
        return "duplicate"
    if now - existing.last_sent_at >= reminder:
        return "reminder"
    return "duplicate"


def on_clear(existing: AlertState | None) -> ClearOutcome:
    """What clearing an alert means: ``cleared`` (say so), ``silent`` (the operator never
    heard of it, so say nothing: a flap inside one batch stays quiet) or ``none``."""
    if existing is None or existing.state == "cleared":
        return "none"
    if existing.sent_count == 0:
        return "silent"
    return "cleared"


def may_send(recent: Sequence[datetime], now: datetime, max_per_hour: int) -> bool:
    """Whether another alert mail may go: fewer than ``max_per_hour`` in the last hour."""
    hour_ago = now - timedelta(hours=1)
    return sum(1 for t in recent if t > hour_ago) < max_per_hour


def rate_limited_until(recent: Sequence[datetime], now: datetime, max_per_hour: int) -> datetime:
    """When the next alert mail may go (``now`` when it may go now)."""
    hour_ago = now - timedelta(hours=1)
    inside = sorted(t for t in recent if t > hour_ago)
    if len(inside) < max_per_hour:
        return now
    # The oldest mail that keeps the count at the cap must leave the hour first.
    return inside[len(inside) - max_per_hour] + timedelta(hours=1)


# -- text hygiene -------------------------------------------------------------------------
def clean_subject(text: str, limit: int = MAX_SUBJECT) -> str:
    """One line, no control or bidi characters (no header injection), length capped."""
    return sanitize_capture(text, limit)


def clean_text(text: str, limit: int = MAX_TEXT) -> str:
    """A body: line breaks kept, every other control/format character a space, capped."""
    lines = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        lines.append(
            "".join(
                " " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs") else ch
                for ch in line
            ).rstrip()
        )
    out = "\n".join(lines).strip("\n")
    if len(out) > limit:
        out = out[: limit - 1].rstrip() + "…"
    return out


def _rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


# -- the mail -------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutgoingItem:
    """One alert in the next mail: what is owed about it."""

    key: str
    kind: Pending
    severity: str
    subject: str
    text: str
    first_raised_at: datetime
    cleared_at: datetime | None = None


@dataclass(frozen=True)
class AlertMail:
    subject: str
    summary: bool
    after_restart: bool
    items: tuple[OutgoingItem, ...]


def compose(items: Sequence[OutgoingItem], *, after_restart: bool = False) -> AlertMail:
    """The next alert mail: a single item as itself, several (or any after a restart) as
    one summary, most severe first, cleared last."""
    if not items:
        raise ValueError("an alert mail needs at least one item")
    ordered = tuple(
        sorted(items, key=lambda i: (i.kind == "cleared", _rank(i.severity), i.first_raised_at))
    )
    if len(ordered) == 1 and not after_restart:
        item = ordered[0]
        label = {
            "raised": f"ALERT ({item.severity})",
            "reminder": f"still open ({item.severity})",
            "cleared": "cleared",
        }[item.kind]
        subject = f"{SUBJECT_PREFIX} {label}: {clean_subject(item.subject)}"
        return AlertMail(clean_subject(subject, 200), False, False, ordered)
    counts = {k: sum(1 for i in ordered if i.kind == k) for k in ("raised", "reminder", "cleared")}
    parts = [
        f"{counts['raised']} new" if counts["raised"] else "",
        f"{counts['reminder']} still open" if counts["reminder"] else "",
        f"{counts['cleared']} cleared" if counts["cleared"] else "",
    ]
    what = ", ".join(p for p in parts if p)
    lead = "after a restart" if after_restart else "alerts"
    subject = f"{SUBJECT_PREFIX} {lead}: {what}"
    return AlertMail(clean_subject(subject, 200), True, after_restart, ordered)


# -- watchdogs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    """A watchdog's judgement that something is wrong: the alert to raise."""

    subject: str
    text: str
    severity: Severity = "warning"


def _day(instant: datetime) -> str:
    return instant.astimezone(LONDON).strftime("%a %d %b %Y")


def new_data_overdue(
    accepted_adds: Sequence[tuple[int, datetime]],
    last_new_data: datetime | None,
    now: datetime,
    within: timedelta,
) -> Finding | None:
    """No "new data" notice within ``within`` of an accepted ADD.

    ``accepted_adds`` holds (submission id, uploaded at). The ADD that counts is the
    earliest one after the last notice: a notice answers every ADD uploaded before it.
    """
    waiting = sorted(
        (a for a in accepted_adds if last_new_data is None or a[1] > last_new_data),
        key=lambda a: a[1],
    )
    if not waiting:
        return None
    sub_id, uploaded = waiting[0]
    if now - uploaded <= within:
        return None
    since = (
        f"the last one arrived {_day(last_new_data)}" if last_new_data else "none has ever arrived"
    )
    return Finding(
        f"no new-data notice {within.days} days after accepted ADD #{sub_id}",
        f'Submission #{sub_id} (ADD) was uploaded {_day(uploaded)} and accepted, but no "new '
        f'data" notice has arrived from NHS England since ({since}). Expected within '
        f"{within.days} days.\nNext step: check the SEFT download area and ask NHS England "
        "whether the data release is scheduled; `seftpilot forward --from DIR` forwards files "
        "fetched by hand.",
    )


def nhs_silent(
    last_nhs_mail: datetime | None,
    listening_since: datetime | None,
    now: datetime,
    within: timedelta,
    senders: Sequence[str],
) -> Finding | None:
    """No mail at all from NHS England for ``within`` (counted from the first recorded
    listening when none has ever arrived; nothing is judged before listening began)."""
    since = last_nhs_mail or listening_since
    if since is None or now - since <= within:
        return None
    last = f"the last arrived {_day(last_nhs_mail)}" if last_nhs_mail else "none has arrived"
    return Finding(
        f"no mail from NHS England for {(now - since).days} days",
        f"No mail from NHS England ({', '.join(senders)}) for more than {within.days} days "
        f"({last}; listening since {_day(listening_since) if listening_since else '?'}).\n"
        "Mail may be filtered or delivered elsewhere. Next step: check the mailbox's spam/"
        "quarantine and server rules, and that NHS England has the right contact address.",
    )


def release_reminder_missing(
    reminders: Sequence[datetime], now: datetime, slack: timedelta = timedelta(days=7)
) -> Finding | None:
    """A release reminder that did not come when the earlier ones' cadence said it would.

    Needs at least two reminders to know a cadence (the median interval between them);
    flags when the time since the last exceeds that cadence plus ``slack``. With fewer
    than two nothing is judged (documented in docs/monitoring.md).
    """
    seen = sorted(reminders)
    if len(seen) < 2:
        return None
    cadence = statistics.median((b - a).total_seconds() for a, b in pairwise(seen))
    expected = seen[-1] + timedelta(seconds=cadence)
    if now <= expected + slack:
        return None
    days = round(cadence / 86400)
    return Finding(
        "a data-release reminder from NHS England is overdue",
        f"NHS England's release reminders came about every {days} days (last on "
        f"{_day(seen[-1])}); the next was expected around {_day(expected)} and has not "
        "arrived.\nNext step: check the mailbox's spam/quarantine and ask NHS England "
        "whether the release schedule changed.",
    )


def expiry_finding(what: str, key: str, expires_text: str, expired: bool) -> Finding:
    """A credential that expires soon (or has expired)."""
    return Finding(
        f"{what} {'has expired' if expired else 'expires soon'}",
        f"{expires_text}.\nNext step: renew it and update `{key}` (and the secret itself) "
        "before the service loses access.",
        "high" if expired else "warning",
    )
