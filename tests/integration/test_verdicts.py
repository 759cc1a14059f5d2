"""Verdicts from recorded evidence, notices correlated to submissions, and what follows.

Real parts: the SQLite ledger, the mail parser and the default rules on synthetic NHS
mails, an in-process SFTP server for uploads and aiosmtpd for the operator's alerts; time
is a FakeClock. The intake itself is not started: its records (listening cycles, received
mail) are written with its own MailStore, and the notice handler is called as the
dispatcher would call it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import pytest

from seftpilot.adapters.mail_store import MailRecord
from seftpilot.adapters.mailparse import parse_message
from seftpilot.adapters.rules_files import default_rules_path, load_rules
from seftpilot.core.ledger import plan
from seftpilot.core.message import Message
from seftpilot.core.rules import Classification, classify
from seftpilot.service.dispatch import Dispatcher
from seftpilot.service.intake import account_name
from seftpilot.service.submission_mail import parse_error_report, register_handlers
from seftpilot.service.submit import submit_next
from seftpilot.service.verdicts import VerdictJob, resolve_submission, settle
from tests.fixtures.sftp_server import InProcessSftpServer
from tests.fixtures.smtp_server import SmtpServer
from tests.integration.test_submit import FILE, MONDAY_10, NIC, World, rows, world_factory

__all__ = ["world_factory"]  # the fixture, imported for this module's tests

TUESDAY_NOON = datetime(2026, 3, 3, 12, 0, tzinfo=UTC)
RULES = load_rules([default_rules_path()])
OTHER_NIC = "NIC-123456-ABCDE"


def upload(world: World, prefix: str = "S", count: int = 3, nic: str = NIC) -> int:
    """A due submission recorded as uploaded now (no transport: the ledger's record)."""
    ledger = world.runtime.ledger
    now = world.clock.now()
    sub = ledger.create_submission(nic, "ADD", rows(prefix, count), at=now, state="due")
    sub = ledger.claim_upload(sub, at=now, nhs_day=date(2026, 3, 2), file_name=f"{nic}.csv")
    sub = ledger.record_upload(sub, at=now, evidence_deadline=TUESDAY_NOON)
    return sub.id


def listen(world: World, start: datetime, end: datetime, every: timedelta) -> None:
    settings = world.settings
    at = start
    while at <= end:
        world.runtime.mail.record_listening(
            account_name(settings.imap), settings.imap.folder, at, "poll"
        )
        at += every


def nhs_mail(
    subject: str,
    body: str,
    *,
    attachment: tuple[str, bytes] | None = None,
    sender: str = "dars.cohort@nhsdigital.nhs.uk",
) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"NHS England DARS <{sender}>"
    msg["To"] = "linkage@study.example.org"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime(2026, 3, 3, 7, 30, tzinfo=UTC))
    msg["Message-ID"] = f"<{abs(hash((subject, body)))}@nhsdigital.nhs.uk>"
    msg.set_content(body)
    if attachment is not None:
        name, payload = attachment
        msg.add_attachment(payload, maintype="text", subtype="csv", filename=name)
    return msg.as_bytes()


RESUBMIT = nhs_mail(
    f"Cohort submission {NIC}",
    f"Dear Cohort Submitter,\n\nYour file {NIC}.csv could not be processed due to a "
    "technical issue on our side.\nPlease resubmit it.\n\nData Access Request Service",
)


def receive(
    world: World, raw: bytes, at: datetime, uid: int
) -> tuple[MailRecord, Message, Classification]:
    """What the intake records for one fetched message (then hands to the dispatcher)."""
    settings = world.settings
    message = parse_message(raw)
    found = classify(message, RULES)
    record = world.runtime.mail.record_received(
        account=account_name(settings.imap),
        folder=settings.imap.folder,
        uidvalidity=1,
        uid=uid,
        key=f"mid:{message.message_id}",
        message_id=message.message_id,
        received_at=at,
        sent_at=message.date,
        from_addr=message.from_addr,
        subject=message.subject,
        size=len(raw),
        rule=found.rule,
        class_=found.class_,
        action=found.action,
        captures=found.captures,
        defects=message.defects,
        now=at,
    )
    return record, message, found


