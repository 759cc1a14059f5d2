"""Forwarding returned data to the partner, against real SFTP and SMTP servers on a fake clock.

What the partner and the operator rely on: every new file from SEFT's download area reaches
the partner inside one encrypted archive that opens with the passphrase from its own mail
and matches the manifest; the passphrase never travels with the announcement, never lands
in the ledger or the logs; the clear text goes after the retention period (not with
--keep); files are private (0600 / 0700).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from seftpilot.adapters.archive import verify_archive
from seftpilot.adapters.mail_store import MailStore
from seftpilot.adapters.mailparse import parse_message
from seftpilot.adapters.passphrase import fingerprint
from seftpilot.adapters.rules_files import default_rules_path, load_rules
from seftpilot.core.rules import classify
from seftpilot.service.dispatch import Dispatcher
from seftpilot.service.forward import ForwardJob, forward_now, register_handlers
from tests.fixtures.sftp_server import InProcessSftpServer
from tests.fixtures.smtp_server import SmtpServer
from tests.integration.forward_support import (
    DATA,
    KEYS,
    NIC,
    World,
    open_archive,
    put_files,
    running_world,
    state_bytes,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def world(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    sftp_server: InProcessSftpServer,
    smtp_server: SmtpServer,
) -> Iterator[World]:
    with running_world(tmp_path, tmp_path_factory.mktemp("seft"), sftp_server, smtp_server) as w:
        yield w


def new_data_mail(world: World, uid: int = 1) -> None:
    """NHS England's sample "There is new data" mail, classified by the default rules,
    recorded as the intake would, and dispatched."""
    raw = (REPO / "sample_mail" / "new-data-plain.eml").read_bytes()
    message = parse_message(raw)
    classification = classify(message, load_rules([default_rules_path()]))
    assert classification.class_ == "new_data"
    record = MailStore(world.runtime.store).record_received(
        account="linkage@study.example.org",
        folder="INBOX",
        uidvalidity=1,
        uid=uid,
        key=f"<newdata-{uid}@nhsdigital.nhs.uk>",
        message_id=f"<newdata-{uid}@nhsdigital.nhs.uk>",
        received_at=world.clock.now(),
        sent_at=None,
        from_addr="dars.cohort@nhsdigital.nhs.uk",
        subject=message.subject,
        size=len(raw),
        rule=classification.rule,
        class_=classification.class_,
        action=classification.action,
        captures=classification.captures,
        defects=[],
        now=world.clock.now(),
    )
    dispatcher = Dispatcher()
    register_handlers(dispatcher, world.runtime)
    dispatcher(record, message, classification)
    dispatcher(record, message, classification)  # the intake may retry: idempotent


def run_job(world: World, times: int = 12) -> None:
    job = ForwardJob(world.runtime)
    for _ in range(times):
        now = world.clock.now()
        due = job.next_due(now)
        if due is not None and due <= now:
            job.run(now)
        world.clock.advance(1)


def test_new_data_mail_to_partner_and_clean_after_retention(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="seftpilot")
    sent = put_files(world.seft.root, 3)

    new_data_mail(world)
    d = world.only_delivery()
    assert (d.state, d.origin) == ("waiting", "mail")
    run_job(world)

    d = world.only_delivery()
    assert d.state == "announced", d.last_error
    # Exactly one file at the partner's, under the router's name, nothing hidden left.
    final = "isaric-2025-07-02-1.7z"
    assert world.partner_names() == [final]
    archive = world.partner.root / final
    assert world.partner.bytes_written == archive.stat().st_size  # sent once

    # The passphrase mail went alone to its recipients; the announcement names the archive.
    passphrase = world.passphrase_from_mail()
    (key_mail,) = world.mails(KEYS)
    (announce,) = world.mails(DATA)
    assert final not in key_mail.get_content()
    assert passphrase not in announce.get_content()
    assert final in announce.get_content()
    assert str(archive.stat().st_size) in announce.get_content()
    assert fingerprint(passphrase) == d.passphrase_fingerprint
    assert d.passphrase_fingerprint in announce.get_content()

    # What the partner received opens with that passphrase and is what NHS sent.
    assert d.manifest is not None
    verify_archive([archive], passphrase, d.manifest, backend="py7zr")
    assert open_archive(archive, passphrase) == sent
    assert {f.name for f in world.store.files(d.id)} == set(sent)

    # Private while kept: 0700 dirs, 0600 files; the passphrase file is gone once sent.
    work = Path(d.work_dir)
    assert not (work / "passphrase").exists()
    for path in [work, *work.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path

    # The secret is in no log line and nowhere in the ledger.
    assert passphrase not in caplog.text
    assert passphrase.encode() not in state_bytes(world.settings)

    # Not cleaned before the retention period, cleaned after it.
    world.clock.advance(timedelta(days=6))
    run_job(world, 3)
    assert world.only_delivery().state == "announced"
    world.clock.advance(timedelta(days=1, hours=1))
    run_job(world, 3)
    d = world.only_delivery()
    assert d.state == "cleaned"
    assert not work.exists()
    assert all(f.deleted_at is not None for f in world.store.files(d.id))
    cleaned = [e for e in world.runtime.store.events("delivery", d.id) if "clean_done" in e["kind"]]
    assert sorted(cleaned[0]["detail"]["deleted"]) == sorted(
        ["archive/" + final, *(f"files/{n}" for n in sent)]
    )
    # The partner keeps its copy; nothing was sent again.
    assert world.partner_names() == [final]
    assert len(world.mails()) == 2


def test_second_mail_for_the_same_release_joins_the_waiting_delivery(world: World) -> None:
    new_data_mail(world, uid=1)
    new_data_mail(world, uid=2)
    assert len(world.store.list_deliveries()) == 1


def test_only_new_files_are_collected_next_time(world: World) -> None:
    put_files(world.seft.root, 2)
    first = forward_now(world.runtime)
    assert first.status == "delivered", first.message
    again = forward_now(world.runtime)
    assert again.status == "nothing_new"
    put_files(world.seft.root, 1, start=3)
    second = forward_now(world.runtime)
    assert second.status == "delivered", second.message
    assert second.delivery is not None
    assert second.delivery.file_count == 1
    assert world.partner_names() == ["isaric-2025-07-02-1.7z", "isaric-2025-07-02-2.7z"]


def test_wrong_size_download_is_fetched_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server hands out a short copy once: the file is fetched again, whole."""
    import asyncssh

    sent = put_files(world.seft.root, 2)
    victim = sorted(sent)[0]
    original = asyncssh.SFTPServer.read
    short = {"left": 1}

    def read(self: asyncssh.SFTPServer, file_obj: object, offset: int, size: int) -> bytes:
        data = original(self, file_obj, offset, size)
        name = os.fsdecode(getattr(file_obj, "name", b""))
        if isinstance(data, bytes) and name.endswith(victim) and short["left"]:
            short["left"] -= 1
            return data[: len(data) // 2] if offset == 0 else b""
        return data  # type: ignore[no-any-return]

    monkeypatch.setattr(asyncssh.SFTPServer, "read", read)
    outcome = forward_now(world.runtime)
    assert outcome.status == "delivered", outcome.message
    assert short["left"] == 0  # the short copy was really served
    d = world.only_delivery()
    assert d.manifest is not None
    assert {e.name: e.size for e in d.manifest.files} == {n: len(b) for n, b in sent.items()}
    passphrase = world.passphrase_from_mail()
    assert open_archive(world.partner.root / "isaric-2025-07-02-1.7z", passphrase) == sent


def test_keep_keeps_the_clear_text(world: World) -> None:
    put_files(world.seft.root, 1)
    outcome = forward_now(world.runtime, keep=True)
    assert outcome.status == "delivered"
    d = world.only_delivery()
    world.clock.advance(timedelta(days=30))
    run_job(world, 3)
    d = world.only_delivery()
    assert d.state == "announced"
    assert (Path(d.work_dir) / "files").is_dir()


def test_no_announcement_recipients_still_delivers(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    sftp_server: InProcessSftpServer,
    smtp_server: SmtpServer,
) -> None:
    with running_world(
        tmp_path,
        tmp_path_factory.mktemp("seft"),
        sftp_server,
        smtp_server,
        partner_extra={"announce_recipients": [], "retention_days": 0},
    ) as w:
        put_files(w.seft.root, 1)
        outcome = forward_now(w.runtime)
        assert outcome.status == "cleaned", outcome.message
        assert [str(m["To"]) for m in w.mails()] == [KEYS]
        assert not Path(w.only_delivery().work_dir).exists()


def test_volumes_arrive_as_numbered_parts(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    sftp_server: InProcessSftpServer,
    smtp_server: SmtpServer,
) -> None:
    big = os.urandom(3 * 1024 * 1024)  # incompressible: three 1 MB volumes at least
    with running_world(
        tmp_path,
        tmp_path_factory.mktemp("seft"),
        sftp_server,
        smtp_server,
        partner_extra={"volume_size_mb": 1, "codec": "copy"},
    ) as w:
        (w.seft.root / "blob.csv").write_bytes(big)
        outcome = forward_now(w.runtime)
        assert outcome.status == "delivered", outcome.message
        names = w.partner_names()
        assert len(names) >= 3
        assert all(n.startswith("isaric-2025-07-02-1.7z.0") for n in names)
        d = w.only_delivery()
        assert d.manifest is not None
        parts = [w.partner.root / n for n in names]
        verify_archive(parts, w.passphrase_from_mail(), d.manifest, backend="py7zr")


def test_dispatch_with_no_agreement_named_alerts(world: World) -> None:
    from seftpilot.service.forward import start_from_mail

    assert NIC
    assert start_from_mail(world.runtime, 999, "NIC-000000-ZZZZZ") is None
    alerts = world.runtime.store.query("SELECT key FROM alerts")
    assert [r["key"] for r in alerts] == ["new-data-agreement:999"]
