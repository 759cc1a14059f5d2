"""The mail-path canary over real SMTP and IMAP servers on loopback: one that goes the
whole way (SMTP -> mailbox -> intake -> rules -> handler) and one that is lost."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

from seftpilot.adapters.clock import FakeClock
from seftpilot.adapters.ledger_store import RefRow
from seftpilot.adapters.rules_files import default_rules_path, load_rules
from seftpilot.core.verdict import Evidence, VerdictKind, decide
from seftpilot.service import alerts
from seftpilot.service.dispatch import Dispatcher
from seftpilot.service.intake import MailIntake
from seftpilot.service.monitor import (
    CanaryJob,
    canaries_between,
    canary_records,
    register_handlers,
)
from seftpilot.service.runtime import Runtime
from tests.fixtures.imap_server import ImapTestServer
from tests.fixtures.smtp_server import SmtpServer
from tests.integration.monitor_support import NIC, T0, alert_mails, body, make_runtime

# 10:00 London is the default send time; T0 is 08:00 on a Monday in March (GMT).
SEND_AT = T0 + timedelta(hours=2)


def intake_for(rt: Runtime) -> MailIntake:
    dispatcher = Dispatcher()
    register_handlers(dispatcher, rt)
    return MailIntake(
        rt.settings, rt.mail, load_rules([default_rules_path()]), rt.clock, dispatcher
    )


def test_canary_goes_the_whole_way_and_is_recorded_once(
    tmp_path: Path,
    smtp_server_factory: Callable[..., SmtpServer],
    imap_server: ImapTestServer,
) -> None:
    smtp = smtp_server_factory(deliver_to=lambda mail: imap_server.append(mail.content))
    clock = FakeClock(T0)
    rt = make_runtime(tmp_path, smtp, clock, imap=imap_server.settings())
    job = CanaryJob(rt)
    assert job.next_due(clock.now()) == SEND_AT  # nothing due before 10:00 London

    clock.set(SEND_AT)
    assert job.next_due(clock.now()) == SEND_AT
    job.run(clock.now())
    (sent,) = [m.message for m in smtp.messages]
    token = sent["X-Seftpilot-Canary"]
    assert token and token in sent["Subject"]
    assert sent["To"] == imap_server.username

    clock.advance(timedelta(minutes=2))
    intake = intake_for(rt)
    try:
        report = intake.catch_up()
        assert report.handled == 1
        # A second pass (and a re-delivered copy) changes nothing: arrival is idempotent.
        imap_server.append(smtp.messages[0].content)
        intake.catch_up()
    finally:
        intake.mailbox.close()
    (canary,) = canaries_between(rt, T0, clock.now())
    assert canary.sent_at == SEND_AT
    assert canary.arrived_at == clock.now()
    (rec,) = canary_records(rt, T0)
    assert rec.lost_at is None
    # The rules saw it as a canary, not as NHS mail.
    classes = {m.class_ for m in rt.mail.messages(intake.account)}
    assert classes == {"canary"}

    # Long after, nothing is lost and no second canary goes the same day.
    clock.advance(timedelta(hours=2))
    job.run(clock.now())
    assert len(smtp.messages) == 1  # the copy appended by hand above went via IMAP only
    assert alert_mails(smtp) == []


def test_lost_canary_alerts_and_makes_the_window_unknown(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    clock = FakeClock(T0)
    rt = make_runtime(tmp_path, smtp_server, clock)
    # An upload opens an evidence window at 09:00: a canary goes inside it at once.
    sub = rt.ledger.create_submission(NIC, "ADD", [RefRow("S1", "9990000018")], at=T0)
    sub = rt.ledger.make_due(sub, at=T0)
    sub = rt.ledger.claim_upload(sub, at=T0, nhs_day=date(2026, 3, 2))
    clock.set(T0 + timedelta(hours=1))
    deadline = T0 + timedelta(days=1, hours=4)
    rt.ledger.record_upload(sub, at=clock.now(), evidence_deadline=deadline)
    job = CanaryJob(rt)
    assert job.next_due(clock.now()) == clock.now()
    job.run(clock.now())
    canary_mails = [m.message for m in smtp_server.messages if m.message["X-Seftpilot-Canary"]]
    assert len(canary_mails) == 1  # the window's canary; the daily one waits for 10:00
    window_sent = clock.now()

    # Not before max_delay (30 min): nothing is lost yet.
    clock.advance(timedelta(minutes=29))
    job.run(clock.now())
    assert alert_mails(smtp_server) == []

    clock.advance(timedelta(minutes=2))
    job.run(clock.now())
    (alert,) = alert_mails(smtp_server)
    assert "canary did not arrive" in alert["Subject"]
    assert "presumed success" in body(alert)
    assert [a.key for a in alerts.open_alerts(rt)] == ["canary.lost"]

    canaries = canaries_between(rt, T0, deadline)
    assert canaries[0].sent_at == window_sent and canaries[0].arrived_at is None
    verdict = decide(
        Evidence(
            submission_id=sub.id,
            window_start=window_sent - timedelta(minutes=1),
            window_end=deadline,
            listening=[window_sent + timedelta(minutes=m) for m in range(0, 60 * 28, 10)],
            max_gap=timedelta(minutes=30),
            canary_required=True,
            canaries=canaries,
            mails=[],
        )
    )
    assert verdict.kind is VerdictKind.UNKNOWN
    assert any("did not arrive" in r for r in verdict.reasons)


def test_unknown_token_is_ignored_without_failing_the_mail(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    from seftpilot.service.monitor import record_canary_arrival

    rt = make_runtime(tmp_path, smtp_server)
    assert record_canary_arrival(rt, "sp-forged-0000", mail_id=None, at=T0) is False
    assert canaries_between(rt, T0 - timedelta(days=1), T0) == []
    assert [e["kind"] for e in rt.store.events()] == ["canary.unknown_token"]