def deliver(world: World, raw: bytes, at: datetime, uid: int) -> Classification:
    dispatcher = Dispatcher()
    register_handlers(dispatcher, world.runtime)
    record, message, found = receive(world, raw, at, uid)
    dispatcher(record, message, found)
    return found


def alert_subjects(world: World) -> list[str]:
    return [str(m["Subject"]) for m in world.mails()]


@pytest.fixture
def plain(world_factory: Callable[..., World], smtp_server: SmtpServer) -> World:
    return world_factory(smtp=smtp_server, transport="manual")


# -- presumed success ----------------------------------------------------------------------
def test_presumed_success_needs_unbroken_listening_and_a_cycle_after_the_deadline(
    plain: World,
) -> None:
    sub_id = upload(plain)
    listen(plain, MONDAY_10, TUESDAY_NOON - timedelta(minutes=5), timedelta(minutes=20))
    job = VerdictJob(plain.runtime)
    # No cycle after the deadline yet: wait for one, or for the gap limit to pass.
    plain.clock.set(TUESDAY_NOON)
    assert job.next_due(plain.clock.now()) == TUESDAY_NOON + timedelta(minutes=30)
    listen(
        plain,
        TUESDAY_NOON + timedelta(minutes=2),
        TUESDAY_NOON + timedelta(minutes=2),
        timedelta(1),
    )
    plain.clock.set(TUESDAY_NOON + timedelta(minutes=3))
    assert job.next_due(plain.clock.now()) == TUESDAY_NOON
    job.run(plain.clock.now())
    (outcome,) = job.last_outcomes
    assert outcome.verdict == "presumed_success", outcome.reasons
    assert any("listening unbroken" in r for r in outcome.reasons)
    sub = plain.runtime.ledger.get_submission(sub_id)
    assert sub.state == "presumed_success"
    assert sub.verdict_detail["evidence"]["listening"]["gaps"] == []
    assert len(plain.runtime.ledger.pool(NIC)) == 3
    assert job.next_due(plain.clock.now()) is None
    assert plain.mails() == []  # nothing for the operator to do


# -- unknown -------------------------------------------------------------------------------
def test_a_listening_gap_makes_it_unknown_alerts_and_the_operator_resolves_it(
    plain: World,
) -> None:
    sub_id = upload(plain)
    listen(plain, MONDAY_10, datetime(2026, 3, 2, 22, 0, tzinfo=UTC), timedelta(minutes=20))
    listen(
        plain,
        datetime(2026, 3, 3, 1, 0, tzinfo=UTC),
        TUESDAY_NOON + timedelta(minutes=5),
        timedelta(minutes=20),
    )
    plain.clock.set(TUESDAY_NOON + timedelta(minutes=10))
    job = VerdictJob(plain.runtime)
    job.run(plain.clock.now())
    (outcome,) = job.last_outcomes
    assert outcome.verdict == "unknown"
    assert any("listening gap of 3 h" in r for r in outcome.reasons), outcome.reasons
    assert len(plain.runtime.ledger.pool(NIC)) == 0  # unknown never changes the pool
    (alert,) = [m for m in plain.mails() if "verdict unknown" in str(m["Subject"])]
    assert f"submission resolve {sub_id}" in alert.get_content()

    done = resolve_submission(
        plain.runtime, sub_id, success=True, note="NHS England confirmed by phone"
    )
    assert done.verdict == "confirmed_success"
    sub = plain.runtime.ledger.get_submission(sub_id)
    assert sub.verdict_detail["note"] == "NHS England confirmed by phone"
    assert sub.verdict_detail["previous"]["verdict"] == "unknown"
    assert len(plain.runtime.ledger.pool(NIC)) == 3


