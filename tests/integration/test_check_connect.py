"""`seftpilot check --connect` logs in to every configured server and says what it saw;
one broken server does not hide the others' results."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from seftpilot.adapters.rules_files import default_rules_path
from seftpilot.config import Agreement, PartnerSettings, Settings, UploadSettings
from seftpilot.service.checks import run_checks
from tests.fixtures.imap_server import ImapTestServer
from tests.fixtures.smtp_server import SmtpServer


def _settings(
    imap: ImapTestServer, smtp: SmtpServer, sftp: object, **imap_overrides: object
) -> Settings:
    endpoint = sftp.endpoint()  # type: ignore[attr-defined]
    return Settings(
        rules=[default_rules_path()],
        imap=imap.settings(**imap_overrides),
        smtp=smtp.settings(),
        agreement=[
            Agreement(
                nic="NIC-402963-P0Y5D",
                upload=UploadSettings(transport="sftp", sftp=endpoint),
            )
        ],
        partner=PartnerSettings(sftp=endpoint),
    )


def _by_name(report: dict[str, object]) -> dict[str, dict[str, object]]:
    return {c["name"]: c for c in report["checks"]}  # type: ignore[attr-defined,index]


def test_every_server_is_reached(
    imap_server: ImapTestServer, smtp_server: SmtpServer, sftp_server: object
) -> None:
    report = run_checks(_settings(imap_server, smtp_server, sftp_server), connect=True)
    checks = _by_name(report)
    assert report["ok"], report
    assert set(checks) >= {"imap", "smtp", "NIC-402963-P0Y5D upload", "partner drop", "rules"}
    assert "INBOX holds 0 messages" in str(checks["imap"]["detail"])
    assert "host key pinned" in str(checks["partner drop"]["detail"])
    # Looking is all it does: nothing was sent.
    assert smtp_server.messages == []


def test_a_refused_login_fails_its_check_and_the_others_still_run(
    imap_server: ImapTestServer, smtp_server: SmtpServer, sftp_server: object
) -> None:
    cfg = _settings(imap_server, smtp_server, sftp_server, password=SecretStr("wrong-password"))
    report = run_checks(cfg, connect=True)
    checks = _by_name(report)
    assert report["ok"] is False
    assert checks["imap"]["ok"] is False
    assert "wrong-password" not in str(checks["imap"]["detail"])
    assert checks["smtp"]["ok"] and checks["partner drop"]["ok"]


def test_an_unpinned_host_key_is_refused_with_how_to_pin_it(
    tmp_path: Path, imap_server: ImapTestServer, smtp_server: SmtpServer, sftp_server: object
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    endpoint = sftp_server.endpoint(known_hosts=empty)  # type: ignore[attr-defined]
    cfg = _settings(imap_server, smtp_server, sftp_server).model_copy(
        update={"partner": PartnerSettings(sftp=endpoint)}
    )
    checks = _by_name(run_checks(cfg, connect=True))
    assert checks["partner drop"]["ok"] is False
    assert "ssh-keyscan" in str(checks["partner drop"]["detail"])
