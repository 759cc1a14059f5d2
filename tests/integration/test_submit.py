"""The upload workflow against a real SFTP server and a real SMTP server, on a fake clock.

What an operator relies on: at most one file a day per agreement, only inside the upload
window, never a second upload after a crash (the remote folder is listed first), a file that
fails its pre-flight never leaves, and a manual upload waits for `submission confirm`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from seftpilot.adapters.clock import FakeClock
from seftpilot.adapters.ledger_store import RefRow, Submission
from seftpilot.adapters.sftp import SftpClient
from seftpilot.config import Settings
from seftpilot.core.synthetic import synthetic_nhs_numbers
from seftpilot.errors import DailyLimitReached
from seftpilot.service import submit as submit_mod
from seftpilot.service.runtime import Runtime
from seftpilot.service.submit import SubmitJob, confirm_upload, submit_next
from tests.fixtures.sftp_server import InProcessSftpServer
from tests.fixtures.smtp_server import SmtpServer

NIC = "NIC-402963-P0Y5D"
FILE = f"{NIC}.csv"
# Monday 2 March 2026, 10:00 in London (GMT): a working day, inside the 09:00-16:00 window.
MONDAY_10 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
OPERATOR = "operator@study.example"


def rows(prefix: str, count: int, seed: int = 1) -> list[RefRow]:
    """Synthetic participants (NHS numbers from the 999 range) as the ledger keeps them."""
    return [
        RefRow(
            f"{prefix}-{i:05d}",
            nhs,
            {"UNIQUE_REFERENCE": f"{prefix}-{i:05d}", "NHS_NO": nhs, "DATE_OF_BIRTH": "19800101"},
        )
        for i, nhs in enumerate(synthetic_nhs_numbers(count, seed), start=1)
    ]


@dataclass
class World:
    """One site: settings, a fake clock and the runtime built from them."""

    tmp: Path
    clock: FakeClock
    settings: Settings
    runtime: Runtime
    sftp: InProcessSftpServer | None
    smtp: SmtpServer | None

    def restart(self) -> Runtime:
        """A new process on the same state directory (what a crash and restart leave)."""
        self.runtime.close()
        self.runtime = Runtime(self.settings, self.clock)
        return self.runtime

    @property
    def agreement(self) -> Any:
        return self.settings.agreement[0]

    def due(self, prefix: str = "S", count: int = 3, action: str = "ADD") -> Submission:
        return self.runtime.ledger.create_submission(
            NIC,
            action,  # type: ignore[arg-type]
            rows(prefix, count),
            at=self.clock.now(),
            state="due",
        )

    def remote_files(self) -> list[str]:
        assert self.sftp is not None
        return sorted(p.name for p in self.sftp.root.iterdir())

    def mails(self) -> list[Any]:
        assert self.smtp is not None
        return [m.message for m in self.smtp.messages]


def make_settings(
    tmp: Path,
    *,
    sftp: InProcessSftpServer | None = None,
    smtp: SmtpServer | None = None,
    transport: str = "sftp",
    agreements: tuple[str, ...] = (NIC,),
    agreement_extra: dict[str, Any] | None = None,
    **extra: Any,
) -> Settings:
    upload: dict[str, Any] = {"transport": transport, "outbox": tmp / "outbox"}
    if sftp is not None:
        upload["sftp"] = sftp.endpoint()
    values: dict[str, Any] = {
        "state_dir": tmp / "state",
        "agreement": [
            {"nic": nic, "upload": upload, **(agreement_extra or {})} for nic in agreements
        ],
        "operator": {"emails": [OPERATOR]},
        "canary": {"enabled": False},
        **extra,
    }
    if smtp is not None:
        values["smtp"] = smtp.settings()
    return Settings(**values)


@pytest.fixture
def world_factory(tmp_path: Path) -> Iterator[Callable[..., World]]:
    made: list[World] = []

    def make(
        *,
        sftp: InProcessSftpServer | None = None,
        smtp: SmtpServer | None = None,
        start: datetime = MONDAY_10,
        **options: Any,
    ) -> World:
        settings = make_settings(tmp_path, sftp=sftp, smtp=smtp, **options)
        clock = FakeClock(start)
        world = World(tmp_path, clock, settings, Runtime(settings, clock), sftp, smtp)
        made.append(world)
        return world

    yield make
    for world in made:
        world.runtime.close()


@pytest.fixture
def world(
    world_factory: Callable[..., World], sftp_server: InProcessSftpServer, smtp_server: SmtpServer
) -> World:
    return world_factory(sftp=sftp_server, smtp=smtp_server)


def states(world: World) -> dict[int, str]:
    return {s.id: s.state for s in world.runtime.ledger.list_submissions()}


# -- one file a day ------------------------------------------------------------------------
def test_uploads_the_exact_file_once_per_nhs_day_even_when_asked_twice(world: World) -> None:
    first, second = world.due("A"), world.due("B")
    outcome = submit_next(world.runtime, world.agreement)
    assert outcome.status == "uploaded", outcome.message
    assert outcome.submission_id == first.id
    assert world.remote_files() == [FILE]  # the temporary name is gone
    body = (world.sftp.root / FILE).read_bytes()  # type: ignore[union-attr]
    lines = body.split(b"\r\n")
    assert lines[0].startswith(b"UNIQUE_REFERENCE,NHS_NO,") and lines[0].endswith(b",STATUS")
    assert body.endswith(b"\r\n") and b"\n" not in body.replace(b"\r\n", b"")
    assert lines[1].startswith(b"A-00001,") and lines[1].endswith(b",ADD")
    assert len([line for line in lines if line]) == 4

    sub = world.runtime.ledger.get_submission(first.id)
    assert sub.state == "uploaded" and sub.nhs_day == date(2026, 3, 2)
    assert sub.file_name == FILE and sub.file_sha256
    # Judged at noon on the next working day (Tuesday; GMT in March before the change).
    assert sub.evidence_deadline == datetime(2026, 3, 3, 12, 0, tzinfo=UTC)
    # Nothing identifying is left in the work folder.
    assert not list((world.tmp / "state" / "outgoing").glob("*/*"))

    world.clock.advance(timedelta(hours=2))
    written = world.sftp.bytes_written  # type: ignore[union-attr]
    again = submit_next(world.runtime, world.agreement)
    assert again.status == "not_now" and "already has an upload" in again.message
    assert again.next_opportunity == datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
    assert world.sftp.bytes_written == written  # type: ignore[union-attr]
    assert states(world)[second.id] == "due"
    # The ledger itself refuses a second claim that day, whoever asks.
    with pytest.raises(DailyLimitReached):
        world.runtime.ledger.claim_upload(second, at=world.clock.now(), nhs_day=date(2026, 3, 2))

    # Next working day (NHS England's intake collected Monday's file overnight): the
    # second file goes.
    (world.sftp.root / FILE).unlink()  # type: ignore[union-attr]
    world.clock.set(datetime(2026, 3, 3, 9, 30, tzinfo=UTC))
    nxt = submit_next(world.runtime, world.agreement)
    assert nxt.status == "uploaded" and nxt.submission_id == second.id
    assert world.runtime.ledger.get_submission(second.id).nhs_day == date(2026, 3, 3)


def test_outside_the_window_or_on_a_weekend_nothing_happens(
    world_factory: Callable[..., World], sftp_server: InProcessSftpServer, smtp_server: SmtpServer
) -> None:
    early = world_factory(
        sftp=sftp_server, smtp=smtp_server, start=datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    )
    sub = early.due()
    before = len(early.runtime.store.events())
    outcome = submit_next(early.runtime, early.agreement)
    assert outcome.status == "not_now" and "outside the upload window" in outcome.message
    assert outcome.next_opportunity == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert early.remote_files() == [] and states(early)[sub.id] == "due"
    assert len(early.runtime.store.events()) == before
    job = SubmitJob(early.runtime, early.agreement)
    assert job.next_due(early.clock.now()) == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    # Saturday 7 March: the next opportunity is Monday's window.
    early.clock.set(datetime(2026, 3, 7, 11, 0, tzinfo=UTC))
    outcome = submit_next(early.runtime, early.agreement)
    assert outcome.status == "not_now" and "not a working day" in outcome.message
    assert outcome.next_opportunity == datetime(2026, 3, 9, 9, 0, tzinfo=UTC)
    # Good Friday 3 April 2026 (a bank holiday; BST): Tuesday after Easter Monday.
    early.clock.set(datetime(2026, 4, 3, 11, 0, tzinfo=UTC))
    outcome = submit_next(early.runtime, early.agreement)
    assert outcome.status == "not_now"
    assert outcome.next_opportunity == datetime(2026, 4, 7, 8, 0, tzinfo=UTC)  # 09:00 BST
    assert early.remote_files() == []


# -- crash safety --------------------------------------------------------------------------
def _claim_and_maybe_upload(world: World, sub: Submission, *, upload: bool) -> None:
    """What a process that died between the upload and its record leaves behind."""
    runtime = world.runtime
    prepared = submit_mod.prepare(runtime, world.agreement, sub)
    runtime.ledger.claim_upload(
        sub,
        at=world.clock.now(),
        nhs_day=date(2026, 3, 2),
        file_name=prepared.file_name,
        file_sha256=prepared.sha256,
        size=prepared.size,
    )
    if upload:
        with SftpClient(world.agreement.upload.sftp) as client:
            client.upload(prepared.path, prepared.file_name)
    submit_mod.discard_work(runtime, sub.id)


def test_restart_after_a_crash_mid_upload_records_the_file_found_instead_of_resending(
    world: World,
) -> None:
    sub = world.due()
    _claim_and_maybe_upload(world, sub, upload=True)
    written = world.sftp.bytes_written  # type: ignore[union-attr]
    world.clock.advance(timedelta(minutes=3))

    runtime = world.restart()
    outcome = submit_next(runtime, world.agreement)
    assert outcome.reconciled == [{"submission_id": sub.id, "result": "uploaded"}]
    assert outcome.status == "not_now"  # the day is spent: the file did go
    assert world.sftp.bytes_written == written  # type: ignore[union-attr]
    found = runtime.ledger.get_submission(sub.id)
    assert found.state == "uploaded"
    assert found.uploaded_at == MONDAY_10  # the window opens at the claim: never later
    assert found.evidence_deadline == datetime(2026, 3, 3, 12, 0, tzinfo=UTC)
    kinds = [e["kind"] for e in runtime.store.events("submission", sub.id)]
    assert kinds[-3:] == [
        "submission.upload_lost",
        "submission.remote_found",
        "submission.reconciled",
    ]


def test_restart_after_a_crash_before_any_byte_returns_to_due_and_uploads_once(
    world: World,
) -> None:
    sub = world.due()
    _claim_and_maybe_upload(world, sub, upload=False)
    runtime = world.restart()
    outcome = submit_next(runtime, world.agreement)
    assert outcome.reconciled == [{"submission_id": sub.id, "result": "absent"}]
    # Proved absent, so it may go the same NHS day; exactly one file arrives.
    assert outcome.status == "uploaded" and outcome.submission_id == sub.id
    assert world.remote_files() == [FILE]
    kinds = [e["kind"] for e in runtime.store.events("submission", sub.id)]
    assert kinds.count("submission.claim") == 2
    assert "submission.remote_absent" in kinds


def test_dropped_connection_mid_upload_is_settled_by_listing_then_retried(
    world: World,
) -> None:
    sub = world.due(count=200)
    world.sftp.drop_after_bytes = 1000  # type: ignore[union-attr]
    outcome = submit_next(world.runtime, world.agreement)
    assert outcome.status == "failed", outcome.message
    assert "proves nothing arrived" in outcome.message
    assert FILE not in world.remote_files()  # at most the temporary name
    assert states(world)[sub.id] == "due"
    # The operator hears of it.
    assert any(f"submission #{sub.id}" in str(m["Subject"]) for m in world.mails())

    world.clock.advance(timedelta(minutes=20))
    again = submit_next(world.runtime, world.agreement)
    assert again.status == "uploaded"
    assert FILE in world.remote_files()


def test_a_remote_file_of_the_wrong_size_blocks_everything_and_alerts(world: World) -> None:
    sub = world.due()
    _claim_and_maybe_upload(world, sub, upload=False)
    (world.sftp.root / FILE).write_bytes(b"someone else's half file")  # type: ignore[union-attr]
    runtime = world.restart()
    outcome = submit_next(runtime, world.agreement)
    assert outcome.status == "blocked" and not outcome.ok
    assert states(world)[sub.id] == "upload_unknown"
    assert any("does not match" in str(m["Subject"]) for m in world.mails())


# -- pre-flight ----------------------------------------------------------------------------
def test_a_file_that_fails_its_preflight_never_leaves_and_the_operator_is_told(
    world: World,
) -> None:
    bad = rows("X", 3)
    bad[1] = RefRow("X-00002", "9990000019", {"NHS_NO": "9990000019", "DATE_OF_BIRTH": "1980"})
    sub = world.runtime.ledger.create_submission(NIC, "ADD", bad, at=MONDAY_10, state="due")
    outcome = submit_next(world.runtime, world.agreement)
    assert outcome.status == "refused" and not outcome.ok
    codes = {p["code"] for p in outcome.problems}
    assert "invalid_nhs_number" in codes
    assert {p["row"] for p in outcome.problems} == {2}
    assert world.remote_files() == [] and states(world)[sub.id] == "due"
    alerts = [m for m in world.mails() if "pre-flight" in str(m["Subject"])]
    assert alerts and "9990000019" not in alerts[0].get_content()  # no identifiers by mail


def test_an_occupied_remote_name_is_never_overwritten(world: World) -> None:
    world.due()
    (world.sftp.root / FILE).write_bytes(b"yesterday's file, still there")  # type: ignore[union-attr]
    outcome = submit_next(world.runtime, world.agreement)
    assert outcome.status == "refused" and "already holds" in outcome.message
    assert (world.sftp.root / FILE).read_bytes() == b"yesterday's file, still there"  # type: ignore[union-attr]
    assert all(s == "due" for s in states(world).values())


def test_dry_run_says_what_would_happen_and_changes_nothing(world: World) -> None:
    sub = world.due()
    before = world.runtime.store.events()
    outcome = submit_next(world.runtime, world.agreement, dry_run=True)
    assert outcome.status == "would_upload" and outcome.submission_id == sub.id
    assert FILE in outcome.message and outcome.dry_run
    assert world.runtime.store.events() == before
    assert world.remote_files() == [] and world.mails() == []


# -- manual transport ----------------------------------------------------------------------
def test_manual_transport_mails_instructions_and_waits_for_confirm(
    world_factory: Callable[..., World], smtp_server: SmtpServer
) -> None:
    w = world_factory(smtp=smtp_server, transport="manual")
    sub = w.due()
    outcome = submit_next(w.runtime, w.agreement)
    assert outcome.status == "awaiting_operator" and outcome.ok
    placed = w.tmp / "outbox" / f"submission-{sub.id}" / FILE
    assert stat.S_IMODE(placed.stat().st_mode) == 0o600
    assert stat.S_IMODE(placed.parent.stat().st_mode) == 0o700
    assert placed.read_bytes().startswith(b"UNIQUE_REFERENCE,")
    (mail,) = w.mails()
    assert mail["To"] == OPERATOR and FILE in str(mail["Subject"])
    body = mail.get_content()
    assert f"seftpilot submission confirm {sub.id}" in body and str(placed) in body
    assert states(w)[sub.id] == "uploading"

    # Asking again, even the next day, sends nothing more and uploads nothing else.
    w.due("B")
    w.clock.set(datetime(2026, 3, 3, 10, 0, tzinfo=UTC))
    assert submit_next(w.runtime, w.agreement).status == "awaiting_operator"
    assert len(w.mails()) == 1
    assert SubmitJob(w.runtime, w.agreement).next_due(w.clock.now()) is None

    # The operator uploaded it on Monday at 15:00 and confirms on Tuesday.
    confirmed = confirm_upload(w.runtime, sub.id, at=datetime(2026, 3, 2, 15, 0, tzinfo=UTC))
    assert confirmed.state == "uploaded" and confirmed.nhs_day == date(2026, 3, 2)
    assert confirmed.evidence_deadline == datetime(2026, 3, 3, 12, 0, tzinfo=UTC)
    assert not placed.exists()
    # Tuesday's upload may now go (to the outbox again).
    assert submit_next(w.runtime, w.agreement).status == "awaiting_operator"
    assert len(w.mails()) == 2


def test_manual_transport_without_an_operator_address_is_a_config_error(
    world_factory: Callable[..., World],
) -> None:
    from seftpilot.errors import ConfigError

    w = world_factory(transport="manual", operator={"emails": []})
    w.due()
    with pytest.raises(ConfigError) as caught:
        submit_next(w.runtime, w.agreement)
    assert "operator.emails" in str(caught.value)
    assert all(s == "due" for s in states(w).values())


def test_work_files_are_private(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = world.due()
    seen: list[int] = []
    from seftpilot.service.transports import SftpTransport

    original = SftpTransport.put

    def spy(self: SftpTransport, local_path: Path, final_name: str, **kw: Any) -> None:
        seen.append(stat.S_IMODE(os.stat(local_path).st_mode))
        seen.append(stat.S_IMODE(os.stat(local_path.parent).st_mode))
        original(self, local_path, final_name, **kw)

    monkeypatch.setattr(SftpTransport, "put", spy)
    assert submit_next(world.runtime, world.agreement).submission_id == sub.id
    assert seen == [0o600, 0o700]