# -- failed --------------------------------------------------------------------------------
def test_a_correlated_failure_notice_fails_it_and_retries_on_a_later_nhs_day(
    world_factory: Callable[..., World], sftp_server: InProcessSftpServer, smtp_server: SmtpServer
) -> None:
    world = world_factory(sftp=sftp_server, smtp=smtp_server)
    first = world.runtime.ledger.create_submission(
        NIC, "ADD", rows("S", 3), at=MONDAY_10, state="due"
    )
    assert submit_next(world.runtime, world.agreement).status == "uploaded"
    (sftp_server.root / FILE).unlink()  # NHS England collected it
    listen(world, MONDAY_10, TUESDAY_NOON + timedelta(minutes=5), timedelta(minutes=20))

    found = deliver(world, RESUBMIT, datetime(2026, 3, 3, 7, 31, tzinfo=UTC), uid=1)
    assert (found.class_, found.action) == ("submission_failed", "retry")
    (notice,) = world.runtime.ledger.notices_between(MONDAY_10, TUESDAY_NOON)
    assert notice.submission_id == first.id and not notice.ambiguous

    world.clock.set(TUESDAY_NOON + timedelta(minutes=10))
    job = VerdictJob(world.runtime)
    job.run(world.clock.now())
    (outcome,) = job.last_outcomes
    assert outcome.verdict == "failed"
    assert outcome.captures and outcome.captures[0]["file"] == FILE
    assert outcome.retry_id is not None and "retry as submission" in outcome.next_step
    retry = world.runtime.ledger.get_submission(outcome.retry_id)
    assert (retry.state, retry.attempt, retry.retry_of) == ("due", 2, first.id)
    assert retry.due_on == date(2026, 3, 3)
    assert world.runtime.ledger.get_submission(first.id).state == "retried"

    # The retry goes on Tuesday, a later NHS day than Monday's failed upload.
    world.clock.set(datetime(2026, 3, 3, 13, 0, tzinfo=UTC))
    again = submit_next(world.runtime, world.agreement)
    assert again.status == "uploaded" and again.submission_id == retry.id
    assert world.runtime.ledger.get_submission(retry.id).nhs_day == date(2026, 3, 3)


def test_retries_are_bounded_by_max_retries(
    world_factory: Callable[..., World], smtp_server: SmtpServer
) -> None:
    world = world_factory(smtp=smtp_server, transport="manual", agreement_extra={"max_retries": 0})
    sub_id = upload(world)
    listen(world, MONDAY_10, TUESDAY_NOON + timedelta(minutes=5), timedelta(minutes=20))
    deliver(world, RESUBMIT, datetime(2026, 3, 3, 7, 31, tzinfo=UTC), uid=1)
    world.clock.set(TUESDAY_NOON + timedelta(minutes=10))
    job = VerdictJob(world.runtime)
    job.run(world.clock.now())
    (outcome,) = job.last_outcomes
    assert outcome.verdict == "failed" and outcome.retry_id is None
    assert "no retry left" in outcome.next_step
    assert world.runtime.ledger.get_submission(sub_id).state == "failed"
    assert any(f"submission #{sub_id} failed" in s for s in alert_subjects(world))


ERROR_CSV = (
    b"UNIQUE_REFERENCE,NHS_NO,DATE_OF_BIRTH,ERROR_CATEGORY,ERROR_DESCRIPTION\r\n"
    b"S-00002,9990000018,19700101,invalid_nhs_number,Invalid NHS number\r\n"
    b"S-00003,9990000026,1970-13-01,incorrect_format_for_date_of_birth,Wrong format\r\n"
    b"S-00003,9990000034,19800202,unique_reference_duplicate,Duplicate\r\n"
)


