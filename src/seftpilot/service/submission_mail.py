"""NHS England's notices about cohort files: attribute each to its submission, keep the rest.

Owns the dispatcher handlers for the ``submission_failed`` and ``submission_succeeded``
classes. For each notice: correlate it (``core.correlate``) with the submissions whose
evidence windows could hold it, record the attribution on the mail record (an ambiguous one
too, and then alert: never guess), and, when an NHS error report
(``Cohort-Data-Validation-Errors*.csv``) is attached, record which rows NHS refused
(``LedgerStore.reject_rows``) so only those stay out of the pool and out of a retry. The
rule's captures (the reason text) are already on the mail record; the verdict reads them.

A notice correlated to a submission whose window was already judged ``presumed_success``
(the verdict ran before the notice was handled) settles it late: a failure turns it
``failed`` and is acted on, a success confirms it.

Handlers are idempotent (the intake retries a handler that raised): the correlation is
recorded only when it changed, rejections are an UPDATE to the same value, late
settlement happens only from ``presumed_success``, and alerts are keyed.

Must not decide a verdict (``service.verdicts``), fetch mail, or guess an attribution.
"""

from __future__ import annotations

import csv
import io
import logging

from seftpilot.adapters.mail_store import MailRecord
from seftpilot.core.cohort_profile import header_key
from seftpilot.core.correlate import Candidate, correlate
from seftpilot.core.ledger import SubmissionState
from seftpilot.core.message import Attachment, Message
from seftpilot.core.rules import Classification
from seftpilot.service.dispatch import Dispatcher
from seftpilot.service.runtime import Runtime
from seftpilot.service.submit import alert
from seftpilot.service.verdicts import FAILURE_CLASSES, NOTICE_CLASSES, advance, after_failure

log = logging.getLogger(__name__)

S = SubmissionState
ERROR_REPORT = "cohort-data-validation-errors"
# Headers the study's reference goes by in an error report (compared with header_key).
REFERENCE_HEADERS = frozenset(
    header_key(h) for h in ("UNIQUE_REFERENCE", "UNIQUE REFERENCE", "STUDY_ID", "UNIQUE_REF")
)
MAX_REPORT_BYTES = 64 * 1024 * 1024


def error_reports(message: Message) -> list[Attachment]:
    """Attached NHS error reports (``Cohort-Data-Validation-Errors...`` CSV files)."""
    return [
        a
        for a in message.attachments
        if ERROR_REPORT in a.name.lower()
        and (a.name.lower().endswith(".csv") or "csv" in a.content_type.lower())
    ]


