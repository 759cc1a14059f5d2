"""The upload workflow: reconcile, check the day, pick, render, pre-flight, claim, upload, record.

Owns ``submit_next`` (one due step for one agreement, by hand or from the service loop),
``SubmitJob`` (the watcher timer that calls it when an upload may happen), the manual
transport's ``confirm_upload`` and the one place this capability raises operator alerts
(``alert``). The order of ``submit_next`` is the reliability argument:

1. **Reconcile first.** A submission left ``uploading`` (the process died mid-upload) or
   ``upload_unknown`` (the connection dropped) is settled by listing the remote folder:
   the file there with the claimed size -> ``uploaded``; absent -> back to ``due``; anything
   else -> the operator is alerted and nothing moves. Never re-upload blind.
2. **The day must allow it**: a working day, inside ``submission.upload_window_*``, no upload
   yet on this NHS day for the agreement (the ledger's unique index enforces it as well).
3. **Pick** the next due submission: campaigns advance step by step (an ADD waits for the
   DELETE before it to reach a successful verdict); a retry only on a later NHS day.
4. **Render** the stored rows with the profile into a 0600 work file under its exact NHS
   name and **pre-flight** it with the validator; any problem refuses the upload and alerts.
5. **Claim** in the ledger (conditional UPDATE, NHS day recorded) *before* the side effect,
   **upload**, then **record** the upload time and the evidence deadline.

``dry_run`` says what would happen and changes nothing (no ledger write, no upload, no
mail; it may list the remote folder, which changes nothing either).

Must not decide verdicts (``service.verdicts``), parse mail, or talk to a server except
through a ``Transport``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seftpilot.adapters.cohort_files import (
    builtin_profiles,
    load_profile,
    validate_file,
    write_file_atomic,
)
from seftpilot.adapters.ledger_store import LedgerStore, RefRow, Submission
from seftpilot.adapters.store import Store
from seftpilot.config import Agreement
from seftpilot.core.calendar import (
    evidence_deadline,
    is_working_day,
    next_upload_opportunity,
    nhs_day,
)
from seftpilot.core.cohort import render_rows
from seftpilot.core.cohort_profile import Profile, header_key
from seftpilot.core.ledger import SubmissionState, due_steps
from seftpilot.errors import (
    ClaimLost,
    ConfigError,
    DailyLimitReached,
    InputError,
    LedgerError,
    SeftpilotError,
    TransportError,
)
from seftpilot.service.alerts import clear_alert, raise_alert
from seftpilot.service.runtime import Runtime
from seftpilot.service.transports import Transport, transport_for

if TYPE_CHECKING:
    from seftpilot.adapters.sftp import RemoteFile

log = logging.getLogger(__name__)

S = SubmissionState

# Outcome statuses. The last three are problems (the CLI exits 1 on them).
UPLOADED = "uploaded"  # the file is on SEFT; its evidence window is open
AWAITING_OPERATOR = "awaiting_operator"  # manual transport: upload by hand, then confirm
WOULD_UPLOAD = "would_upload"  # dry run
NOTHING_DUE = "nothing_due"
NOT_NOW = "not_now"  # outside the window, not a working day, or already uploaded today
REFUSED = "refused"  # the file failed its pre-flight, or the remote name is taken
BLOCKED = "blocked"  # an earlier upload's fate is unknown and could not be settled
FAILED = "failed"  # the transport failed this time; the ledger says what is known
PROBLEMS = frozenset({REFUSED, BLOCKED, FAILED})

AWAITING_EVENT = "submission.awaiting_operator"
RECONCILED_EVENT = "submission.reconciled"
# Noted just before the transport is asked to send: a crash before it sent nothing.
SENDING_EVENT = "submission.sending"
# A crash mid-upload, and the file is neither in the upload folder nor half there under its
# temporary name: NHS England may have collected it while seftpilot was down.
IN_DOUBT_EVENT = "submission.in_doubt"


@dataclass
class SubmitOutcome:
    """What ``submit_next`` did (or, dry, would do) for one agreement."""

    agreement: str
    status: str
    message: str
    submission_id: int | None = None
    action: str | None = None
    rows: int | None = None
    file_name: str | None = None
    transport: str | None = None
    nhs_day: date | None = None
    uploaded_at: datetime | None = None
    evidence_deadline: datetime | None = None
    next_opportunity: datetime | None = None
    dry_run: bool = False
    reconciled: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status not in PROBLEMS

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = value.isoformat() if isinstance(value, date | datetime) else value
        out["ok"] = self.ok
        return out


# -- alerts and operator mail --------------------------------------------------------------
def alert(
    runtime: Runtime, key: str, subject: str, text: str, *, severity: str = "warning"
) -> None:
    """Tell the operator something that cannot wait (``service.alerts``: one alert per
    ``key``, deduplicated and reminded there; a failed send stays pending, never raises)."""
    raise_alert(runtime, key, subject, text, severity=severity)


def clear(runtime: Runtime, key: str, text: str) -> None:
    """The condition behind alert ``key`` is over (the operator hears so if told of it)."""
    clear_alert(runtime, key, text)


def mail_operator(runtime: Runtime, subject: str, text: str) -> None:
    """Mail ``operator.emails`` (instructions, alerts); ConfigError when nobody is set."""
    from seftpilot.adapters.smtp import build_message

    recipients = runtime.settings.operator.emails
    if not recipients:
        raise ConfigError(
            "operator.emails is empty: seftpilot has nobody to tell",
            key="operator.emails",
            hint="add the operator's address(es) to [operator] emails",
        )
    message = build_message(
        recipients,
        subject,
        text,
        sender=runtime.settings.smtp.from_address,
        now=runtime.clock.now(),
    )
    runtime.mailer.send(message)


def make_transport(runtime: Runtime, agreement: Agreement) -> Transport:
    """The agreement's configured transport, with paths read against the settings file."""
    if agreement.upload.transport == "manual" and not runtime.settings.operator.emails:
        raise ConfigError(
            f"agreement {agreement.nic} uploads by hand (upload.transport = 'manual') but "
            "operator.emails is empty, so nobody would be told to upload",
            key="operator.emails",
            hint="add the operator's address to [operator] emails",
        )
    return transport_for(
        agreement,
        notify=lambda subject, text: mail_operator(runtime, subject, text),
        resolve=runtime.settings.resolve,
    )


