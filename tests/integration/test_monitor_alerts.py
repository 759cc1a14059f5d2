"""Alerts against a real SMTP server on loopback: deduplication, reminders at the
configured interval (not before), "cleared" mails, one summary after a restart, the hourly
cap, no header injection, no secrets."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import SecretStr

from seftpilot.adapters.clock import FakeClock
from seftpilot.service import alerts
from seftpilot.service.alerts import clear_alert, raise_alert
from tests.fixtures.smtp_server import SmtpServer
from tests.integration.monitor_support import T0, alert_mails, body, make_runtime


def test_same_key_is_one_alert_reminded_after_the_interval_and_cleared_once(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    clock = FakeClock(T0)
    rt = make_runtime(
        tmp_path,
        smtp_server,
        clock,
        operator={"emails": ["ops@study.example"], "alert_reminder_hours": 24},
    )
    assert raise_alert(rt, "imap.auth", "IMAP login refused", "the server said no") is True
    assert raise_alert(rt, "imap.auth", "IMAP login refused", "the server said no") is False
    clock.advance(timedelta(hours=23, minutes=59))
    assert raise_alert(rt, "imap.auth", "IMAP login refused", "still no") is False
    assert len(alert_mails(smtp_server)) == 1

    clock.advance(timedelta(minutes=1))
    assert raise_alert(rt, "imap.auth", "IMAP login refused", "still no") is True
    mails = alert_mails(smtp_server)
    assert len(mails) == 2
    assert "still open" in mails[1]["Subject"]
    assert "IMAP login refused" in mails[0]["Subject"]

    assert clear_alert(rt, "imap.auth", "login works again") is True
    assert clear_alert(rt, "imap.auth", "login works again") is False  # already cleared
    mails = alert_mails(smtp_server)
    assert len(mails) == 3
    assert "cleared" in mails[2]["Subject"]
    assert "login works again" in body(mails[2])
    assert alerts.open_alerts(rt) == []

    # Raised again later it is a new alert, mailed at once.
    clock.advance(timedelta(hours=1))
    assert raise_alert(rt, "imap.auth", "IMAP login refused", "again") is True
    assert len(alert_mails(smtp_server)) == 4


def test_restart_reconciles_into_one_summary_not_a_storm(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    rt = make_runtime(tmp_path, smtp_server)
    raise_alert(rt, "old.one", "an alert from before the downtime", "x")
    assert len(alert_mails(smtp_server)) == 1

    alerts.hold_alerts(rt)  # what service.monitor.jobs() does when the service starts
    for n in range(8):
        raise_alert(rt, f"first.pass.{n}", f"problem {n} found while reconciling", f"detail {n}")
    clear_alert(rt, "old.one", "resolved while we were down")
    # A flap inside the batch (raised and cleared before anyone heard) stays quiet.
    raise_alert(rt, "flap", "flapping", "x")
    clear_alert(rt, "flap", "gone")
    assert len(alert_mails(smtp_server)) == 1  # nothing sent while held

    assert alerts.release_alerts(rt) == 1
    mails = alert_mails(smtp_server)
    assert len(mails) == 2
    summary = mails[1]
    assert "after a restart" in summary["Subject"]
    assert "8 new" in summary["Subject"] and "1 cleared" in summary["Subject"]
    text = body(summary)
    for n in range(8):
        assert f"problem {n} found while reconciling" in text
    assert "resolved while we were down" in text
    assert "flapping" not in text
    assert alerts.pending_alerts(rt) == []


def test_hourly_cap_holds_the_rest_for_one_summary(tmp_path: Path, smtp_server: SmtpServer) -> None:
    clock = FakeClock(T0)
    rt = make_runtime(tmp_path, smtp_server, clock)
    cap = alerts.MAX_MAILS_PER_HOUR
    for n in range(cap + 4):
        raise_alert(rt, f"k{n}", f"alert {n}", "x")
        clock.advance(timedelta(minutes=1))
    assert len(alert_mails(smtp_server)) == cap
    assert len(alerts.pending_alerts(rt)) == 4
    assert alerts.flush_alerts(rt) == 0  # still inside the hour

    clock.advance(timedelta(hours=1))
    assert alerts.flush_alerts(rt) == 1
    last = alert_mails(smtp_server)[-1]
    assert "4 new" in last["Subject"]
    assert all(f"alert {n}" in body(last) for n in range(cap, cap + 4))


def test_smtp_failure_keeps_the_alert_pending_and_never_raises(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    rt = make_runtime(tmp_path, smtp_server)
    smtp_server.fail_next(1, 451)
    assert raise_alert(rt, "k", "disk nearly full", "x") is True
    assert alert_mails(smtp_server) == []
    assert [a.key for a in alerts.pending_alerts(rt)] == ["k"]
    assert alerts.flush_alerts(rt) == 1
    assert len(alert_mails(smtp_server)) == 1
    assert alerts.pending_alerts(rt) == []


def test_untrusted_text_cannot_inject_headers_and_secrets_never_leave(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    secret = "Sup3r-Secret-IMAP-pw"
    rt = make_runtime(
        tmp_path,
        smtp_server,
        imap={"host": "127.0.0.1", "username": "u@example.org", "password": SecretStr(secret)},
    )
    hostile = "Validation failed\r\nBcc: attacker@evil.example\r\nX-Injected: yes"
    raise_alert(rt, "mail.7", hostile, f"reason: {hostile}\x1b[31m\nserver said {secret}")
    (mail,) = alert_mails(smtp_server)
    assert mail["Bcc"] is None and mail["X-Injected"] is None
    assert "\n" not in mail["Subject"] and "\r" not in mail["Subject"]
    assert "Validation failed" in mail["Subject"]
    delivered = smtp_server.messages[-1]
    assert delivered.rcpt_tos == ("ops@study.example",)
    text = body(mail)
    assert secret not in text and secret.encode() not in delivered.content
    assert "***" in text
    assert "\x1b" not in text


def test_service_first_pass_sends_one_summary_then_alerts_go_one_by_one(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    from datetime import date

    from seftpilot.service.monitor import jobs
    from seftpilot.service.watcher import Watcher

    clock = FakeClock(T0)
    rt = make_runtime(
        tmp_path, smtp_server, clock, smtp=smtp_server.settings(password_expires=date(2026, 3, 1))
    )
    # Before the downtime: listening began 50 days ago, and no NHS mail since.
    rt.mail.record_listening(
        "study@example.org@127.0.0.1", "INBOX", T0 - timedelta(days=50), "poll"
    )
    watcher = Watcher(clock, jobs(rt))
    watcher.run_pending()
    assert watcher.failing_jobs() == {}
    (summary,) = alert_mails(smtp_server)
    assert summary["Subject"] == "[seftpilot] after a restart: 3 new"
    text = body(summary)
    assert "no mail from NHS England" in text and "SMTP password has expired" in text
    assert "the mailbox is not being listened to" in text  # nothing since 50 days ago
    # The first pass also sent today's overdue digest (08:00 > 07:30), exactly one.
    digests = [m for m in smtp_server.messages if "digest" in m.message["Subject"]]
    assert len(digests) == 1

    # After the first pass an alert goes at once, on its own.
    raise_alert(rt, "later", "something new", "x")
    assert alert_mails(smtp_server)[-1]["Subject"] == "[seftpilot] ALERT (warning): something new"
