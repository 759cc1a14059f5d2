"""Crashes and broken connections at every point of a delivery, on real servers.

The promises: a restart resumes without a second upload or a second passphrase mail; a
passphrase mail whose fate is unknown blocks the delivery and tells the operator instead
of being resent; a dropped upload never leaves a half file under an ``isaric-*`` name.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from seftpilot.service.forward import (
    Forwarder,
    forward_now,
    resolve_delivery,
    retry_delivery,
)
from tests.fixtures.sftp_server import InProcessSftpServer
from tests.fixtures.smtp_server import SmtpServer
from tests.integration.forward_support import (
    DATA,
    KEYS,
    OPERATOR,
    World,
    open_archive,
    put_files,
    running_world,
)

FINAL = "isaric-2025-07-02-1.7z"


class SimulatedCrash(BaseException):
    """The process dies here (BaseException: no handler of the workflow catches it)."""


@pytest.fixture
def world(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    sftp_server: InProcessSftpServer,
    smtp_server: SmtpServer,
) -> Iterator[World]:
    with running_world(
        tmp_path,
        tmp_path_factory.mktemp("seft"),
        sftp_server,
        smtp_server,
        partner_extra={"retention_days": 0},
    ) as w:
        yield w


def crash_at(point: str) -> Any:
    def checkpoint(name: str) -> None:
        if name == point:
            raise SimulatedCrash(name)

    return checkpoint


def router_files(world: World) -> list[Path]:
    return [p for p in world.partner.root.iterdir() if p.name.startswith("isaric-")]


POINTS = [
    f"{when}:{step}"
    for step in ("collect", "archive", "verify", "upload", "announce", "clean")
    for when in ("claimed", "done")
] + ["staged"]


@pytest.mark.parametrize("point", POINTS)
def test_crash_then_restart_sends_everything_exactly_once(world: World, point: str) -> None:
    sent = put_files(world.seft.root, 3)
    with pytest.raises(SimulatedCrash):
        forward_now(world.runtime, checkpoint=crash_at(point))
    # Whatever is under the router's name at the moment of the crash is whole.
    for path in router_files(world):
        assert path.stat().st_size == world.only_delivery().archive_parts[0]["size"]

    world.restart()
    outcome = forward_now(world.runtime)
    assert outcome.status == "cleaned", outcome.message

    assert [p.name for p in router_files(world)] == [FINAL]
    archive = world.partner.root / FINAL
    assert world.partner.bytes_written == archive.stat().st_size  # one upload, never two
    assert len(world.mails(KEYS)) == 1
    assert open_archive(archive, world.passphrase_from_mail()) == sent
    announcements = world.mails(DATA)
    # The announcement goes at least once; a resend after a crash keeps its Message-ID.
    assert len({str(m["Message-ID"]) for m in announcements}) == 1
    assert len(announcements) == (2 if point == "done:announce" else 1)
    assert not Path(world.only_delivery().work_dir).exists()


def test_crash_before_the_passphrase_mail_blocks_then_resend(world: World) -> None:
    put_files(world.seft.root, 1)
    with pytest.raises(SimulatedCrash):
        forward_now(world.runtime, checkpoint=crash_at("claimed:passphrase"))
    world.restart()
    outcome = forward_now(world.runtime)
    assert outcome.status == "blocked"
    assert world.mails(KEYS) == []  # not sent, and not sent blindly now either
    alert = world.mails(OPERATOR)
    assert alert and "passphrase" in str(alert[-1]["Subject"])

    resolve_delivery(world.runtime, outcome.delivery.id, "resend-passphrase")  # type: ignore[union-attr]
    again = forward_now(world.runtime)
    assert again.status == "cleaned", again.message
    assert len(world.mails(KEYS)) == 1


def test_crash_after_the_passphrase_mail_never_resends(world: World) -> None:
    put_files(world.seft.root, 1)
    with pytest.raises(SimulatedCrash):
        forward_now(world.runtime, checkpoint=crash_at("done:passphrase"))
    assert len(world.mails(KEYS)) == 1
    world.restart()
    outcome = forward_now(world.runtime)
    assert outcome.status == "blocked"
    assert outcome.delivery is not None
    assert outcome.delivery.held_from == "uploaded"
    # Asked again and again, it still does not send.
    assert forward_now(world.runtime).status == "blocked"
    assert len(world.mails(KEYS)) == 1

    resolve_delivery(world.runtime, outcome.delivery.id, "passphrase-arrived")
    done = Forwarder(world.runtime).advance(world.store.get(outcome.delivery.id))
    assert done.state == "cleaned"
    assert len(world.mails(KEYS)) == 1
    assert len(world.mails(DATA)) == 1


def test_connection_lost_after_data_blocks_instead_of_resending(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_files(world.seft.root, 1)
    real = smtplib.SMTP.send_message
    lost = {"left": 1}

    def send_then_drop(self: smtplib.SMTP, msg: Any, *args: Any, **kwargs: Any) -> Any:
        result = real(self, msg, *args, **kwargs)
        if KEYS in str(msg["To"]) and lost["left"]:
            lost["left"] -= 1
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        return result

    monkeypatch.setattr(smtplib.SMTP, "send_message", send_then_drop)
    outcome = forward_now(world.runtime)
    assert outcome.status == "blocked", outcome.message
    assert len(world.mails(KEYS)) == 1  # it did arrive; seftpilot could not know
    assert forward_now(world.runtime).status == "blocked"
    assert len(world.mails(KEYS)) == 1


def test_temporary_refusal_is_retried_and_sends_once(world: World) -> None:
    put_files(world.seft.root, 1)
    world.smtp.fail_next(1, 451)  # the passphrase mail is refused with a code: not sent
    outcome = forward_now(world.runtime)
    assert outcome.status == "in_progress", outcome.message
    assert world.mails(KEYS) == []
    world.clock.advance(timedelta(minutes=2))
    done = forward_now(world.runtime)
    assert done.status == "cleaned", done.message
    assert len(world.mails(KEYS)) == 1


def test_permanent_refusal_fails_with_an_alert_and_retries_on_request(world: World) -> None:
    put_files(world.seft.root, 1)
    world.smtp.fail_next(1, 550)
    outcome = forward_now(world.runtime)
    assert outcome.status == "failed", outcome.message
    assert outcome.delivery is not None
    assert any("failed" in str(m["Subject"]) for m in world.mails(OPERATOR))
    retry_delivery(world.runtime, outcome.delivery.id)
    done = forward_now(world.runtime)
    assert done.status == "cleaned", done.message
    assert len(world.mails(KEYS)) == 1


def test_dropped_upload_leaves_no_router_file_and_restarts(world: World) -> None:
    put_files(world.seft.root, 3)
    world.partner.drop_after_bytes = 200
    outcome = forward_now(world.runtime)
    assert outcome.status == "in_progress", outcome.message
    assert world.partner.drops == 1
    assert router_files(world) == []  # only hidden names hold the partial bytes
    assert any(p.name.startswith(".") for p in world.partner.root.iterdir())

    world.clock.advance(timedelta(minutes=2))
    done = forward_now(world.runtime)
    assert done.status == "cleaned", done.message
    assert [p.name for p in router_files(world)] == [FINAL]
    assert [p.name for p in world.partner.root.iterdir()] == [FINAL]  # nothing hidden left
    assert open_archive(world.partner.root / FINAL, world.passphrase_from_mail())


def test_router_took_the_file_after_a_crash_asks_the_operator(world: World) -> None:
    """Crash after the rename; the partner's router collects the file before we restart:
    the listing cannot tell it arrived, and seftpilot must not send it a second time."""
    put_files(world.seft.root, 1)
    with pytest.raises(SimulatedCrash):
        forward_now(world.runtime, checkpoint=crash_at("done:upload"))
    (world.partner.root / FINAL).unlink()  # the router moved it on
    world.restart()
    outcome = forward_now(world.runtime)
    assert outcome.status == "blocked", outcome.message
    assert router_files(world) == []
    assert outcome.delivery is not None
    resolve_delivery(world.runtime, outcome.delivery.id, "partner-has-it")
    done = forward_now(world.runtime)
    assert done.status == "cleaned", done.message
    assert len(world.mails(KEYS)) == 1