# -- the ledger's view -------------------------------------------------------------------
def _events(runtime: Runtime, sub_id: int) -> list[dict[str, Any]]:
    return runtime.store.events("submission", sub_id)


def _last_claim(runtime: Runtime, sub: Submission) -> dict[str, Any] | None:
    claims = [e for e in _events(runtime, sub.id) if e["kind"] == "submission.claim"]
    return claims[-1] if claims else None


def _note(runtime: Runtime, sub: Submission, kind: str, at: datetime, **detail: Any) -> None:
    with runtime.store.transaction() as conn:
        Store.append_event(
            conn, kind, at=at, subject_type="submission", subject_id=sub.id, detail=detail
        )


def _since_claim(runtime: Runtime, sub: Submission, kind: str) -> bool:
    """An event of ``kind`` was noted since the submission's latest claim."""
    events = _events(runtime, sub.id)
    claims = [i for i, e in enumerate(events) if e["kind"] == "submission.claim"]
    return bool(claims) and any(e["kind"] == kind for e in events[claims[-1] :])


def awaiting_operator(runtime: Runtime, sub: Submission) -> bool:
    """A manual upload whose instructions went out since its (latest) claim."""
    return _since_claim(runtime, sub, AWAITING_EVENT)


def asked_if_received(runtime: Runtime, sub: Submission) -> bool:
    """The operator was asked whether NHS England received this upload (since its claim)."""
    return _since_claim(runtime, sub, IN_DOUBT_EVENT)


def _maybe_collected(runtime: Runtime, transport: Transport, sub: Submission, name: str) -> bool:
    """After a crash with ``name`` absent: could the upload have finished, and NHS England
    collected the file since? Not if sending never started, nor while the half-sent
    temporary file is still there (the rename that hands the file to NHS never happened).
    A transport that cannot show its temporary file says no, as before.
    """
    find_partial = getattr(transport, "find_partial", None)
    if find_partial is None or not _since_claim(runtime, sub, SENDING_EVENT):
        return False
    return find_partial(name) is None


def last_upload_day(ledger: LedgerStore, nic: str) -> date | None:
    """The NHS day of the agreement's latest upload, including one claimed and in doubt.

    A submission sent back to ``due`` keeps its day but is not counted: nothing of it
    reached NHS England, so it may try again that same day.
    """
    days = [
        s.nhs_day
        for s in ledger.list_submissions(nic)
        if s.nhs_day is not None
        and (s.uploaded_at is not None or s.state in (S.UPLOADING, S.UPLOAD_UNKNOWN))
    ]
    return max(days) if days else None


