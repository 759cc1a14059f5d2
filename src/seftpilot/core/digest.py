"""What the operator's digest (and ``seftpilot status``) says, as a value. Pure.

Owns the choice of what a reader needs: which submissions to show (every unsettled one,
and every one with news in the period), each with its verdict and evidence timeline
(window, polls, gaps, mails, actions, canaries); deliveries; the believed pool and how it
changed; heartbeat and canary status; open and cleared alerts; what needs the operator
(``attention``); and what happens next and when (``next_steps``). ``Digest.to_dict`` is the
JSON of ``seftpilot status --json`` and ``seftpilot digest --json``.

The shell (``service/monitor.py``) gathers ``Facts`` from the ledger; the templates in
``templates/digest.*.j2`` render a ``Digest``. Must not read the clock, the ledger or files,
nor log. Text here is already sanitised by the shell where it came from mail.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from seftpilot.core.verdict import Canary, Gap

LONDON = ZoneInfo("Europe/London")

SETTLED = frozenset({"confirmed_success", "presumed_success", "retried", "cancelled"})
NEEDS_OPERATOR = frozenset({"unknown", "failed", "upload_unknown"})


@dataclass(frozen=True)
class MailLine:
    received_at: datetime
    class_: str | None
    rule: str | None
    subject: str
    from_addr: str
    submission_id: int | None = None


@dataclass(frozen=True)
class ActionLine:
    at: datetime
    what: str


@dataclass(frozen=True)
class WindowFacts:
    """A submission's evidence window as far as it has run (``end`` is the deadline, or
    ``now`` while it is open)."""

    start: datetime
    deadline: datetime | None
    end: datetime
    open: bool
    polls: int
    gaps: tuple[Gap, ...]
    max_gap: timedelta


@dataclass(frozen=True)
class SubmissionFacts:
    id: int
    agreement: str
    action: str
    state: str
    attempt: int
    row_count: int
    created_at: datetime
    file_name: str | None = None
    uploaded_at: datetime | None = None
    evidence_deadline: datetime | None = None
    verdict: str | None = None
    verdict_at: datetime | None = None
    reasons: tuple[str, ...] = ()
    window: WindowFacts | None = None
    mails: tuple[MailLine, ...] = ()
    actions: tuple[ActionLine, ...] = ()
    canaries: tuple[Canary, ...] = ()
    next_upload_at: datetime | None = None  # for a due submission: the next chance

    def newsworthy(self, since: datetime) -> bool:
        if self.state not in SETTLED:
            return True
        return any(
            t is not None and t >= since
            for t in (self.created_at, self.uploaded_at, self.verdict_at)
        )


@dataclass(frozen=True)
class DeliveryFacts:
    id: int
    state: str
    at: datetime | None
    detail: str = ""


@dataclass(frozen=True)
class PoolChange:
    submission_id: int
    action: str
    rows: int
    verdict: str
    at: datetime


@dataclass(frozen=True)
class PoolFacts:
    agreement: str
    count: int
    stuck: int
    last_change: datetime | None
    changes: tuple[PoolChange, ...] = ()


@dataclass(frozen=True)
class HeartbeatFacts:
    configured: bool
    last_listening_at: datetime | None
    stale: bool
    stale_after: timedelta
    last_ping_at: datetime | None = None
    last_ping_signal: str | None = None
    last_ping_ok: bool | None = None
    failed_pings: int = 0  # in the period


@dataclass(frozen=True)
class CanaryRecord:
    token: str
    slot: str
    sent_at: datetime | None
    arrived_at: datetime | None
    lost_at: datetime | None
    error: str | None = None


@dataclass(frozen=True)
class CanaryFacts:
    enabled: bool
    max_delay: timedelta
    recent: tuple[CanaryRecord, ...] = ()  # sent in the period, oldest first
    next_at: datetime | None = None

    @property
    def arrived(self) -> int:
        return sum(1 for c in self.recent if c.arrived_at is not None and c.lost_at is None)

    @property
    def lost(self) -> int:
        return sum(1 for c in self.recent if c.lost_at is not None)

    @property
    def in_flight(self) -> int:
        return sum(
            1
            for c in self.recent
            if c.sent_at is not None and c.arrived_at is None and c.lost_at is None
        )


@dataclass(frozen=True)
class AlertFacts:
    key: str
    severity: str
    subject: str
    state: str
    first_raised_at: datetime
    last_seen_at: datetime
    cleared_at: datetime | None = None
    mailed: bool = True


@dataclass(frozen=True)
class NextStep:
    at: datetime | None  # None: waits for the operator
    what: str


@dataclass(frozen=True)
class Facts:
    """Everything the shell read from the ledger for one digest."""

    now: datetime
    since: datetime
    submissions: Sequence[SubmissionFacts]
    pools: Sequence[PoolFacts]
    heartbeat: HeartbeatFacts
    canary: CanaryFacts
    open_alerts: Sequence[AlertFacts]
    cleared_alerts: Sequence[AlertFacts]
    mails: Sequence[MailLine]  # every mail received in the period (canaries excluded)
    deliveries: Sequence[DeliveryFacts] | None = None  # None: no deliveries table yet
    release_reminders: Sequence[MailLine] = ()
    next_digest_at: datetime | None = None
    agreements: Sequence[str] = ()


@dataclass(frozen=True)
class Digest:
    generated_at: datetime
    since: datetime
    day: date
    headline: str
    attention: tuple[str, ...]
    submissions: tuple[SubmissionFacts, ...]
    pools: tuple[PoolFacts, ...]
    heartbeat: HeartbeatFacts
    canary: CanaryFacts
    open_alerts: tuple[AlertFacts, ...]
    cleared_alerts: tuple[AlertFacts, ...]
    mails: tuple[MailLine, ...]
    deliveries: tuple[DeliveryFacts, ...] | None
    next_steps: tuple[NextStep, ...]
    agreements: tuple[str, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        when = self.generated_at.astimezone(LONDON).strftime("%a %d %b")
        return f"[seftpilot] digest {when}: {self.headline}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (datetimes as ISO 8601 UTC, durations in seconds)."""
        out = _plain(dataclasses.asdict(self))
        out["subject"] = self.subject
        out["canary"].update(
            arrived=self.canary.arrived, lost=self.canary.lost, in_flight=self.canary.in_flight
        )
        return out  # type: ignore[no-any-return]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {("class" if k == "class_" else k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def _at(instant: datetime) -> str:
    return instant.astimezone(LONDON).strftime("%a %d %b %H:%M")


