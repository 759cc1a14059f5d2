"""Verdicts: turn an evidence window into ``confirmed_success``, ``presumed_success``,
``failed`` or ``unknown``, with every reason spelled out.

Owns the rules of DESIGN.md "Verdicts" and their precedence (docs/verdicts.md is the
operator's version of the same table). Pure: the shell gathers the evidence (polls and
IDLE cycles from the listening table, canaries, classified and correlated mail) into an
``Evidence`` value and asks ``decide``. It must not read the clock, the ledger or the
mailbox, nor log.

Precedence, first match wins:

1. A failure notice *and* a success notice both correlated to this submission:
   ``unknown`` (conflict; the operator decides, nothing is guessed).
2. A failure notice correlated to this submission: ``failed``. A failure beats every
   gap in the evidence: the notice itself proves NHS England answered.
3. A success notice correlated to this submission: ``confirmed_success``, unless a
   failure notice in the window could not be attributed (ambiguous or uncorrelated),
   which might be this submission's: then ``unknown``.
4. ``presumed_success`` when *all* of: no notice in the window that is ambiguous or
   uncorrelated, listening unbroken (gaps from the window start to the first poll,
   between polls and from the last poll to the window end each at most ``max_gap``),
   mailbox authentication never broken in the window, a canary sent in the window
   arrived in time and none was lost (when canaries are required), and every NHS mail in
   the window matched a rule.
5. ``unknown`` otherwise, listing every reason that blocked 4.

Times in reasons are Europe/London wall-clock times, the operator's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from typing import Any, Literal, TypeAlias
from zoneinfo import ZoneInfo

LONDON = ZoneInfo("Europe/London")

SubmissionId: TypeAlias = int
AMBIGUOUS: Literal["ambiguous"] = "ambiguous"
"""The ``correlated`` value of a mail that could concern several submissions."""

UNMATCHED_CLASS = "unmatched"
"""The class ``core.rules`` gives a message no rule matched."""

# The class names of the default rules. Operators may rename classes in their rules;
# the shell then passes the rules' own failure/success classes into ``Evidence``.
DEFAULT_FAILURE_CLASSES: frozenset[str] = frozenset({"submission_failed"})
DEFAULT_SUCCESS_CLASSES: frozenset[str] = frozenset({"submission_succeeded"})


class VerdictKind(StrEnum):
    CONFIRMED_SUCCESS = "confirmed_success"
    PRESUMED_SUCCESS = "presumed_success"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @property
    def successful(self) -> bool:
        """Only successful verdicts may change the believed pool."""
        return self in (VerdictKind.CONFIRMED_SUCCESS, VerdictKind.PRESUMED_SUCCESS)


@dataclass(frozen=True)
class Canary:
    """A mail-path canary: sent through SMTP, expected back through IMAP."""

    sent_at: datetime
    arrived_at: datetime | None = None


@dataclass(frozen=True)
class MailEvidence:
    """One classified NHS mail (canaries are not NHS mail and are not listed here).

    ``correlated`` is the submission it was correlated to, ``None`` when it concerns no
    known submission, or ``AMBIGUOUS``. ``ref`` names it in reasons (subject or
    Message-ID; never a body).
    """

    received_at: datetime
    class_: str
    correlated: SubmissionId | Literal["ambiguous"] | None = None
    captures: Mapping[str, str] = field(default_factory=dict)
    ref: str = ""


@dataclass(frozen=True)
class Evidence:
    """Everything known about one submission's evidence window ``[window_start, window_end]``.

    ``listening`` holds the instants of successful polls and completed IDLE cycles;
    instants outside the window are ignored, as are mails and canaries outside it.
    """

    submission_id: SubmissionId
    window_start: datetime
    window_end: datetime
    listening: Sequence[datetime]
    max_gap: timedelta
    canary_required: bool
    canaries: Sequence[Canary]
    mails: Sequence[MailEvidence]
    auth_broken_during_window: bool = False
    canary_max_delay: timedelta = timedelta(minutes=30)
    failure_classes: frozenset[str] = DEFAULT_FAILURE_CLASSES
    success_classes: frozenset[str] = DEFAULT_SUCCESS_CLASSES


@dataclass(frozen=True)
class Gap:
    """A stretch of the window with no recorded listening longer than allowed."""

    start: datetime
    end: datetime

    @property
    def length(self) -> timedelta:
        return self.end - self.start


@dataclass(frozen=True)
class Verdict:
    """The outcome, the human-readable reasons, and the captures of the deciding notices
    (the failure's reason text for ``failed``, the success notice's for ``confirmed``)."""

    kind: VerdictKind
    reasons: tuple[str, ...]
    captures: tuple[Mapping[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for the ledger's ``verdict_detail``."""
        return {
            "kind": self.kind.value,
            "reasons": list(self.reasons),
            "captures": [dict(c) for c in self.captures],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        return cls(
            kind=VerdictKind(data["kind"]),
            reasons=tuple(str(r) for r in data.get("reasons", ())),
            captures=tuple(
                {str(k): str(v) for k, v in c.items()} for c in data.get("captures", ())
            ),
        )


def verdict_due(now: datetime, deadline: datetime) -> bool:
    """Whether the evidence window has closed, so the verdict may be decided."""
    return now >= deadline


def _at(instant: datetime) -> str:
    return instant.astimezone(LONDON).strftime("%a %d %b %H:%M")


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest} min" if rest else f"{hours} h"