# -- rendering -----------------------------------------------------------------------------
def profile_for(runtime: Runtime, agreement: Agreement) -> Profile:
    name = agreement.profile
    if name in builtin_profiles():
        return load_profile(name)
    return load_profile(runtime.settings.resolve(Path(name)))


def _field_lookup(profile: Profile) -> dict[str, str]:
    lookup: dict[str, str] = {}
    for spec in profile.fields:
        for candidate in (spec.name, spec.header, *spec.aliases):
            lookup.setdefault(header_key(candidate), spec.name)
    return lookup


def _records(profile: Profile, rows: Iterator[RefRow]) -> Iterator[Mapping[str, str]]:
    """Stored rows keyed by the profile's field names (whatever spelling they were kept in)."""
    lookup = _field_lookup(profile)
    for row in rows:
        record: dict[str, str] = {}
        for key, value in (row.data or {}).items():
            name = lookup.get(header_key(key))
            if name is not None and value:
                record.setdefault(name, value)
        record[profile.unique_field] = row.unique_reference
        yield record


@dataclass(frozen=True)
class Prepared:
    path: Path
    file_name: str
    size: int
    sha256: str
    problems: list[dict[str, Any]]
    problem_counts: dict[str, int]


def work_dir(runtime: Runtime, sub_id: int) -> Path:
    return (
        runtime.settings.resolve(runtime.settings.state_dir) / "outgoing" / f"submission-{sub_id}"
    )


def prepare(runtime: Runtime, agreement: Agreement, sub: Submission) -> Prepared:
    """Render ``sub``'s stored rows into its 0600 work file and pre-flight it."""
    profile = profile_for(runtime, agreement)
    file_name = profile.file_name(agreement.nic)
    folder = work_dir(runtime, sub.id)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.parent.chmod(0o700)
    except OSError as exc:
        raise InputError(
            f"cannot create the work folder {folder}: {exc.strerror or exc}",
            hint="check the state directory is writable by this user",
        ) from None
    path = folder / file_name
    size, sha256 = write_file_atomic(
        path, render_rows(profile, _records(profile, runtime.ledger.rows(sub.id)), sub.action)
    )
    report = validate_file(path, profile, agreement.nic)
    problems: list[dict[str, Any]] = []
    if not report.valid:
        problems = [p.to_json() for p in report.problems]
    elif report.rows != sub.row_count:
        problems = [
            {
                "row": None,
                "column": None,
                "code": "row_count_mismatch",
                "message": f"the file has {report.rows} rows, the ledger holds {sub.row_count}",
            }
        ]
    elif report.action not in (None, sub.action):
        problems = [
            {
                "row": None,
                "column": None,
                "code": "mixed_status",
                "message": f"the file says {report.action}, the submission is {sub.action}",
            }
        ]
    counts = dict(report.problem_counts) if problems else {}
    return Prepared(path, file_name, size, sha256, problems, counts)


def discard_work(runtime: Runtime, sub_id: int) -> None:
    """The work file holds identifiers: it goes as soon as it has served."""
    shutil.rmtree(work_dir(runtime, sub_id), ignore_errors=True)


# -- reconciliation ------------------------------------------------------------------------
def _expected_size(runtime: Runtime, agreement: Agreement, sub: Submission) -> int:
    claim = _last_claim(runtime, sub)
    if claim is not None and isinstance(claim["detail"].get("size"), int):
        return int(claim["detail"]["size"])
    # A claim recorded without its size: rendering is deterministic, so render again.
    prepared = prepare(runtime, agreement, sub)
    discard_work(runtime, sub.id)
    return prepared.size


def _claimed_at(runtime: Runtime, sub: Submission, default: datetime) -> datetime:
    claim = _last_claim(runtime, sub)
    return datetime.fromisoformat(claim["at"]) if claim is not None else default


def _settle_found(
    runtime: Runtime,
    agreement: Agreement,
    sub: Submission,
    remote: RemoteFile | None,
    *,
    now: datetime,
    holidays: frozenset[date],
) -> tuple[str, Submission]:
    """Record what a listing proved about an ``upload_unknown`` submission.

    Returns ``("uploaded" | "absent" | "mismatch", submission)``.
    """
    ledger = runtime.ledger
    if remote is None:
        sub = ledger.record_not_sent(
            sub, at=now, reason="the remote folder does not hold the file", proved_absent=True
        )
        clear(
            runtime,
            f"upload-unknown:{sub.id}",
            f"submission #{sub.id}: the remote folder proves nothing arrived; it is due again",
        )
        return "absent", sub
    expected = _expected_size(runtime, agreement, sub)
    if remote.size != expected:
        return "mismatch", sub
    # The window opens at the claim: the upload happened between the claim and now, and
    # an earlier start only asks for more listening evidence, never less.
    uploaded_at = _claimed_at(runtime, sub, now)
    sub = ledger.record_upload(
        sub,
        at=uploaded_at,
        evidence_deadline=evidence_deadline(
            uploaded_at, runtime.settings.submission.verdict_deadline, holidays
        ),
        found_remote=True,
    )
    _note(runtime, sub, RECONCILED_EVENT, now, size=remote.size, remote_mtime=remote.mtime)
    clear(runtime, f"upload-unknown:{sub.id}", f"submission #{sub.id}: the file is on SEFT")
    return "uploaded", sub