def test_an_attached_error_report_keeps_only_the_failing_rows_out(plain: World) -> None:
    assert parse_error_report(ERROR_CSV) == ["S-00002", "S-00003"]
    sub_id = upload(plain, count=4)
    listen(plain, MONDAY_10, TUESDAY_NOON + timedelta(minutes=5), timedelta(minutes=20))
    raw = nhs_mail(
        f"Cohort-Data-Validation-Errors for {NIC}",
        f"Your cohort file {NIC}.csv was received but could not be accepted.\n"
        "2 of 4 records failed validation.",
        attachment=(f"Cohort-Data-Validation-Errors_{NIC}_20260303.csv", ERROR_CSV),
    )
    found = deliver(plain, raw, datetime(2026, 3, 3, 7, 31, tzinfo=UTC), uid=1)
    assert (found.class_, found.action) == ("submission_failed", "alert")
    rejected = [
        e
        for e in plain.runtime.store.events("submission", sub_id)
        if e["kind"] == "submission.rows_rejected"
    ]
    assert rejected and rejected[0]["detail"]["rows"] == 2

    plain.clock.set(TUESDAY_NOON + timedelta(minutes=10))
    VerdictJob(plain.runtime).run(plain.clock.now())
    sub = plain.runtime.ledger.get_submission(sub_id)
    assert sub.state == "failed"
    assert any(f"submission #{sub_id} failed" in s for s in alert_subjects(plain))
    # A new attempt carries only the rows NHS England did not refuse.
    again = plain.runtime.ledger.retry(sub, at=plain.clock.now())
    assert [r.unique_reference for r in plain.runtime.ledger.rows(again.id)] == [
        "S-00001",
        "S-00004",
    ]


def test_an_ambiguous_notice_alerts_and_both_windows_stay_unknown(
    world_factory: Callable[..., World], smtp_server: SmtpServer
) -> None:
    world = world_factory(smtp=smtp_server, transport="manual", agreements=(NIC, OTHER_NIC))
    a = upload(world, "A", nic=NIC)
    b = upload(world, "B", nic=OTHER_NIC)
    listen(world, MONDAY_10, TUESDAY_NOON + timedelta(minutes=5), timedelta(minutes=20))
    vague = nhs_mail(
        "Cohort submission rejected",
        "Your cohort file has been rejected. Please check the file and submit it again.",
    )
    found = deliver(world, vague, datetime(2026, 3, 3, 8, 0, tzinfo=UTC), uid=1)
    assert found.class_ == "submission_failed"
    (notice,) = world.runtime.ledger.notices_between(MONDAY_10, TUESDAY_NOON)
    assert notice.ambiguous and notice.submission_id is None
    assert any("several submissions" in s for s in alert_subjects(world))

    world.clock.set(TUESDAY_NOON + timedelta(minutes=10))
    job = VerdictJob(world.runtime)
    job.run(world.clock.now())
    assert {o.submission_id: o.verdict for o in job.last_outcomes} == {a: "unknown", b: "unknown"}
    assert all(
        any("could concern more than one submission" in r for r in o.reasons)
        for o in job.last_outcomes
    )


def test_a_notice_handled_after_a_presumed_verdict_settles_it_late(plain: World) -> None:
    sub_id = upload(plain)
    listen(plain, MONDAY_10, TUESDAY_NOON + timedelta(minutes=5), timedelta(minutes=20))
    plain.clock.set(TUESDAY_NOON + timedelta(minutes=10))
    # The verdict ran before the intake handled a notice received at 11:55.
    outcome = settle(plain.runtime, plain.runtime.ledger.get_submission(sub_id), plain.clock.now())
    assert outcome.verdict == "presumed_success"
    plain.clock.advance(timedelta(minutes=1))
    deliver(plain, RESUBMIT, datetime(2026, 3, 3, 11, 55, tzinfo=UTC), uid=1)
    sub = plain.runtime.ledger.get_submission(sub_id)
    assert sub.state == "retried"  # failed late, then retried (the rule says retry)
    assert (
        sub.verdict == "failed" and sub.verdict_detail["previous"]["verdict"] == "presumed_success"
    )
    assert len(plain.runtime.ledger.pool(NIC)) == 0
    # Handling the same notice again (the intake retries handlers) changes nothing more.
    before = len(plain.runtime.store.events())
    deliver_again = receive(plain, RESUBMIT, datetime(2026, 3, 3, 11, 55, tzinfo=UTC), uid=1)
    dispatcher = Dispatcher()
    register_handlers(dispatcher, plain.runtime)
    dispatcher(*deliver_again)
    assert len(plain.runtime.store.events()) == before


