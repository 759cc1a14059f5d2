"""`seftpilot forward` and `seftpilot delivery ...` end to end, with a settings file, real
SFTP (partner) and SMTP servers, and the operator's folder of files (`--from`)."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest

from seftpilot.adapters.clock import FakeClock
from seftpilot.cli import forward as forward_cli
from seftpilot.cli import run
from tests.fixtures.sftp_server import InProcessSftpServer
from tests.fixtures.smtp_server import SmtpServer
from tests.integration.forward_support import KEYS, NIC, START, open_archive, put_files


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(START)
    monkeypatch.setattr(forward_cli, "clock_factory", lambda: fake)
    return fake


@pytest.fixture
def site(
    tmp_path: Path, sftp_server: InProcessSftpServer, smtp_server: SmtpServer, clock: FakeClock
) -> Path:
    ep = sftp_server.endpoint()
    (tmp_path / "seftpilot.toml").write_text(
        f"""
state_dir = "state"
[smtp]
host = "127.0.0.1"
port = {smtp_server.port}
security = "plain"
from_address = "seftpilot@study.example"
[operator]
emails = ["operator@study.example"]
[canary]
enabled = false
[partner]
passphrase_recipients = ["{KEYS}"]
announce_recipients = ["data@partner.example"]
retention_days = 7
backend = "py7zr"
[partner.sftp]
host = "{ep.host}"
port = {ep.port}
username = "{ep.username}"
key_file = "{ep.key_file}"
known_hosts = "{ep.known_hosts}"
remote_dir = "/"
[[agreement]]
nic = "{NIC}"
[agreement.download]
source = "folder"
drop_folder = "drop"
"""
    )
    (tmp_path / "drop").mkdir()
    return tmp_path


def cli(site: Path, *args: str) -> list[str]:
    return [*args, "--config", str(site / "seftpilot.toml")]


@pytest.fixture(autouse=True)
def _restore_logging() -> None:
    """`forward` configures the seftpilot logger for the terminal; give it back after."""
    yield  # type: ignore[misc]
    root = logging.getLogger("seftpilot")
    root.handlers.clear()
    root.propagate = True


def test_forward_from_dir_keep_json_then_list_show_clean(
    site: Path,
    sftp_server: InProcessSftpServer,
    smtp_server: SmtpServer,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = site / "returned"
    folder.mkdir()
    sent = put_files(folder, 2)
    assert run(cli(site, "forward", "--from", str(folder), "--keep", "--json")) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["status"] == "delivered"
    assert doc["delivery"]["keep"] is True
    assert doc["delivery"]["file_count"] == 2
    name = doc["delivery"]["remote_name"]
    assert name == "isaric-2025-07-02-1.7z"
    # Not a terminal: plain progress lines on stderr, no passphrase anywhere.
    assert "upload:" in captured.err
    mails = [m.message for m in smtp_server.messages if KEYS in str(m.message["To"])]
    body = mails[0].get_content()
    passphrase = next(ln.strip() for ln in body.splitlines() if ln.startswith("    "))
    assert passphrase not in captured.out + captured.err
    assert open_archive(sftp_server.root / name, passphrase) == sent

    # --keep: retention passes, nothing is deleted until asked.
    clock.advance(timedelta(days=30))
    assert run(cli(site, "delivery", "list", "--json")) == 0
    (row,) = json.loads(capsys.readouterr().out)["deliveries"]
    assert row["state"] == "announced"
    work = Path(row["work_dir"])
    assert (work / "files").is_dir()

    assert run(cli(site, "delivery", "show", "1")) == 0
    shown = capsys.readouterr().out
    assert "NIC402963_HES_001.csv" in shown and passphrase not in shown

    assert run(cli(site, "delivery", "clean", "1", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "cleaned"
    assert not work.exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted(sent)  # the operator's own


def test_forward_with_nothing_and_usage_errors(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(cli(site, "forward")) == 0
    assert "nothing new to forward in the drop folder" in capsys.readouterr().out
    assert run(cli(site, "forward", "--from", str(site / "missing"))) == 1
    assert "not a folder" in capsys.readouterr().err
    assert run(cli(site, "delivery", "resolve", "1")) == 2
    err = capsys.readouterr().err
    assert "Usage: seftpilot delivery resolve" in err and "give exactly one of" in err
    assert run(cli(site, "delivery", "retry", "7")) == 1
    assert "no delivery #7" in capsys.readouterr().err


def test_forward_from_an_empty_folder_records_nothing_and_mails_nobody(
    site: Path, smtp_server: SmtpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # An empty or mistyped --from is the operator's slip: said at once, not a failed
    # delivery in the ledger and an alert mail about it.
    (site / "empty").mkdir()
    assert run(cli(site, "forward", "--from", str(site / "empty"))) == 1
    assert "holds no file" in capsys.readouterr().err
    assert run(cli(site, "delivery", "list", "--json")) == 0
    assert json.loads(capsys.readouterr().out) == {"deliveries": []}
    assert smtp_server.messages == []


def test_forward_without_partner_is_a_configuration_error(
    tmp_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "seftpilot.toml").write_text(f'state_dir = "state"\n[[agreement]]\nnic = "{NIC}"\n')
    assert run(["forward", "--config", str(tmp_path / "seftpilot.toml")]) == 2
    assert "partner.sftp" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["delivery", "list"], ["delivery", "show", "1"]])
def test_delivery_without_a_settings_file_is_a_usage_error_and_creates_no_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    assert run(command) == 2
    assert "configuration file not found" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


def test_an_address_getting_both_mails_is_warned_about_once_per_run(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = site / "seftpilot.toml"
    toml.write_text(
        toml.read_text().replace(
            'announce_recipients = ["data@partner.example"]',
            f'announce_recipients = ["data@partner.example", "{KEYS}"]',
        )
    )
    folder = site / "returned"
    folder.mkdir()
    put_files(folder, 1)
    assert run(cli(site, "forward", "--from", str(folder))) == 0
    err = capsys.readouterr().err
    assert err.count("get both the passphrase and the announcement") == 1, err