def _reconcile(
    runtime: Runtime,
    agreement: Agreement,
    transport: Transport,
    *,
    now: datetime,
    holidays: frozenset[date],
    dry_run: bool,
    outcome: SubmitOutcome,
) -> SubmitOutcome | None:
    """Settle every submission whose upload fate is unknown. Returns an outcome when the
    agreement must stop here (awaiting the operator, or still in doubt), else None."""
    ledger = runtime.ledger
    nic = agreement.nic
    for listed in ledger.list_submissions(nic, states=[S.UPLOADING, S.UPLOAD_UNKNOWN]):
        sub = listed
        if not transport.listable:
            if sub.state == S.UPLOADING and not awaiting_operator(runtime, sub):
                if dry_run:
                    outcome.status = WOULD_UPLOAD
                    outcome.submission_id = sub.id
                    outcome.message = (
                        f"would place submission #{sub.id} in the outbox again and mail the "
                        "operator (its instructions were never confirmed sent)"
                    )
                    return outcome
                return _manual_put(runtime, agreement, transport, sub, now=now, outcome=outcome)
            outcome.status = AWAITING_OPERATOR
            outcome.submission_id = sub.id
            outcome.file_name = sub.file_name
            outcome.message = (
                f"submission #{sub.id} waits for the operator to upload it by hand and run "
                f"`seftpilot submission confirm {sub.id}`"
            )
            return outcome
        name = sub.file_name or profile_for(runtime, agreement).file_name(nic)
        try:
            remote = transport.find(name)
            doubt = remote is None and (
                asked_if_received(runtime, sub)
                # Crash or drop alike: a transfer that may have finished may have been
                # collected, so absence proves nothing unless the half file is still there.
                or _maybe_collected(runtime, transport, sub, name)
            )
        except TransportError as exc:
            outcome.status = BLOCKED
            outcome.submission_id = sub.id
            outcome.message = (
                f"submission #{sub.id} is {sub.state}: cannot list the remote folder to "
                f"settle it ({exc.message}); nothing is uploaded until it is settled"
            )
            if not dry_run:
                if sub.state == S.UPLOADING:
                    ledger.record_upload_lost(sub, at=now, reason="found mid-upload at start")
                alert(
                    runtime,
                    f"upload-unknown:{sub.id}",
                    f"{nic}: upload of submission #{sub.id} in doubt, remote unreachable",
                    f"{outcome.message}\n\n{exc}\n\nseftpilot retries the listing on its next "
                    "run; fix the connection (`seftpilot check --connect`).",
                )
            return outcome
        if dry_run:
            found = "absent" if remote is None else f"present, {remote.size} bytes"
            outcome.reconciled.append({"submission_id": sub.id, "remote": found})
            outcome.status = BLOCKED if remote is not None else WOULD_UPLOAD
            outcome.submission_id = sub.id
            outcome.message = (
                f"would settle submission #{sub.id} ({sub.state}): the remote {name} is {found}"
            )
            return outcome
        if sub.state == S.UPLOADING:
            sub = ledger.record_upload_lost(
                sub, at=now, reason="found mid-upload at start: the process stopped"
            )
        if doubt:
            # Absent is not proof here: never upload again blind, ask.
            if not asked_if_received(runtime, sub):
                _note(runtime, sub, IN_DOUBT_EVENT, now, file_name=name)
            outcome.status = BLOCKED
            outcome.submission_id = sub.id
            outcome.message = (
                f"submission #{sub.id}: seftpilot stopped while uploading {name}, and SEFT's "
                "upload folder holds neither the file nor its half-sent temporary copy: NHS "
                "England may already have collected it. Nothing is uploaded until you say"
            )
            alert(
                runtime,
                f"upload-unknown:{sub.id}",
                f"{nic}: did NHS England receive submission #{sub.id}?",
                f"{outcome.message}.\n\nCheck SEFT's web UI (or NHS England's next notice), "
                f"then either `seftpilot submission confirm {sub.id} --at <when it was "
                f"uploaded>` (it arrived) or `seftpilot submission confirm {sub.id} "
                "--not-sent` (it did not; it will be uploaded again).",
            )
            return outcome
        result, sub = _settle_found(runtime, agreement, sub, remote, now=now, holidays=holidays)
        outcome.reconciled.append({"submission_id": sub.id, "result": result})
        if result == "mismatch":
            assert remote is not None
            outcome.status = BLOCKED
            outcome.submission_id = sub.id
            outcome.message = (
                f"submission #{sub.id}: the remote {name} has {remote.size} bytes, not the "
                "size that was being uploaded; nothing more is uploaded until the operator "
                "finds out what it is"
            )
            alert(
                runtime,
                f"upload-unknown:{sub.id}",
                f"{nic}: remote {name} does not match submission #{sub.id}",
                f"{outcome.message}.\n\nIf it is a half file, remove it on SEFT and run "
                f"`seftpilot submit`; it will be uploaded again.",
            )
            return outcome
        log.info("submission #%s reconciled: %s", sub.id, result)
    return None