def _attention(facts: Facts, shown: Sequence[SubmissionFacts]) -> list[str]:
    needs: list[str] = []
    for sub in shown:
        if sub.state == "unknown":
            needs.append(
                f"submission #{sub.id} ({sub.action}) has verdict unknown: decide with NHS "
                "England whether it was taken, then record it (`seftpilot submission resolve`)"
            )
        elif sub.state == "failed":
            needs.append(f"submission #{sub.id} ({sub.action}) failed: see its reasons below")
        elif sub.state == "upload_unknown":
            needs.append(
                f"submission #{sub.id}: the upload's fate is unknown; the remote folder is "
                "listed before anything else is sent"
            )
    hb = facts.heartbeat
    if hb.stale:
        last = _at(hb.last_listening_at) if hb.last_listening_at else "never"
        # Say what to do: the usual cause is a watch that is not running at all.
        needs.append(
            f"the mailbox is not being listened to (last cycle: {last}): start `seftpilot "
            "watch` (or its service) if it is not running; if it is, its log says why, and "
            "`seftpilot check --connect` tests the mailbox login"
        )
    if facts.canary.lost:
        needs.append(
            f"{facts.canary.lost} mail-path canar{'y' if facts.canary.lost == 1 else 'ies'} "
            "lost in the period: silence cannot count as success while mail goes missing"
        )
    needs.extend(
        f"open alert ({a.severity}): {a.subject}"
        for a in facts.open_alerts
        if a.severity in ("high", "critical")
    )
    return needs


def _next_steps(facts: Facts, shown: Sequence[SubmissionFacts]) -> list[NextStep]:
    steps: list[NextStep] = []
    for sub in shown:
        if sub.state == "uploaded" and sub.evidence_deadline is not None:
            steps.append(
                NextStep(sub.evidence_deadline, f"verdict on submission #{sub.id} ({sub.action})")
            )
        elif sub.state == "due":
            steps.append(
                NextStep(
                    sub.next_upload_at,
                    f"upload of submission #{sub.id} ({sub.action}, {sub.row_count} rows)",
                )
            )
        elif sub.state == "planned":
            steps.append(NextStep(None, f"submission #{sub.id} ({sub.action}) waits its turn"))
        elif sub.state in NEEDS_OPERATOR:
            steps.append(NextStep(None, f"the operator decides on submission #{sub.id}"))
    if facts.canary.enabled and facts.canary.next_at is not None:
        steps.append(NextStep(facts.canary.next_at, "mail-path canary"))
    if facts.next_digest_at is not None:
        steps.append(NextStep(facts.next_digest_at, "next digest"))
    far = facts.now + timedelta(days=3650)
    return sorted(steps, key=lambda s: (s.at is None, s.at or far))


def build_digest(facts: Facts) -> Digest:
    """The digest for ``facts``: sent even when nothing happened (its absence is news)."""
    shown = tuple(
        sorted(
            (s for s in facts.submissions if s.newsworthy(facts.since)),
            key=lambda s: s.id,
        )
    )
    attention = tuple(_attention(facts, shown))
    news = (
        len(facts.mails)
        + sum(1 for s in shown if s.newsworthy(facts.since))
        + sum(len(p.changes) for p in facts.pools)
        + len(facts.deliveries or ())
    )
    if attention:
        n = len(attention)
        headline = f"{n} thing{'s need' if n != 1 else ' needs'} you"
    elif news:
        headline = "all well"
    else:
        headline = "all quiet, no news"
    counts = {
        "submissions": len(shown),
        "mails": len(facts.mails),
        "open_alerts": len(facts.open_alerts),
        "canaries_lost": facts.canary.lost,
    }
    return Digest(
        generated_at=facts.now,
        since=facts.since,
        day=facts.now.astimezone(LONDON).date(),
        headline=headline,
        attention=attention,
        submissions=shown,
        pools=tuple(facts.pools),
        heartbeat=facts.heartbeat,
        canary=facts.canary,
        open_alerts=tuple(facts.open_alerts),
        cleared_alerts=tuple(facts.cleared_alerts),
        mails=tuple(facts.mails),
        deliveries=tuple(facts.deliveries) if facts.deliveries is not None else None,
        next_steps=tuple(_next_steps(facts, shown)),
        agreements=tuple(facts.agreements),
        counts=counts,
    )
