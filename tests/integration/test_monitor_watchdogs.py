"""Watchdogs and the heartbeat job against real servers on loopback (SMTP for the alerts,
an HTTP server for the dead-man's-switch pings), with an injected clock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from seftpilot.adapters.clock import FakeClock
from seftpilot.adapters.ledger_store import RefRow
from seftpilot.service import alerts
from seftpilot.service.monitor import HeartbeatJob, gather_facts, run_watchdogs
from seftpilot.service.runtime import Runtime
from tests.fixtures.smtp_server import SmtpServer
from tests.integration.monitor_support import NIC, T0, alert_mails, body, make_runtime

ACCOUNT = "study@example.org@127.0.0.1"


def nhs_mail(rt: Runtime, uid: int, *, class_: str = "submission_succeeded") -> None:
    at = rt.clock.now()
    rt.mail.record_received(
        account=ACCOUNT,
        folder="INBOX",
        uidvalidity=1,
        uid=uid,
        key=f"mid:<{uid}@nhs>",
        message_id=f"<{uid}@nhs>",
        received_at=at,
        sent_at=at,
        from_addr="enquiries@nhsdigital.nhs.uk",
        subject=f"notice {uid}",
        size=100,
        rule="r",
        class_=class_,
        action="record",
        captures={},
        defects=[],
        now=at,
    )


def test_nhs_silence_fires_once_reminds_after_the_interval_and_clears(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    clock = FakeClock(T0)
    rt = make_runtime(tmp_path, smtp_server, clock)
    rt.mail.record_listening(ACCOUNT, "INBOX", T0, "poll")  # listening began at T0
    run_watchdogs(rt, clock.now())
    assert alert_mails(smtp_server) == []

    clock.advance(timedelta(days=45, hours=1))
    run_watchdogs(rt, clock.now())
    (first,) = alert_mails(smtp_server)
    assert "no mail from NHS England for 45 days" in first["Subject"]
    assert "nhsdigital.nhs.uk" in body(first)

    for _ in range(23):  # hourly checks: the same alert, no new mail
        clock.advance(timedelta(hours=1))
        run_watchdogs(rt, clock.now())
    assert len(alert_mails(smtp_server)) == 1

    clock.advance(timedelta(hours=1))  # 24 h after the first mail: a reminder
    run_watchdogs(rt, clock.now())
    mails = alert_mails(smtp_server)
    assert len(mails) == 2 and "still open" in mails[1]["Subject"]

    nhs_mail(rt, 1)
    clock.advance(timedelta(hours=1))
    run_watchdogs(rt, clock.now())
    mails = alert_mails(smtp_server)
    assert len(mails) == 3 and "cleared" in mails[2]["Subject"]
    assert alerts.open_alerts(rt) == []


def test_new_data_overdue_after_an_accepted_add_and_cleared_by_the_notice(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    clock = FakeClock(T0)
    rt = make_runtime(tmp_path, smtp_server, clock, watchdogs={"new_data_within_days": 60})
    sub = rt.ledger.create_submission(NIC, "ADD", [RefRow("S1", "9990000018")], at=T0)
    sub = rt.ledger.claim_upload(rt.ledger.make_due(sub, at=T0), at=T0, nhs_day=date(2026, 3, 2))
    sub = rt.ledger.record_upload(sub, at=T0)
    rt.ledger.record_verdict(sub, "presumed_success", at=T0 + timedelta(days=1))
    nhs_mail(rt, 1)  # keeps the NHS-silence watchdog out of this test

    clock.advance(timedelta(days=59))
    nhs_mail(rt, 2)
    run_watchdogs(rt, clock.now())
    assert alert_mails(smtp_server) == []
    clock.advance(timedelta(days=2))
    run_watchdogs(rt, clock.now())
    (alert,) = alert_mails(smtp_server)
    assert f"accepted ADD #{sub.id}" in alert["Subject"]

    nhs_mail(rt, 3, class_="new_data")
    run_watchdogs(rt, clock.now())
    assert "cleared" in alert_mails(smtp_server)[-1]["Subject"]


def test_expiring_password_alerts_until_renewed(tmp_path: Path, smtp_server: SmtpServer) -> None:
    clock = FakeClock(T0)
    soon = smtp_server.settings(password_expires=date(2026, 3, 10))
    rt = make_runtime(tmp_path, smtp_server, clock, smtp=soon)
    run_watchdogs(rt, clock.now())
    run_watchdogs(rt, clock.now())
    (alert,) = [m for m in alert_mails(smtp_server) if "SMTP password" in m["Subject"]]
    assert "expires on 2026-03-10 (in 8 days)" in body(alert)
    assert "smtp.password_expires" in body(alert)

    renewed = make_runtime(tmp_path, smtp_server, clock)  # the operator renewed it
    run_watchdogs(renewed, clock.now())
    assert "cleared" in alert_mails(smtp_server)[-1]["Subject"]


def test_release_reminder_missing_at_its_cadence(tmp_path: Path, smtp_server: SmtpServer) -> None:
    clock = FakeClock(T0)
    rt = make_runtime(tmp_path, smtp_server, clock)
    for uid in (1, 2, 3):  # reminders every 28 days
        nhs_mail(rt, uid, class_="release_reminder")
        clock.advance(timedelta(days=28))
    nhs_mail(rt, 9)  # other NHS mail keeps arriving
    run_watchdogs(rt, clock.now())
    assert alert_mails(smtp_server) == []  # 28 days after the last: not yet overdue
    clock.advance(timedelta(days=8))
    nhs_mail(rt, 10)
    run_watchdogs(rt, clock.now())
    (alert,) = alert_mails(smtp_server)
    assert "release reminder" in alert["Subject"]
    assert "every 28 days" in body(alert)


# -- heartbeat ---------------------------------------------------------------------------
@dataclass
class PingLog:
    url: str = ""
    status: int = 200
    pings: list[tuple[str, dict[str, list[str]], str]] = field(default_factory=list)


@pytest.fixture
def pings() -> Iterator[PingLog]:
    state = PingLog()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            text = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            parts = urlsplit(self.path)
            state.pings.append((parts.path, parse_qs(parts.query), text))
            self.send_response(state.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/ping/hb-1"
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_heartbeat_pings_each_cycle_fails_once_when_stale_and_recovers(
    tmp_path: Path, smtp_server: SmtpServer, pings: PingLog
) -> None:
    clock = FakeClock(T0)
    rt = make_runtime(
        tmp_path,
        smtp_server,
        clock,
        heartbeat={"url": pings.url, "grace_seconds": 300, "timeout_seconds": 5},
        imap={
            "host": "127.0.0.1",
            "username": "study@example.org",
            "idle": False,
            "poll_interval_seconds": 60,
        },
    )
    job = HeartbeatJob(rt)
    rt.mail.record_listening(ACCOUNT, "INBOX", clock.now(), "poll")
    job.run(clock.now())
    assert [p[0] for p in pings.pings] == ["/ping/hb-1"]
    rid = pings.pings[0][1]["rid"][0]
    assert len(rid) == 36  # a UUID, as healthchecks.io requires

    clock.advance(30)
    job.run(clock.now())  # no new cycle: nothing to report, not stale yet
    assert len(pings.pings) == 1
    clock.advance(30)
    rt.mail.record_listening(ACCOUNT, "INBOX", clock.now(), "poll")
    job.run(clock.now())
    assert len(pings.pings) == 2 and pings.pings[1][1]["rid"][0] != rid

    clock.advance(timedelta(seconds=361))  # one poll interval + grace, and a second
    job.run(clock.now())
    assert pings.pings[-1][0] == "/ping/hb-1/fail"
    assert "no listening cycle for 6 min" in pings.pings[-1][2]
    (alert,) = alert_mails(smtp_server)
    assert "not being listened to" in alert["Subject"]
    assert gather_facts(rt).heartbeat.stale is True

    clock.advance(30)
    job.run(clock.now())
    assert len(pings.pings) == 3  # one /fail per stale spell
    assert len(alert_mails(smtp_server)) == 1

    rt.mail.record_listening(ACCOUNT, "INBOX", clock.now(), "poll")
    job.run(clock.now())
    assert pings.pings[-1][0] == "/ping/hb-1"
    assert "cleared" in alert_mails(smtp_server)[-1]["Subject"]

    # A monitor that answers 500 (or is down) is logged and recorded, never fatal.
    pings.status = 500
    clock.advance(30)
    rt.mail.record_listening(ACCOUNT, "INBOX", clock.now(), "poll")
    job.run(clock.now())
    assert gather_facts(rt).heartbeat.last_ping_ok is False
    # Restarted, the job does not ping the same cycle again.
    HeartbeatJob(rt).run(clock.now())
    assert len(pings.pings) == 5