# -- the workflow --------------------------------------------------------------------------
def _due_candidates(
    runtime: Runtime, agreement: Agreement, *, now: datetime, today: date, dry_run: bool
) -> list[Submission]:
    ledger = runtime.ledger
    extra: list[Submission] = []
    for campaign in ledger.list_campaigns(agreement.nic, active=True):
        if dry_run:
            state = "running" if campaign.state == "planned" else campaign.state
            for view in due_steps(state, ledger.campaign_steps(campaign.id)):
                extra.append(ledger.get_submission(view.submission_id))
        else:
            ledger.advance_campaign(campaign.id, at=now, due_on=today)
    due = [
        s
        for s in ledger.list_submissions(agreement.nic, states=[S.DUE])
        if s.due_on is None or s.due_on <= today
    ]
    return sorted(
        due + extra,
        key=lambda s: (
            0 if s.nhs_day == today else 1,
            s.campaign_id or 0,
            s.campaign_step or 0,
            s.id,
        ),
    )


def _problem_summary(prepared: Prepared) -> str:
    counts = ", ".join(f"{code} x{n}" for code, n in sorted(prepared.problem_counts.items()))
    first = prepared.problems[:5]
    where = "; ".join(
        f"{p['code']} at row {p['row'] if p['row'] is not None else '-'}"
        + (f", column {p['column']}" if p["column"] else "")
        for p in first
    )
    return f"{counts or where}" + (f" (first: {where})" if counts else "")


def _manual_put(
    runtime: Runtime,
    agreement: Agreement,
    transport: Transport,
    sub: Submission,
    *,
    now: datetime,
    outcome: SubmitOutcome,
    prepared: Prepared | None = None,
) -> SubmitOutcome:
    """Hand a claimed submission to the operator: outbox copy + instructions by mail."""
    try:
        if prepared is None:
            prepared = prepare(runtime, agreement, sub)
        transport.put(prepared.path, prepared.file_name, submission_id=sub.id)
    except SeftpilotError as exc:
        outcome.status = FAILED
        outcome.submission_id = sub.id
        outcome.message = (
            f"submission #{sub.id} is claimed but the operator could not be told how to "
            f"upload it: {exc.message}; the next run tries again"
        )
        return outcome
    finally:
        discard_work(runtime, sub.id)
    _note(runtime, sub, AWAITING_EVENT, now, transport=transport.name, size=prepared.size)
    outcome.status = AWAITING_OPERATOR
    outcome.submission_id = sub.id
    outcome.file_name = prepared.file_name
    outcome.message = (
        f"submission #{sub.id} is in the outbox and the operator has been mailed: upload "
        f"{prepared.file_name} in SEFT, then run `seftpilot submission confirm {sub.id}`"
    )
    return outcome


