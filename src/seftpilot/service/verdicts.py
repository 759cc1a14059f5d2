"""Verdicts in the shell: gather each closed evidence window, decide, record, act.

Owns ``VerdictJob`` (the watcher timer for evidence deadlines), ``gather_evidence`` (the
ledger's record turned into a ``core.verdict.Evidence``: listening coverage, NHS mail with
its classification and correlation, canaries), what follows a verdict (a successful one
moves the campaign on; ``failed`` retries on a later NHS day when the notice's rule says
``retry`` and attempts remain, else alerts and fails the campaign; ``unknown`` alerts and
blocks the campaign), ``resolve_submission`` for the operator, and the evidence timeline
``seftpilot submission show`` prints.

A window is decided once it has closed *and* a listening cycle has been recorded after its
deadline (the intake records a cycle only after handling everything it fetched, so every
notice that arrived inside the window has been classified and correlated by then). If no
cycle comes, it is decided anyway after ``max_listening_gap_minutes``: the gap then makes
it ``unknown``, as it should.

Must not decide anything itself (``core.verdict.decide`` does), talk to servers other than
through the alerts service, or change a submission except through ``LedgerStore``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from seftpilot.adapters.ledger_store import Notice, Submission
from seftpilot.core.calendar import nhs_day
from seftpilot.core.ledger import CampaignEvent, CampaignState, SubmissionState
from seftpilot.core.verdict import (
    AMBIGUOUS,
    DEFAULT_FAILURE_CLASSES,
    DEFAULT_SUCCESS_CLASSES,
    UNMATCHED_CLASS,
    Canary,
    Evidence,
    MailEvidence,
    Verdict,
    VerdictKind,
    decide,
    listening_gaps,
)
from seftpilot.errors import ClaimLost, ConfigError, LedgerError
from seftpilot.service.intake import account_name
from seftpilot.service.monitor import canaries_between
from seftpilot.service.runtime import Runtime
from seftpilot.service.submit import alert, clear

log = logging.getLogger(__name__)

S = SubmissionState
FAILURE_CLASSES = DEFAULT_FAILURE_CLASSES
SUCCESS_CLASSES = DEFAULT_SUCCESS_CLASSES
NOTICE_CLASSES = FAILURE_CLASSES | SUCCESS_CLASSES


@dataclass
class VerdictOutcome:
    """What happened to one submission at its deadline (or when the operator resolved it)."""

    submission_id: int
    agreement: str
    verdict: str
    reasons: list[str]
    next_step: str
    retry_id: int | None = None
    captures: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# -- evidence --------------------------------------------------------------------------------
def _max_gap(runtime: Runtime) -> timedelta:
    return timedelta(minutes=runtime.settings.submission.max_listening_gap_minutes)


def _senders(runtime: Runtime, nic: str) -> list[str]:
    try:
        return [s.lower() for s in runtime.settings.agreement_for(nic).nhs_senders]
    except ConfigError:  # an agreement since removed from the settings: the defaults
        return ["nhsdigital.nhs.uk", "nhs.net", "england.nhs.uk"]


def is_nhs_sender(address: str | None, senders: list[str]) -> bool:
    domain = (address or "").rpartition("@")[2].lower().strip(" >")
    return any(domain == s or domain.endswith("." + s) for s in senders)


def nhs_notices(runtime: Runtime, sub: Submission, start: datetime, end: datetime) -> list[Notice]:
    """Mail in ``[start, end]`` that counts as NHS mail for ``sub``'s agreement: from an NHS
    sender, or classified as a submission notice (a colleague's forward of one)."""
    senders = _senders(runtime, sub.agreement)
    return [
        n
        for n in runtime.ledger.notices_between(start, end)
        if is_nhs_sender(n.from_addr, senders) or (n.class_ or "") in NOTICE_CLASSES
    ]


def _canaries(runtime: Runtime, start: datetime, end: datetime) -> tuple[bool, list[Canary]]:
    """(required, canaries sent in the window): required whenever ``canary.enabled``."""
    if not runtime.settings.canary.enabled:
        return False, []
    return True, canaries_between(runtime, start, end)


def gather_evidence(
    runtime: Runtime, sub: Submission, *, until: datetime | None = None
) -> tuple[Evidence, dict[str, Any]]:
    """``sub``'s evidence window as ``Evidence`` plus a JSON-ready summary (the timeline).

    ``until`` cuts an open window short (``submission show`` before the deadline).
    """
    if sub.uploaded_at is None or sub.evidence_deadline is None:
        raise LedgerError(f"submission #{sub.id} has no evidence window (it is {sub.state})")
    settings = runtime.settings
    start = sub.uploaded_at
    end = sub.evidence_deadline if until is None else min(until, sub.evidence_deadline)
    end = max(end, start)
    account, folder = account_name(settings.imap), settings.imap.folder
    coverage = runtime.mail.coverage(account, folder, start, end)
    notices = nhs_notices(runtime, sub, start, end)
    required, canaries = _canaries(runtime, start, end)
    max_gap = _max_gap(runtime)
    mails = [
        MailEvidence(
            received_at=n.received_at,
            class_=n.class_ or UNMATCHED_CLASS,
            correlated=AMBIGUOUS if n.ambiguous else n.submission_id,
            captures={str(k): str(v) for k, v in n.captures.items()},
            ref=n.subject or n.message_id or f"mail #{n.mail_id}",
        )
        for n in notices
    ]
    evidence = Evidence(
        submission_id=sub.id,
        window_start=start,
        window_end=end,
        listening=coverage.timestamps,
        max_gap=max_gap,
        canary_required=required,
        canaries=canaries,
        mails=mails,
        # An authentication failure stops the intake: it shows as a listening gap.
        auth_broken_during_window=False,
        canary_max_delay=timedelta(minutes=settings.canary.max_delay_minutes),
    )
    gaps = listening_gaps(coverage.timestamps, start, end, max_gap)
    summary: dict[str, Any] = {
        "window": {
            "start": start.isoformat(),
            "end": sub.evidence_deadline.isoformat(),
            "observed_until": end.isoformat(),
        },
        "listening": {
            "account": account,
            "folder": folder,
            "cycles": len(coverage.timestamps),
            "first": coverage.timestamps[0].isoformat() if coverage.timestamps else None,
            "last": coverage.timestamps[-1].isoformat() if coverage.timestamps else None,
            "largest_gap_minutes": round(coverage.largest_gap.total_seconds() / 60, 1),
            "max_gap_minutes": settings.submission.max_listening_gap_minutes,
            "gaps": [
                {
                    "start": g.start.isoformat(),
                    "end": g.end.isoformat(),
                    "minutes": round(g.length.total_seconds() / 60, 1),
                }
                for g in gaps
            ],
        },
        "canaries": {
            "required": required,
            "sent": len(canaries),
            "arrived": sum(1 for c in canaries if c.arrived_at is not None),
        },
        "mails": [
            {
                "mail_id": n.mail_id,
                "received_at": n.received_at.isoformat(),
                "from": n.from_addr,
                "subject": n.subject,
                "rule": n.rule,
                "class": n.class_,
                "action": n.action,
                "correlated_to": n.submission_id,
                "ambiguous": n.ambiguous,
                "attributed": n.correlated,
            }
            for n in notices
        ],
    }
    return evidence, summary


# -- deciding ----------------------------------------------------------------------------------
def ready_at(runtime: Runtime, sub: Submission) -> datetime | None:
    """When ``sub``'s verdict may be decided (see the module docstring)."""
    if sub.state != S.UPLOADED or sub.evidence_deadline is None:
        return None
    deadline = sub.evidence_deadline
    settings = runtime.settings
    now = runtime.clock.now()
    if now >= deadline:
        after = runtime.mail.coverage(
            account_name(settings.imap), settings.imap.folder, deadline, max(now, deadline)
        )
        if after.timestamps:
            return deadline
    return deadline + _max_gap(runtime)


def decide_due(runtime: Runtime, now: datetime | None = None) -> list[VerdictOutcome]:
    """Decide and record every verdict that is due now; act on each."""
    now = now or runtime.clock.now()
    outcomes = []
    for sub in runtime.ledger.list_submissions(states=[S.UPLOADED]):
        when = ready_at(runtime, sub)
        if when is None or when > now:
            continue
        try:
            outcomes.append(settle(runtime, sub, now))
        except ClaimLost:
            log.info("submission #%s was decided by another worker", sub.id)
    return outcomes


def settle(runtime: Runtime, sub: Submission, now: datetime) -> VerdictOutcome:
    """Decide ``sub``'s verdict from its evidence, record it, and act on it."""
    evidence, summary = gather_evidence(runtime, sub)
    verdict = decide(evidence)
    detail = {**verdict.to_dict(), "evidence": summary}
    sub = runtime.ledger.record_verdict(sub, verdict.kind.value, at=now, detail=detail)
    log.info("submission #%s: %s", sub.id, verdict.kind.value)
    outcome = VerdictOutcome(
        sub.id,
        sub.agreement,
        verdict.kind.value,
        list(verdict.reasons),
        "",
        captures=[dict(c) for c in verdict.captures],
    )
    if verdict.kind.successful:
        outcome.next_step = advance(runtime, sub, now) or "nothing: the pool is updated"
    elif verdict.kind == VerdictKind.FAILED:
        actions = {
            n.action or ""
            for n in nhs_notices(runtime, sub, evidence.window_start, evidence.window_end)
            if (n.class_ or "") in FAILURE_CLASSES and n.submission_id == sub.id
        }
        outcome.next_step, outcome.retry_id = after_failure(
            runtime, sub, now, retry="retry" in actions and "alert" not in actions, verdict=verdict
        )
    else:
        outcome.next_step = (
            "the operator decides: `seftpilot submission show "
            f"{sub.id}`, then `seftpilot submission resolve {sub.id} --outcome "
            "success|failed --note TEXT`"
        )
        alert(
            runtime,
            f"verdict-unknown:{sub.id}",
            f"{sub.agreement}: verdict unknown for submission #{sub.id}",
            _verdict_text(sub, verdict, outcome.next_step)
            + "\n\nThe campaign's next step waits until this is resolved.",
            severity="high",
        )
        advance(runtime, sub, now)
    return outcome


def _verdict_text(sub: Submission, verdict: Verdict, next_step: str) -> str:
    lines = [
        f"Submission #{sub.id} ({sub.action}, {sub.row_count} rows, attempt {sub.attempt}) "
        f"uploaded {sub.uploaded_at:%a %d %b %H:%M} UTC as {sub.file_name}: "
        f"{verdict.kind.value}.",
        "",
        "Why:",
        *(f"  - {r}" for r in verdict.reasons),
    ]
    for captures in verdict.captures:
        if captures:
            lines += ["", "What NHS England said:"]
            lines += [f"  {k}: {v}" for k, v in captures.items()]
    lines += ["", f"Next: {next_step}"]
    return "\n".join(lines)


def advance(runtime: Runtime, sub: Submission, now: datetime) -> str:
    """Move ``sub``'s campaign on (complete, block, unblock, next step due today)."""
    if sub.campaign_id is None:
        return ""
    campaign, made_due = runtime.ledger.advance_campaign(
        sub.campaign_id, at=now, due_on=nhs_day(now)
    )
    if made_due:
        step = made_due[0]
        return (
            f"campaign #{campaign.id}: step {step.campaign_step} ({step.action}) is due "
            f"(submission #{step.id})"
        )
    return f"campaign #{campaign.id} is {campaign.state}"


def after_failure(
    runtime: Runtime,
    sub: Submission,
    now: datetime,
    *,
    retry: bool,
    verdict: Verdict | None = None,
    tell: bool = True,
) -> tuple[str, int | None]:
    """A failed submission: retry on a later NHS day (bounded), or stop and alert.

    Returns (next step, the retry's submission id or None).
    """
    ledger = runtime.ledger
    try:
        max_retries = runtime.settings.agreement_for(sub.agreement).max_retries
    except ConfigError:
        max_retries = 0
    if retry and sub.attempt <= max_retries:
        new = ledger.retry(sub, at=now)
        today = nhs_day(now)
        later = sub.nhs_day + timedelta(days=1) if sub.nhs_day else today
        due_on = max(today, later)
        if new.campaign_id is not None:
            ledger.advance_campaign(new.campaign_id, at=now, due_on=due_on)
        else:
            ledger.make_due(new, at=now, due_on=due_on)
        left = sub.row_count - new.row_count
        dropped = f" without the {left} row(s) NHS England rejected" if left else ""
        return (
            f"retry as submission #{new.id} (attempt {new.attempt} of {max_retries + 1})"
            f"{dropped} on {due_on} or the next upload day after it",
            new.id,
        )
    if retry:
        why = f"no retry left ({sub.attempt} attempt(s), agreement.max_retries = {max_retries})"
    else:
        why = "the notice's rule asks for the operator (action alert)"
    next_step = (
        f"{why}: read NHS England's reasons, fix the study export, and plan again "
        "(`seftpilot plan TARGET --apply`)"
    )
    if sub.campaign_id is not None:
        campaign = ledger.get_campaign(sub.campaign_id)
        if campaign.state in (CampaignState.RUNNING, CampaignState.BLOCKED):
            ledger.transition_campaign(
                campaign, CampaignEvent.FAIL, at=now, detail={"submission_id": sub.id}
            )
            next_step += f"; campaign #{campaign.id} has stopped"
    if tell:
        text = (
            _verdict_text(sub, verdict, next_step)
            if verdict is not None
            else f"Submission #{sub.id} failed. Next: {next_step}"
        )
        alert(
            runtime,
            f"submission-failed:{sub.id}",
            f"{sub.agreement}: submission #{sub.id} failed",
            text,
            severity="high",
        )
    return next_step, None


def resolve_submission(
    runtime: Runtime, sub_id: int, *, success: bool, note: str, retry: bool = False
) -> VerdictOutcome:
    """The operator settles an ``unknown`` verdict (``--retry``: a failed one goes again)."""
    if not note.strip():
        raise LedgerError(
            "say why (--note): the ledger keeps it beside the evidence",
            hint='e.g. --note "NHS England confirmed by phone that the file was processed"',
        )
    now = runtime.clock.now()
    ledger = runtime.ledger
    sub = ledger.get_submission(sub_id)
    if sub.state != S.UNKNOWN:
        raise LedgerError(
            f"submission #{sub.id} is {sub.state}; only an unknown verdict is resolved by hand",
            hint="`seftpilot submission show ID` shows its verdict and evidence",
        )
    sub = ledger.resolve(sub, success=success, at=now, note=note)
    clear(runtime, f"verdict-unknown:{sub.id}", f"resolved by the operator: {note}")
    outcome = VerdictOutcome(sub.id, sub.agreement, str(sub.verdict), [note], "")
    if success:
        outcome.next_step = advance(runtime, sub, now) or "nothing: the pool is updated"
    else:
        # Unblock first (the unknown is gone), then fail or retry the step.
        advance(runtime, sub, now)
        outcome.next_step, outcome.retry_id = after_failure(
            runtime, ledger.get_submission(sub.id), now, retry=retry, tell=False
        )
    return outcome


# -- the timer -----------------------------------------------------------------------------
class VerdictJob:
    """Watcher job: decides each submission's verdict when its evidence window closes."""

    name = "verdicts"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.last_outcomes: list[VerdictOutcome] = []

    def next_due(self, now: datetime) -> datetime | None:
        times = [
            t
            for sub in self.runtime.ledger.list_submissions(states=[S.UPLOADED])
            if (t := ready_at(self.runtime, sub)) is not None
        ]
        return min(times) if times else None

    def run(self, now: datetime) -> None:
        self.last_outcomes = decide_due(self.runtime, now)


# -- the timeline (submission show) ------------------------------------------------------------
def timeline(runtime: Runtime, sub: Submission) -> dict[str, Any]:
    """Everything ``submission show`` prints: state, verdict, reasons, evidence, events."""
    doc: dict[str, Any] = sub.to_dict()
    detail = sub.verdict_detail or {}
    doc["reasons"] = list(detail.get("reasons", []))
    doc["captures"] = list(detail.get("captures", []))
    if sub.uploaded_at is not None and sub.evidence_deadline is not None:
        if "evidence" in detail:
            doc["evidence"] = detail["evidence"]
        else:
            _, doc["evidence"] = gather_evidence(runtime, sub, until=runtime.clock.now())
    else:
        doc["evidence"] = None
    doc["events"] = [
        {"at": e["at"], "kind": e["kind"], "detail": e["detail"]}
        for e in runtime.store.events("submission", sub.id)
    ]
    return doc