# -- campaigns -----------------------------------------------------------------------------
def test_campaign_add_goes_only_after_its_delete_reached_a_successful_verdict(
    world_factory: Callable[..., World], sftp_server: InProcessSftpServer, smtp_server: SmtpServer
) -> None:
    world = world_factory(
        sftp=sftp_server, smtp=smtp_server, start=datetime(2026, 2, 23, 10, 0, tzinfo=UTC)
    )
    ledger = world.runtime.ledger
    # What NHS England holds already: an ADD accepted a week earlier.
    old = ledger.create_submission(
        NIC, "ADD", rows("OLD", 2, seed=7), at=world.clock.now(), state="due"
    )
    old = ledger.claim_upload(old, at=world.clock.now(), nhs_day=date(2026, 2, 23))
    old = ledger.record_upload(old, at=world.clock.now(), evidence_deadline=world.clock.now())
    ledger.record_verdict(old, "presumed_success", at=world.clock.now())
    pool = ledger.pool(NIC)
    target = rows("NEW", 3, seed=9)
    steps = plan(pool, [r.unique_reference for r in target], "replace")
    assert [s.action for s in steps] == ["DELETE", "ADD"]
    campaign = ledger.create_campaign(
        NIC, "replace", steps, at=world.clock.now(), pool=pool, add_rows=target
    )

    world.clock.set(MONDAY_10)
    first = submit_next(world.runtime, world.agreement)
    assert first.status == "uploaded" and first.action == "DELETE"
    assert b",DELETE\r\n" in (sftp_server.root / FILE).read_bytes()
    (sftp_server.root / FILE).unlink()
    listen(world, MONDAY_10, TUESDAY_NOON + timedelta(minutes=5), timedelta(minutes=20))

    # Tuesday morning: a new day, but the ADD waits for the DELETE's verdict.
    world.clock.set(datetime(2026, 3, 3, 9, 30, tzinfo=UTC))
    waiting = submit_next(world.runtime, world.agreement)
    assert waiting.status == "nothing_due", waiting.message
    assert sftp_server.root.joinpath(FILE).exists() is False

    world.clock.set(TUESDAY_NOON + timedelta(minutes=10))
    job = VerdictJob(world.runtime)
    job.run(world.clock.now())
    (verdict,) = job.last_outcomes
    assert verdict.verdict == "presumed_success"
    assert "step 2 (ADD) is due" in verdict.next_step
    assert len(ledger.pool(NIC)) == 0  # the DELETE took the old references out

    world.clock.set(datetime(2026, 3, 3, 13, 0, tzinfo=UTC))
    second = submit_next(world.runtime, world.agreement)
    assert second.status == "uploaded" and second.action == "ADD"
    assert b",ADD\r\n" in (sftp_server.root / FILE).read_bytes()
    assert ledger.get_campaign(campaign.id).state == "running"


def test_an_unknown_step_blocks_its_campaign_until_resolved(plain: World) -> None:
    ledger = plain.runtime.ledger
    target = rows("N", 2)
    steps = plan([], [r.unique_reference for r in target], "diff", max_rows=1)
    campaign = ledger.create_campaign(
        NIC, "diff", steps, at=MONDAY_10, pool=ledger.pool(NIC), add_rows=target
    )
    outcome: Any = submit_next(plain.runtime, plain.agreement)
    assert outcome.status == "awaiting_operator"
    from seftpilot.service.submit import confirm_upload

    confirm_upload(plain.runtime, outcome.submission_id, at=MONDAY_10 + timedelta(minutes=5))
    # No listening at all: unknown, and the campaign is blocked.
    plain.clock.set(TUESDAY_NOON + timedelta(minutes=45))
    VerdictJob(plain.runtime).run(plain.clock.now())
    assert ledger.get_campaign(campaign.id).state == "blocked"
    plain.clock.set(datetime(2026, 3, 3, 13, 0, tzinfo=UTC))
    assert submit_next(plain.runtime, plain.agreement).status == "nothing_due"

    resolved = resolve_submission(
        plain.runtime, outcome.submission_id, success=True, note="checked with NHS England"
    )
    assert "step 2 (ADD) is due" in resolved.next_step
    assert ledger.get_campaign(campaign.id).state == "running"