def submit_next(
    runtime: Runtime,
    agreement: Agreement,
    *,
    dry_run: bool = False,
    transport: Transport | None = None,
) -> SubmitOutcome:
    """Do the next due upload step for ``agreement`` if today allows it (module docstring)."""
    settings = runtime.settings
    ledger = runtime.ledger
    now = runtime.clock.now()
    today = nhs_day(now)
    holidays = runtime.holidays(today)
    transport = transport or make_transport(runtime, agreement)
    outcome = SubmitOutcome(
        agreement.nic, NOTHING_DUE, "", dry_run=dry_run, transport=transport.name
    )

    # 1. Settle every upload in doubt before anything else.
    stop = _reconcile(
        runtime,
        agreement,
        transport,
        now=now,
        holidays=holidays,
        dry_run=dry_run,
        outcome=outcome,
    )
    if stop is not None:
        return stop

    # 2. Does today allow an upload?
    window = settings.submission
    last = last_upload_day(ledger, agreement.nic)
    opportunity = next_upload_opportunity(
        now, window.upload_window_start, window.upload_window_end, holidays, last
    )
    if opportunity > now:
        outcome.status = NOT_NOW
        outcome.next_opportunity = opportunity
        if last == today:
            why = f"{agreement.nic} already has an upload on NHS day {today}"
        elif not is_working_day(today, holidays):
            why = f"{today:%a %d %b %Y} is not a working day (weekend or bank holiday)"
        else:
            why = (
                f"outside the upload window {window.upload_window_start:%H:%M}-"
                f"{window.upload_window_end:%H:%M} (Europe/London)"
            )
        outcome.message = f"{why}; next opportunity {opportunity.isoformat(timespec='minutes')}"
        return outcome

    # 3. The next due submission.
    candidates = _due_candidates(runtime, agreement, now=now, today=today, dry_run=dry_run)
    if not candidates:
        waiting = ledger.list_submissions(agreement.nic, states=[S.UPLOADED, S.UNKNOWN])
        outcome.message = "nothing is due" + (
            f" ({len(waiting)} submission(s) await a verdict or the operator)" if waiting else ""
        )
        return outcome
    sub = candidates[0]
    outcome.submission_id = sub.id
    outcome.action = sub.action
    outcome.rows = sub.row_count

    # 4. Render and pre-flight.
    try:
        prepared = prepare(runtime, agreement, sub)
    except SeftpilotError as exc:
        discard_work(runtime, sub.id)
        outcome.status = REFUSED
        outcome.message = f"submission #{sub.id} could not be rendered: {exc.message}"
        if not dry_run:
            alert(runtime, f"submit-refused:{sub.id}", outcome.message, str(exc))
        return outcome
    outcome.file_name = prepared.file_name
    if prepared.problems:
        discard_work(runtime, sub.id)
        outcome.status = REFUSED
        outcome.problems = prepared.problems
        outcome.message = (
            f"submission #{sub.id} ({sub.action}, {sub.row_count} rows) failed its pre-flight "
            f"check and was not uploaded: {_problem_summary(prepared)}"
        )
        if not dry_run:
            alert(
                runtime,
                f"submit-refused:{sub.id}",
                f"{agreement.nic}: submission #{sub.id} refused by the pre-flight check",
                f"{outcome.message}\n\nSee every problem with `seftpilot submit --dry-run "
                f"--nic {agreement.nic}`; fix the study export and plan again.",
            )
        return outcome

    # The remote name must be free before we claim: a file found there after the claim is
    # then ours, which is what reconciliation relies on.
    if transport.listable:
        try:
            occupied = transport.find(prepared.file_name)
        except TransportError as exc:
            discard_work(runtime, sub.id)
            outcome.status = FAILED
            outcome.message = f"cannot reach SEFT to upload submission #{sub.id}: {exc.message}"
            if not dry_run:
                alert(
                    runtime,
                    f"submit-transport:{agreement.nic}",
                    f"{agreement.nic}: cannot reach SEFT",
                    f"{outcome.message}\n\n{exc}\n\nNothing was claimed; the next run tries again.",
                )
            return outcome
        if occupied is not None:
            discard_work(runtime, sub.id)
            outcome.status = REFUSED
            outcome.message = (
                f"the SEFT upload folder already holds {occupied.name} ({occupied.size} bytes): "
                "NHS England has not collected an earlier file, or someone uploaded by hand; "
                f"submission #{sub.id} was not uploaded"
            )
            if not dry_run:
                alert(
                    runtime,
                    f"submit-occupied:{agreement.nic}",
                    f"{agreement.nic}: SEFT upload folder is not empty",
                    f"{outcome.message}.\n\nFind out what the file is; remove it on SEFT if it "
                    "is stale. seftpilot never overwrites a file it did not just send.",
                )
            return outcome

    if dry_run:
        discard_work(runtime, sub.id)
        outcome.status = WOULD_UPLOAD
        outcome.nhs_day = today
        outcome.message = (
            f"would upload submission #{sub.id} ({sub.action}, {sub.row_count} rows) as "
            f"{prepared.file_name} ({prepared.size} bytes) by {transport.name}"
        )
        return outcome

    # 5. Claim, then the side effect, then record.
    try:
        sub = ledger.claim_upload(
            sub,
            at=now,
            nhs_day=today,
            file_name=prepared.file_name,
            file_sha256=prepared.sha256,
            size=prepared.size,
            transport=transport.name,
        )
    except DailyLimitReached as exc:
        discard_work(runtime, sub.id)
        outcome.status = NOT_NOW
        outcome.message = exc.message
        return outcome
    except ClaimLost as exc:
        discard_work(runtime, sub.id)
        outcome.status = NOTHING_DUE
        outcome.message = f"another worker took submission #{sub.id}: {exc.message}"
        return outcome
    outcome.nhs_day = today

    if not transport.listable:
        return _manual_put(
            runtime, agreement, transport, sub, now=now, outcome=outcome, prepared=prepared
        )

    _note(runtime, sub, SENDING_EVENT, now)
    try:
        transport.put(prepared.path, prepared.file_name, submission_id=sub.id)
    except TransportError as exc:
        discard_work(runtime, sub.id)
        return _after_failed_put(
            runtime, agreement, transport, sub, exc, now=now, holidays=holidays, outcome=outcome
        )
    discard_work(runtime, sub.id)
    uploaded_at = runtime.clock.now()
    deadline = evidence_deadline(uploaded_at, settings.submission.verdict_deadline, holidays)
    sub = ledger.record_upload(
        sub,
        at=uploaded_at,
        file_name=prepared.file_name,
        file_sha256=prepared.sha256,
        evidence_deadline=deadline,
    )
    for key in (f"submit-transport:{agreement.nic}", f"submit-occupied:{agreement.nic}"):
        clear(runtime, key, f"{agreement.nic}: submission #{sub.id} was uploaded")
    outcome.status = UPLOADED
    outcome.uploaded_at = uploaded_at
    outcome.evidence_deadline = deadline
    outcome.message = (
        f"uploaded submission #{sub.id} ({sub.action}, {sub.row_count} rows) as "
        f"{prepared.file_name}; its evidence window closes {deadline.isoformat(timespec='minutes')}"
    )
    return outcome


