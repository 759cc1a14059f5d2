"""Puts the service together: which handlers hear which mail, which timers run in what order.

Owns the composition only. The order of jobs matters: submissions first (an upload is the
start of an evidence window), then verdicts, then forwarding, then monitoring last, because
the monitor holds the alerts raised during the first pass after a start and releases them
as one summary (no storm after downtime).

Mail classes with a dedicated handler (submission notices, canaries, new data) are acted
on there; any other class whose rule says ``alert`` reaches the operator through the
generic alert handler here, so no mail is silently dropped.
"""

from __future__ import annotations

import logging
import threading

from seftpilot.adapters.locks import MailboxLock
from seftpilot.adapters.mail_store import MailRecord
from seftpilot.core.message import Message
from seftpilot.core.rules import Classification
from seftpilot.service import alerts, forward, monitor, submission_mail
from seftpilot.service.dispatch import ANY, Dispatcher
from seftpilot.service.intake import MailIntake
from seftpilot.service.runtime import Runtime
from seftpilot.service.submit import SubmitJob
from seftpilot.service.verdicts import NOTICE_CLASSES, VerdictJob
from seftpilot.service.watcher import Job, Watcher

log = logging.getLogger(__name__)

# Classes whose own handler decides whether the operator must hear about it.
DEDICATED_CLASSES = frozenset(NOTICE_CLASSES | {"canary", "new_data"})


def _alert_handler(runtime: Runtime) -> object:
    def on_alert(record: MailRecord, message: Message, classification: Classification) -> None:
        if classification.action != "alert" or classification.class_ in DEDICATED_CLASSES:
            return
        captures = "".join(f"  {k}: {v}\n" for k, v in sorted(classification.captures.items()))
        alerts.raise_alert(
            runtime,
            f"mail:{record.id}",
            f"Mail needs you: {classification.class_} ({classification.rule})",
            (
                f"A message in {record.account} {record.folder} (UID {record.uid}) was "
                f"classified {classification.class_} by rule {classification.rule!r}, whose "
                f"action is to tell you.\n"
                f"From: {message.from_addr}\nSubject: {message.subject}\n"
                f"{captures}"
                "Read it in the mailbox; if it should be handled automatically, add a rule "
                "and check it with `seftpilot rules test`."
            ),
            severity=str(classification.params.get("severity", "warning")),
        )

    return on_alert


def _abandoned_handler(runtime: Runtime) -> object:
    def on_abandoned(record: MailRecord, error: str) -> None:
        alerts.raise_alert(
            runtime,
            f"mail-abandoned:{record.id}",
            "A message could not be handled",
            (
                f"Message UID {record.uid} in {record.account} {record.folder} "
                f"(Message-ID {record.message_id}) failed {record.attempts} times and is no "
                f"longer retried. Last error: {error}\n"
                "Fix the cause, then handle it by hand; it is still in the mailbox."
            ),
            severity="error",
        )

    return on_abandoned


def build_dispatcher(runtime: Runtime) -> Dispatcher:
    dispatcher = Dispatcher()
    submission_mail.register_handlers(dispatcher, runtime)
    monitor.register_handlers(dispatcher, runtime)
    forward.register_handlers(dispatcher, runtime)
    dispatcher.on(ANY, _alert_handler(runtime))  # type: ignore[arg-type]
    return dispatcher


def build_jobs(runtime: Runtime) -> list[Job]:
    jobs: list[Job] = [SubmitJob(runtime, agreement) for agreement in runtime.settings.agreement]
    jobs.append(VerdictJob(runtime))
    jobs.extend(forward.jobs(runtime))
    jobs.extend(monitor.jobs(runtime))  # last: releases first-pass alerts as one summary
    return jobs


def build_intake(runtime: Runtime, dispatcher: Dispatcher) -> MailIntake:
    return MailIntake(
        runtime.settings,
        runtime.store,
        runtime.rules,
        runtime.clock,
        dispatcher,
        on_abandoned=_abandoned_handler(runtime),  # type: ignore[arg-type]
    )


def build_watcher(runtime: Runtime, *, tick_seconds: float = 1.0) -> Watcher:
    """The whole service: the mailbox intake in a thread plus every timer."""
    dispatcher = build_dispatcher(runtime)
    intake = build_intake(runtime, dispatcher)
    jobs = build_jobs(runtime)

    def run_intake(stop: threading.Event) -> None:
        intake.run(stop)

    return Watcher(clock=runtime.clock, jobs=jobs, intake=run_intake, tick_seconds=tick_seconds)


def run_once(runtime: Runtime) -> dict[str, object]:
    """One pass, for cron or a rehearsal: catch up the mailbox, then run every due job once."""
    dispatcher = build_dispatcher(runtime)
    intake = build_intake(runtime, dispatcher)
    with MailboxLock(runtime.settings.state_dir, intake.account, intake.folder):
        try:
            report = intake.catch_up()
        finally:
            intake.close()
    watcher = Watcher(clock=runtime.clock, jobs=build_jobs(runtime))
    ran = watcher.run_pending()
    return {
        "mail": {"fetched": report.fetched, "handled": report.handled, "failed": report.failed},
        "jobs_run": ran,
        "jobs_failing": watcher.failing_jobs(),
    }