# -- canaries ------------------------------------------------------------------------------
CANARY = {"enabled": True, "address": "linkage@study.example.org", "max_delay_minutes": 30}


def test_with_canaries_enabled_silence_needs_a_canary_that_came_back(
    world_factory: Callable[..., World], smtp_server: SmtpServer
) -> None:
    from seftpilot.service.monitor import record_canary_arrival, send_canary

    world = world_factory(smtp=smtp_server, transport="manual", canary=CANARY)
    sub_id = upload(world)
    listen(world, MONDAY_10, TUESDAY_NOON + timedelta(minutes=5), timedelta(minutes=20))
    world.clock.set(datetime(2026, 3, 2, 14, 0, tzinfo=UTC))
    token = send_canary(world.runtime, f"window:{sub_id}")
    assert token is not None
    assert any(token in str(m["Subject"]) for m in world.mails())  # it really went by SMTP
    record_canary_arrival(
        world.runtime, token, mail_id=None, at=datetime(2026, 3, 2, 14, 4, tzinfo=UTC)
    )
    world.clock.set(TUESDAY_NOON + timedelta(minutes=10))
    job = VerdictJob(world.runtime)
    job.run(world.clock.now())
    (outcome,) = job.last_outcomes
    assert outcome.verdict == "presumed_success", outcome.reasons
    assert any("canary sent Mon 02 Mar 14:00 arrived" in r for r in outcome.reasons)


def test_with_canaries_enabled_no_canary_means_unknown(
    world_factory: Callable[..., World], smtp_server: SmtpServer
) -> None:
    world = world_factory(smtp=smtp_server, transport="manual", canary=CANARY)
    sub_id = upload(world)
    listen(world, MONDAY_10, TUESDAY_NOON + timedelta(minutes=5), timedelta(minutes=20))
    world.clock.set(TUESDAY_NOON + timedelta(minutes=10))
    job = VerdictJob(world.runtime)
    job.run(world.clock.now())
    (outcome,) = job.last_outcomes
    assert outcome.verdict == "unknown"
    assert outcome.reasons == ["no mail-path canary was sent during the window"]
    assert world.runtime.ledger.get_submission(sub_id).verdict_detail["evidence"]["canaries"] == {
        "required": True,
        "sent": 0,
        "arrived": 0,
    }


# -- the service loop ----------------------------------------------------------------------
def test_the_service_loop_uploads_at_the_window_and_judges_at_the_deadline(
    world_factory: Callable[..., World], sftp_server: InProcessSftpServer, smtp_server: SmtpServer
) -> None:
    from seftpilot.service.submit import SubmitJob
    from seftpilot.service.watcher import Watcher

    world = world_factory(
        sftp=sftp_server, smtp=smtp_server, start=datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    )
    sub = world.runtime.ledger.create_submission(
        NIC, "ADD", rows("W", 2), at=world.clock.now(), state="due"
    )
    watcher = Watcher(
        clock=world.clock,
        jobs=[SubmitJob(world.runtime, world.agreement), VerdictJob(world.runtime)],
    )
    assert watcher.run_pending() == 0  # 08:00: before the window, nothing is due
    assert world.remote_files() == []
    world.clock.set(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    assert watcher.run_pending() == 1
    assert world.remote_files() == [FILE]
    world.clock.advance(timedelta(hours=1))
    assert watcher.run_pending() == 0  # one a day: the timer does not fire again
    listen(
        world,
        datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
        TUESDAY_NOON + timedelta(minutes=5),
        timedelta(minutes=20),
    )
    world.clock.set(TUESDAY_NOON + timedelta(minutes=6))
    assert watcher.run_pending() == 1
    assert world.runtime.ledger.get_submission(sub.id).state == "presumed_success"
    assert watcher.failing_jobs() == {}