def _after_failed_put(
    runtime: Runtime,
    agreement: Agreement,
    transport: Transport,
    sub: Submission,
    exc: TransportError,
    *,
    now: datetime,
    holidays: frozenset[date],
    outcome: SubmitOutcome,
) -> SubmitOutcome:
    """The transport failed after the claim: its fate is unknown until a listing says."""
    ledger = runtime.ledger
    sub = ledger.record_upload_lost(sub, at=runtime.clock.now(), reason=exc.message)
    outcome.status = FAILED
    try:
        remote = transport.find(sub.file_name or "")
    except TransportError as again:
        outcome.message = (
            f"upload of submission #{sub.id} failed ({exc.message}) and the remote folder "
            f"cannot be listed ({again.message}); it stays upload_unknown until a listing "
            "settles it"
        )
    else:
        result, sub = _settle_found(
            runtime, agreement, sub, remote, now=runtime.clock.now(), holidays=holidays
        )
        outcome.reconciled.append({"submission_id": sub.id, "result": result})
        if result == "uploaded":
            outcome.status = UPLOADED
            outcome.uploaded_at = sub.uploaded_at
            outcome.evidence_deadline = sub.evidence_deadline
            outcome.message = (
                f"the transport reported an error ({exc.message}) but the file is on SEFT with "
                f"the right size: submission #{sub.id} is recorded as uploaded"
            )
            return outcome
        if result == "absent":
            outcome.message = (
                f"upload of submission #{sub.id} failed ({exc.message}); the remote folder "
                "proves nothing arrived, so it is due again (a later run retries)"
            )
        else:
            outcome.status = BLOCKED
            outcome.message = (
                f"upload of submission #{sub.id} failed ({exc.message}) and the remote "
                f"{sub.file_name} has an unexpected size; nothing more is uploaded until the "
                "operator checks it"
            )
    alert(
        runtime,
        f"upload-failed:{sub.id}",
        f"{agreement.nic}: upload of submission #{sub.id} failed",
        f"{outcome.message}\n\n{exc}",
    )
    return outcome


