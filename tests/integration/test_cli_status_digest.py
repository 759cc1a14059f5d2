"""`seftpilot status` and `seftpilot digest` as an operator (or a tool) uses them: the same
facts as text and JSON, `--send` once per day, and no secret in any of it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from seftpilot.adapters.ledger_store import LedgerStore, RefRow
from seftpilot.adapters.store import Store
from seftpilot.cli import run
from tests.fixtures.site_config import site_config, smtp_table
from tests.fixtures.smtp_server import SmtpServer

NIC = "NIC-402963-P0Y5D"
SECRETS = {
    "SEFTPILOT_IMAP__PASSWORD": "imap-Pa55word-never-shown",
    "SEFTPILOT_SMTP__PASSWORD": "smtp-Pa55word-never-shown",
}


@pytest.fixture
def site(tmp_path: Path, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    config = site_config(
        tmp_path,
        state_dir=tmp_path / "state",
        agreement=[{"nic": NIC}],
        operator={"emails": ["ops@study.example"]},
        # No password in the file: both come from the environment (SECRETS).
        imap={"host": "127.0.0.1", "username": "study@example.org"},
        # No smtp.username: the password is configured (and must stay hidden) but unused.
        smtp=smtp_table(smtp_server),
    )
    with Store(tmp_path / "state") as store:
        ledger = LedgerStore(store)
        now = datetime.now(UTC)
        sub = ledger.create_submission(NIC, "ADD", [RefRow("S1", "9990000018")], at=now)
        ledger.make_due(sub, at=now)
    return config


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = run(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


def assert_no_secret(text: str) -> None:
    for value in SECRETS.values():
        assert value not in text


def test_status_and_digest_show_the_same_facts_without_secrets(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = cli(capsys, "status", "--config", str(site))
    assert code == 1  # the mailbox was never listened to: something needs the operator
    assert text.startswith("seftpilot status, ")
    assert "#1 ADD 1 rows" in text and "DUE" in text
    assert "the mailbox is not being listened to" in text
    # ... and what to do about it; status is asked for, not the mail sent every day.
    assert "start `seftpilot watch` (or its service) if it is not running" in text
    assert "This digest is sent every day" not in text
    assert text.rstrip().endswith("no open alert")
    assert_no_secret(text)

    code, raw = cli(capsys, "status", "--json", "--config", str(site))
    doc = json.loads(raw)
    assert code == 1
    assert {
        "submissions",
        "pools",
        "deliveries",
        "heartbeat",
        "canary",
        "open_alerts",
        "next_steps",
        "attention",
    } <= set(doc)
    assert doc["submissions"][0]["state"] == "due"
    assert doc["pools"][0] == {**doc["pools"][0], "agreement": NIC, "count": 0}
    assert doc["deliveries"] == []
    assert any("upload of submission #1" in s["what"] for s in doc["next_steps"])
    assert_no_secret(raw)

    code, text = cli(capsys, "digest", "--config", str(site))
    assert code == 0
    assert text.startswith("Subject: [seftpilot] digest ")
    assert "seftpilot daily digest, " in text
    assert "#1 ADD 1 rows" in text
    assert "This digest is sent every day" in text
    assert_no_secret(text)
    code, raw = cli(capsys, "digest", "--json", "--config", str(site))
    assert code == 0 and json.loads(raw)["submissions"][0]["id"] == 1
    assert_no_secret(raw)


def test_digest_send_goes_once_per_day(
    site: Path, smtp_server: SmtpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = cli(capsys, "digest", "--send", "--config", str(site))
    assert code == 0 and "sent to ops@study.example" in text
    code, text = cli(capsys, "digest", "--send", "--config", str(site))
    assert code == 0 and "already sent" in text
    assert len(smtp_server.messages) == 1
    code, raw = cli(capsys, "digest", "--send", "--force", "--json", "--config", str(site))
    assert code == 0 and json.loads(raw)["sent"] is True
    assert len(smtp_server.messages) == 2
    for mail in smtp_server.messages:
        assert mail.rcpt_tos == ("ops@study.example",)
        assert_no_secret(mail.content.decode("utf-8", "replace"))


def test_digest_send_without_recipients_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "seftpilot.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    code, text = cli(capsys, "digest", "--send", "--config", str(config))
    assert code == 2
    assert "operator.emails" in text


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["digest"]])
def test_without_a_settings_file_nothing_is_reported_or_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    # Run from the wrong directory: a usage error, not "1 thing needs you" about an empty
    # ledger it has just created in ./state.
    assert run(command) == 2
    captured = capsys.readouterr()
    assert "configuration file not found" in captured.err and captured.out == ""
    assert not (tmp_path / "state").exists()