def _mail_name(mail: MailEvidence) -> str:
    where = f" ({mail.ref})" if mail.ref else ""
    return f"{mail.class_} mail received {_at(mail.received_at)}{where}"


def listening_gaps(
    listening: Sequence[datetime], start: datetime, end: datetime, max_gap: timedelta
) -> list[Gap]:
    """Every gap longer than ``max_gap`` in the listening record over ``[start, end]``.

    The edges count: from ``start`` to the first poll and from the last poll to ``end``.
    No poll at all is one gap covering the whole window.
    """
    points = [start, *sorted(t for t in listening if start <= t <= end), end]
    return [Gap(a, b) for a, b in pairwise(points) if b - a > max_gap]


def _in_window(instant: datetime, evidence: Evidence) -> bool:
    return evidence.window_start <= instant <= evidence.window_end


def _canary_reasons(evidence: Evidence) -> tuple[list[str], list[str]]:
    """(blocking reasons, supporting facts) about canaries."""
    sent = sorted(
        (c for c in evidence.canaries if _in_window(c.sent_at, evidence)), key=lambda c: c.sent_at
    )
    if not sent:
        return ["no mail-path canary was sent during the window"], []
    blocking: list[str] = []
    arrived: list[Canary] = []
    for canary in sent:
        due = canary.sent_at + evidence.canary_max_delay
        limit = _duration(evidence.canary_max_delay)
        if canary.arrived_at is None:
            if due <= evidence.window_end:
                blocking.append(f"canary sent {_at(canary.sent_at)} did not arrive within {limit}")
            # else: still in flight when the window closed; neither proof nor loss.
        elif canary.arrived_at > due:
            blocking.append(
                f"canary sent {_at(canary.sent_at)} arrived {_at(canary.arrived_at)}, "
                f"later than the {limit} allowed"
            )
        elif canary.arrived_at > evidence.window_end:
            blocking.append(
                f"canary sent {_at(canary.sent_at)} arrived only after the window closed"
            )
        else:
            arrived.append(canary)
    if not arrived and not blocking:
        blocking.append("no mail-path canary sent during the window had arrived when it closed")
    facts = [
        f"canary sent {_at(c.sent_at)} arrived {_at(c.arrived_at)}"
        for c in arrived
        if c.arrived_at is not None
    ]
    return blocking, facts