# -- manual confirmation -------------------------------------------------------------------
def confirm_upload(
    runtime: Runtime, sub_id: int, *, at: datetime | None = None, sent: bool = True
) -> Submission:
    """The operator uploaded a manual submission by hand at ``at`` (default now), or says
    whether an upload in doubt reached NHS England (``sent=False``: it did not; due again)."""
    ledger = runtime.ledger
    sub = ledger.get_submission(sub_id)
    now = runtime.clock.now()
    if not sent:
        if sub.state not in (S.UPLOADING, S.UPLOAD_UNKNOWN):
            raise LedgerError(
                f"submission #{sub.id} is {sub.state}, not an upload in doubt",
                hint="`seftpilot submission list` shows which submissions wait for you",
            )
        if sub.state == S.UPLOADING:
            sub = ledger.record_upload_lost(sub, at=now, reason="the operator answers")
        sub = ledger.record_not_sent(
            sub,
            at=now,
            reason="the operator says NHS England did not receive it",
            proved_absent=True,
        )
        clear(runtime, f"upload-unknown:{sub.id}", f"submission #{sub.id} is due again")
        return sub
    when = at or now
    if when.tzinfo is None:
        raise InputError(
            f"--at {when.isoformat()} has no time zone",
            hint="the CLI reads a time without a zone as Europe/London; pass one explicitly",
        )
    if sub.state not in (S.UPLOADING, S.UPLOAD_UNKNOWN):
        raise LedgerError(
            f"submission #{sub.id} is {sub.state}, not waiting for a manual upload",
            hint="`seftpilot submission list` shows which submissions wait for confirmation",
        )
    if when > now + timedelta(minutes=5):
        raise InputError(f"--at {when.isoformat()} is in the future")
    claim = _last_claim(runtime, sub)
    if claim is not None and when < datetime.fromisoformat(claim["at"]):
        raise InputError(
            f"--at {when.isoformat()} is before the file was prepared ({claim['at']})",
            hint="give the time you uploaded it in SEFT",
        )
    try:
        agreement = runtime.settings.agreement_for(sub.agreement)
    except ConfigError:
        agreement = None
    holidays = runtime.holidays(nhs_day(when))
    deadline = evidence_deadline(when, runtime.settings.submission.verdict_deadline, holidays)
    sub = ledger.record_upload(
        sub,
        at=when,
        nhs_day=nhs_day(when),
        evidence_deadline=deadline,
        found_remote=sub.state == S.UPLOAD_UNKNOWN,
    )
    if agreement is not None:
        outbox = runtime.settings.resolve(agreement.upload.outbox)
        shutil.rmtree(outbox / f"submission-{sub.id}", ignore_errors=True)
    return sub


# -- the timer -----------------------------------------------------------------------------
class SubmitJob:
    """Watcher job: runs ``submit_next`` for one agreement when an upload may happen."""

    def __init__(
        self,
        runtime: Runtime,
        agreement: Agreement,
        *,
        recheck: timedelta = timedelta(minutes=15),
        transport: Transport | None = None,
    ) -> None:
        self.runtime = runtime
        self.agreement = agreement
        self.name = f"submit:{agreement.nic}"
        self.recheck = recheck
        self._transport = transport
        self._not_before: datetime | None = None
        self.last_outcome: SubmitOutcome | None = None

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            self._transport = make_transport(self.runtime, self.agreement)
        return self._transport

    def next_due(self, now: datetime) -> datetime | None:
        if self._not_before is not None and now < self._not_before:
            return self._not_before
        ledger = self.runtime.ledger
        nic = self.agreement.nic
        subs = ledger.list_submissions(nic)
        in_doubt = [s for s in subs if s.state in (S.UPLOADING, S.UPLOAD_UNKNOWN)]
        if in_doubt:
            if self.transport.listable:
                return now  # reconcile at once, whatever the time of day
            if any(
                s.state == S.UPLOADING and not awaiting_operator(self.runtime, s) for s in in_doubt
            ):
                return now
            return None  # the operator's confirm moves it on
        if not any(s.state == S.DUE for s in subs) and not ledger.list_campaigns(nic, active=True):
            return None
        window = self.runtime.settings.submission
        return next_upload_opportunity(
            now,
            window.upload_window_start,
            window.upload_window_end,
            self.runtime.holidays(nhs_day(now)),
            last_upload_day(ledger, nic),
        )

    def run(self, now: datetime) -> None:
        outcome = submit_next(self.runtime, self.agreement, transport=self.transport)
        self.last_outcome = outcome
        log.info("%s: %s", self.name, outcome.message)
        if outcome.status == NOT_NOW and outcome.next_opportunity is not None:
            self._not_before = outcome.next_opportunity
        elif outcome.status in (UPLOADED, AWAITING_OPERATOR):
            self._not_before = None
        else:
            self._not_before = now + self.recheck
