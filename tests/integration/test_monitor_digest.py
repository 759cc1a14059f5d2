"""The daily digest over a scripted week, with an injected clock and a real SMTP server:
what a reader needs is in it, one per day, one after downtime, HTML escaped."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

from seftpilot.adapters.clock import FakeClock
from seftpilot.adapters.ledger_store import RefRow
from seftpilot.core.calendar import london_instant
from seftpilot.service.alerts import raise_alert
from seftpilot.service.monitor import (
    DigestJob,
    current_digest,
    record_canary_arrival,
    render_digest,
    send_canary,
)
from seftpilot.service.runtime import Runtime
from tests.fixtures.smtp_server import SmtpServer
from tests.integration.monitor_support import NIC, OPERATOR, body, mails_to, make_runtime

ACCOUNT = "study@example.org@127.0.0.1"
ROWS = [RefRow(r, n) for r, n in (("S1", "9990000018"), ("S2", "9990000026"), ("S3", "9990000034"))]


def at(day: int, hh: int, mm: int = 0) -> datetime:
    """Day 0 is Monday 2 March 2026; times are London (GMT in early March)."""
    return london_instant(date(2026, 3, 2) + timedelta(days=day), datetime.min.time()).replace(
        hour=hh, minute=mm
    )


def mail(rt: Runtime, uid: int, when: datetime, subject: str, class_: str, sub: int | None) -> None:
    record = rt.mail.record_received(
        account=ACCOUNT,
        folder="INBOX",
        uidvalidity=1,
        uid=uid,
        key=f"mid:<{uid}@nhs>",
        message_id=f"<{uid}@nhs>",
        received_at=when,
        sent_at=when,
        from_addr="enquiries@nhsdigital.nhs.uk",
        subject=subject,
        size=100,
        rule=class_,
        class_=class_,
        action="record",
        captures={},
        defects=[],
        now=when,
    )
    if sub is not None:  # what the submission workflow's correlation records
        with rt.store.transaction() as conn:
            conn.execute("UPDATE mail_messages SET submission_id=? WHERE id=?", (sub, record.id))


def upload(rt: Runtime, action: str, rows: list[RefRow], when: datetime, deadline: datetime) -> int:
    sub = rt.ledger.create_submission(NIC, action, rows, at=when)  # type: ignore[arg-type]
    sub = rt.ledger.claim_upload(rt.ledger.make_due(sub, at=when), at=when, nhs_day=when.date())
    sub = rt.ledger.record_upload(
        sub, at=when, file_name=f"{NIC}_{action}_{when:%Y%m%d}.csv", evidence_deadline=deadline
    )
    return sub.id


def script_week(rt: Runtime, clock: FakeClock) -> dict[str, int]:
    """Monday to Friday as the ledger records it (polls every 10 min, a gap on Wednesday)."""
    t = at(0, 8)
    while t < at(4, 10):
        if not (at(2, 13) < t < at(2, 15)):
            rt.mail.record_listening(ACCOUNT, "INBOX", t, "poll")
        t += timedelta(minutes=10)
    clock.set(at(0, 9))
    add = upload(rt, "ADD", ROWS, at(0, 9), at(1, 12))
    clock.set(at(0, 10))
    token = send_canary(rt, "daily:2026-03-02")
    assert token is not None
    record_canary_arrival(rt, token, mail_id=None, at=at(0, 10, 2))
    clock.set(at(1, 12))
    sub = rt.ledger.get_submission(add)
    rt.ledger.record_verdict(
        sub,
        "presumed_success",
        at=at(1, 12),
        detail={"reasons": ["no failure notice arrived", "listening unbroken: 162 polls"]},
    )
    clock.set(at(2, 9))
    delete = upload(rt, "DELETE", ROWS[:1], at(2, 9), at(3, 12))
    mail(
        rt,
        1,
        at(2, 10, 30),
        "Cohort validation failed NIC-402963-P0Y5D",
        "submission_failed",
        delete,
    )
    clock.set(at(3, 12))
    rt.ledger.record_verdict(
        rt.ledger.get_submission(delete),
        "failed",
        at=at(3, 12),
        detail={"reasons": ["failure notice: invalid date of birth on row 1"]},
    )
    mail(rt, 2, at(3, 15), "There is <b>new</b> data for NIC-402963-P0Y5D", "new_data", None)
    clock.set(at(4, 9))
    due = rt.ledger.make_due(
        rt.ledger.create_submission(NIC, "ADD", ROWS[2:], at=at(4, 9)), at=at(4, 9)
    )
    raise_alert(rt, "disk", "state disk 91% full", "free space on /srv", severity="high")
    return {"add": add, "delete": delete, "due": due.id}


def test_digest_of_a_scripted_week_has_what_a_reader_needs(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    clock = FakeClock(at(0, 7))
    imap = {
        "host": "127.0.0.1",
        "username": "study@example.org",
        "idle": False,
        "poll_interval_seconds": 600,
    }  # the script's polls come every 10 min
    rt = make_runtime(tmp_path, smtp_server, clock, imap=imap)
    ids = script_week(rt, clock)
    clock.set(at(4, 10))
    digest = current_digest(rt, since=at(0, 0))
    text, html = render_digest(digest)

    assert digest.headline == "2 things need you"  # the failed DELETE and the high alert
    add, delete, due = ids["add"], ids["delete"], ids["due"]
    assert f"#{add} ADD 3 rows" in text and "PRESUMED_SUCCESS" in text
    assert "listening unbroken: 162 polls" in text
    assert f"#{delete} DELETE 1 rows" in text and "FAILED" in text
    assert "invalid date of birth on row 1" in text
    # The DELETE's evidence window: polls, Wednesday's gap, the failure mail, actions.
    assert "1 gap(s) over the 30 min limit" in text
    assert "gap Wed 04 Mar 13:00 to Wed 04 Mar 15:00" in text
    assert "[submission_failed] Cohort validation failed" in text
    assert "05 Mar 12:00 verdict failed" in text
    # The ADD's window shows the canary that proved the mail path.
    assert "canary sent Mon 02 Mar 10:00, arrived Mon 02 Mar 10:02" in text
    # Pool: 3 in (the DELETE failed, so nothing left).
    assert "NIC-402963-P0Y5D: 3 participants" in text
    assert f"+3 by #{add} ADD (presumed_success" in text
    # What happens next, and when.
    assert f"upload of submission #{due} (ADD, 1 rows)" in text
    assert "Fri 06 Mar 10:00: upload of submission" in text  # inside today's window
    assert f"the operator decides on submission #{delete}" in text
    assert "next digest" in text
    # Mail, alerts, heartbeat, canary, deliveries (none yet in this week).
    assert "[new_data] enquiries@nhsdigital.nhs.uk: There is <b>new</b> data" in text
    assert "OPEN (high)" in text and "state disk 91% full" in text
    assert "1 sent, 1 arrived, 0 lost" in text
    assert "DELIVERIES TO THE PARTNER\n  none" in text
    assert "last listening cycle: Fri 06 Mar 09:50" in text
    # HTML: the same facts, mail text escaped, never markup.
    assert "There is &lt;b&gt;new&lt;/b&gt; data" in html and "<b>new</b>" not in html
    assert "invalid date of birth on row 1" in html

    doc = digest.to_dict()
    assert [s["id"] for s in doc["submissions"]] == [add, delete, due]
    assert doc["submissions"][1]["window"]["gaps"][0]["start"] == "2026-03-04T13:00:00+00:00"
    assert doc["pools"][0]["count"] == 3


def test_daily_digest_once_per_day_even_without_news_and_once_after_downtime(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    clock = FakeClock(at(0, 6))
    rt = make_runtime(tmp_path, smtp_server, clock)
    job = DigestJob(rt)
    assert job.next_due(clock.now()) == at(0, 7, 30)

    def tick() -> None:
        rt.mail.record_listening(ACCOUNT, "INBOX", clock.now(), "poll")  # the intake is alive
        due = job.next_due(clock.now())
        if due is not None and due <= clock.now():
            job.run(clock.now())

    for day in range(3):
        for hh, mm in ((7, 0), (7, 30), (7, 31), (12, 0), (23, 59)):
            clock.set(at(day, hh, mm))
            tick()
        DigestJob(rt).run(clock.now())  # a second worker (or a restart) the same day
    digests = mails_to(smtp_server, OPERATOR)
    assert len(digests) == 3
    assert all("all quiet, no news" in m["Subject"] for m in digests)
    assert "Mon 02 Mar" in digests[0]["Subject"] and "Wed 04 Mar" in digests[2]["Subject"]
    assert digests[0].get_body(preferencelist=("html",)) is not None
    assert "if it stops arriving, seftpilot" in body(digests[0])

    # Down from Wednesday night to Saturday noon: one digest on restart, not three.
    clock.set(at(5, 12))
    restarted = DigestJob(rt)
    assert restarted.next_due(clock.now()) == at(5, 7, 30)  # overdue: runs at once
    restarted.run(clock.now())
    restarted.run(clock.now())
    assert len(mails_to(smtp_server, OPERATOR)) == 4
    assert restarted.next_due(clock.now()) == at(6, 7, 30)