def parse_error_report(payload: bytes) -> list[str]:
    """The unique references an error report lists, in order, each once.

    Raises ValueError when no column holds the study's reference.
    """
    if len(payload) > MAX_REPORT_BYTES:
        raise ValueError(f"the report is larger than {MAX_REPORT_BYTES} bytes")
    text = payload.decode("utf-8-sig", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise ValueError("the report is empty")
    columns = [i for i, h in enumerate(header) if header_key(h) in REFERENCE_HEADERS]
    if not columns:
        raise ValueError(f"no UNIQUE_REFERENCE column in its header ({', '.join(header[:6])}...)")
    column = columns[0]
    refs: dict[str, None] = {}
    for row in reader:
        if len(row) > column and row[column].strip():
            refs.setdefault(row[column].strip(), None)
    return list(refs)


class NoticeHandler:
    """``Dispatcher`` handler for submission notices (see the module docstring)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def candidates(self) -> list[Candidate]:
        """Uploaded submissions of every agreement, with their evidence windows."""
        out = []
        for sub in self.runtime.ledger.list_submissions():
            if sub.uploaded_at is None or sub.evidence_deadline is None:
                continue
            out.append(
                Candidate(
                    submission_id=sub.id,
                    nic=sub.agreement,
                    file_name=sub.file_name,
                    uploaded_at=sub.uploaded_at,
                    window_start=sub.uploaded_at,
                    window_end=sub.evidence_deadline,
                )
            )
        return out

    def __call__(
        self, record: MailRecord, message: Message, classification: Classification
    ) -> None:
        runtime = self.runtime
        ledger = runtime.ledger
        now = runtime.clock.now()
        failure = classification.class_ in FAILURE_CLASSES
        text = "\n".join([message.subject, message.text, *message.attachment_names])
        found = correlate(
            record.received_at,
            classification.captures,
            text,
            self.candidates(),
        )
        ledger.record_correlation(
            record.id,
            found.submission_id,
            ambiguous=found.ambiguous,
            reason=found.reason,
            at=now,
        )
        subject = message.subject or message.message_id or f"mail #{record.id}"
        if found.ambiguous:
            alert(
                runtime,
                f"notice-ambiguous:{record.id}",
                f"NHS notice could concern several submissions: {subject}",
                f"A {classification.class_} notice (rule {classification.rule}) received "
                f"{record.received_at:%a %d %b %H:%M} UTC {found.reason}.\n\nseftpilot does "
                "not guess: the submissions it could concern cannot be presumed successful. "
                "Read it, then settle each with `seftpilot submission resolve ID`.",
                severity="high",
            )
            return
        if found.submission_id is None:
            if failure:
                alert(
                    runtime,
                    f"notice-unattributed:{record.id}",
                    f"NHS failure notice matches no submission: {subject}",
                    f"A failure notice (rule {classification.rule}) received "
                    f"{record.received_at:%a %d %b %H:%M} UTC {found.reason}.\n\nCheck which "
                    "file it is about (`seftpilot submission list`).",
                )
            log.info("mail #%s: %s", record.id, found.reason)
            return
        sub = ledger.get_submission(found.submission_id)
        if failure:
            self._rejections(record, message, sub.id)
        if sub.state == S.PRESUMED_SUCCESS:
            self._settle_late(
                sub.id, success=not failure, subject=subject, retry=classification.action == "retry"
            )

    def _rejections(self, record: MailRecord, message: Message, sub_id: int) -> None:
        runtime = self.runtime
        for report in error_reports(message):
            try:
                refs = parse_error_report(report.payload)
            except ValueError as exc:
                alert(
                    runtime,
                    f"error-report:{record.id}",
                    f"cannot read NHS error report {report.name}",
                    f"{report.name} (mail #{record.id}, submission #{sub_id}): {exc}.\n\n"
                    "The rows it lists are not marked rejected; read it by hand.",
                )
                continue
            held = runtime.ledger.refs_of(sub_id, refs)
            missing = [r for r in refs if r not in held]
            if missing:
                alert(
                    runtime,
                    f"error-report:{record.id}",
                    f"NHS error report {report.name} lists rows submission #{sub_id} lacks",
                    f"{len(missing)} of the {len(refs)} references in {report.name} are not in "
                    f"submission #{sub_id}, so it may be about another file; no row was "
                    "marked rejected. Check it by hand.",
                )
                continue
            if refs:
                count = runtime.ledger.reject_rows(
                    sub_id,
                    refs,
                    at=runtime.clock.now(),
                    detail={"mail_id": record.id, "report": report.name},
                )
                log.info("submission #%s: %d row(s) rejected by NHS England", sub_id, count)

    def _settle_late(self, sub_id: int, *, success: bool, subject: str, retry: bool) -> None:
        runtime = self.runtime
        now = runtime.clock.now()
        sub = runtime.ledger.resolve(
            runtime.ledger.get_submission(sub_id),
            success=success,
            at=now,
            note=f"late notice: {subject}",
            late=True,
        )
        if success:
            advance(runtime, sub, now)
            return
        after_failure(runtime, sub, now, retry=retry)


def register_handlers(dispatcher: Dispatcher, runtime: Runtime) -> NoticeHandler:
    """Route the submission notice classes to one ``NoticeHandler``."""
    handler = NoticeHandler(runtime)
    for class_ in sorted(NOTICE_CLASSES):
        dispatcher.on(class_, handler)
    return handler