def decide(evidence: Evidence) -> Verdict:
    """The verdict for one submission's closed evidence window (precedence in the module doc)."""
    if evidence.window_end < evidence.window_start:
        raise ValueError("evidence window ends before it starts")
    me = evidence.submission_id
    mails = sorted(
        (m for m in evidence.mails if _in_window(m.received_at, evidence)),
        key=lambda m: m.received_at,
    )
    failures = [m for m in mails if m.class_ in evidence.failure_classes]
    successes = [m for m in mails if m.class_ in evidence.success_classes]
    mine_failed = [m for m in failures if m.correlated == me]
    mine_succeeded = [m for m in successes if m.correlated == me]
    # A notice we cannot attribute might be ours; it blocks any success we would infer.
    stray_failures = [m for m in failures if m.correlated is None or m.correlated == AMBIGUOUS]
    stray_successes = [m for m in successes if m.correlated is None or m.correlated == AMBIGUOUS]

    def attribution(mail: MailEvidence) -> str:
        if mail.correlated == AMBIGUOUS:
            return "could concern more than one submission"
        return "could not be correlated to any submission"

    if mine_failed and mine_succeeded:
        return Verdict(
            VerdictKind.UNKNOWN,
            (
                "conflicting notices: "
                + ", ".join(_mail_name(m) for m in mine_failed)
                + " and "
                + ", ".join(_mail_name(m) for m in mine_succeeded)
                + " both concern this submission; check with NHS England which holds",
            ),
            tuple(m.captures for m in mine_failed + mine_succeeded),
        )
    if mine_failed:
        return Verdict(
            VerdictKind.FAILED,
            tuple(f"failure notice: {_mail_name(m)}" for m in mine_failed),
            tuple(m.captures for m in mine_failed),
        )
    if mine_succeeded:
        if stray_failures:
            return Verdict(
                VerdictKind.UNKNOWN,
                tuple(
                    f"{_mail_name(m)} {attribution(m)}; it may concern this submission"
                    for m in stray_failures
                )
                + tuple(f"success notice: {_mail_name(m)}" for m in mine_succeeded),
                tuple(m.captures for m in stray_failures + mine_succeeded),
            )
        return Verdict(
            VerdictKind.CONFIRMED_SUCCESS,
            tuple(f"success notice: {_mail_name(m)}" for m in mine_succeeded),
            tuple(m.captures for m in mine_succeeded),
        )

    blocking: list[str] = [
        f"{_mail_name(m)} {attribution(m)}; it may concern this submission"
        for m in stray_failures + stray_successes
    ]
    window = f"{_at(evidence.window_start)} to {_at(evidence.window_end)}"
    polls = [t for t in evidence.listening if _in_window(t, evidence)]
    gaps = listening_gaps(
        evidence.listening, evidence.window_start, evidence.window_end, evidence.max_gap
    )
    limit = _duration(evidence.max_gap)
    if not polls:
        blocking.append(f"no successful poll or IDLE cycle was recorded from {window}")
    else:
        blocking.extend(
            f"listening gap of {_duration(g.length)} from {_at(g.start)} to {_at(g.end)} "
            f"exceeds {limit}"
            for g in gaps
        )
    if evidence.auth_broken_during_window:
        blocking.append("mailbox authentication failed during the window")
    canary_facts: list[str] = []
    if evidence.canary_required:
        canary_blocking, canary_facts = _canary_reasons(evidence)
        blocking.extend(canary_blocking)
    blocking.extend(
        f"{_mail_name(m)} matched no rule; classify it (`seftpilot rules test`) and fix the rules"
        for m in mails
        if m.class_ == UNMATCHED_CLASS
    )
    if blocking:
        return Verdict(VerdictKind.UNKNOWN, tuple(blocking))

    facts = [
        f"no failure notice arrived from {window}",
        f"listening unbroken: {len(polls)} polls, no gap over {limit}",
        *canary_facts,
    ]
    if mails:
        facts.append(f"all {len(mails)} NHS mails in the window matched a rule")
    return Verdict(VerdictKind.PRESUMED_SUCCESS, tuple(facts))
