"""`seftpilot submit` and `seftpilot submission ...` as an operator uses them: exit codes and
--json documents, on a settings file, a real SMTP server (manual transport) and a fake clock."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from seftpilot.adapters.clock import FakeClock
from seftpilot.adapters.ledger_store import LedgerStore, RefRow
from seftpilot.adapters.store import Store
from seftpilot.cli import run
from seftpilot.cli import submission as submission_cli
from tests.fixtures.sftp_server import InProcessSftpServer
from tests.fixtures.site_config import site_config, smtp_table
from tests.fixtures.smtp_server import SmtpServer
from tests.integration.test_submit import MONDAY_10, NIC, rows


@pytest.fixture
def site(tmp_path: Path, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> Path:
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
[[agreement]]
nic = "{NIC}"
[agreement.upload]
transport = "manual"
outbox = "outbox"
"""
    )
    clock = FakeClock(MONDAY_10)
    monkeypatch.setattr(submission_cli, "clock_factory", lambda: clock)
    return tmp_path


@pytest.fixture
def ledger(site: Path) -> Iterator[LedgerStore]:
    with Store(site / "state") as store:
        yield LedgerStore(store)


def cli(site: Path, *args: str) -> list[str]:
    return [*args, "--config", str(site / "seftpilot.toml")]


def out_json(capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    return json.loads(capsys.readouterr().out)


def test_submit_manual_then_confirm_list_and_show(
    site: Path,
    ledger: LedgerStore,
    smtp_server: SmtpServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sub = ledger.create_submission(NIC, "ADD", rows("C", 2), at=MONDAY_10, state="due")

    assert run(cli(site, "submit", "--dry-run", "--json")) == 0
    doc = out_json(capsys)
    assert doc["dry_run"] is True
    assert doc["outcomes"][0]["status"] == "would_upload"
    assert smtp_server.messages == []

    assert run(cli(site, "submit", "--json")) == 0
    (outcome,) = out_json(capsys)["outcomes"]
    assert outcome["status"] == "awaiting_operator" and outcome["submission_id"] == sub.id
    assert len(smtp_server.messages) == 1

    assert run(cli(site, "submission", "list", "--json")) == 0
    (listed,) = out_json(capsys)["submissions"]
    assert listed["state"] == "uploading" and "confirm" in listed["note"]

    # London time without a zone: 10:04 GMT in March.
    assert run(cli(site, "submission", "confirm", str(sub.id), "--at", "2026-03-02T10:04")) == 0
    assert "its evidence window closes 12:00 on Tue 3 Mar (London)" in capsys.readouterr().out
    assert run(cli(site, "submission", "show", str(sub.id), "--json")) == 0
    shown = out_json(capsys)
    assert shown["state"] == "uploaded"
    assert shown["uploaded_at"].startswith("2026-03-02T10:04:00")
    assert shown["evidence"]["window"]["end"] == "2026-03-03T12:00:00+00:00"
    kinds = [e["kind"] for e in shown["events"]]
    assert kinds == [
        "submission.created",
        "submission.claim",
        "submission.awaiting_operator",
        "submission.upload_done",
    ]
    # Human output says the same in words.
    assert run(cli(site, "submission", "show", str(sub.id))) == 0
    text = capsys.readouterr().out
    assert "uploaded" in text and "window:" in text and "submission.claim" in text


def test_submit_exits_1_when_the_preflight_refuses(
    site: Path, ledger: LedgerStore, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = [RefRow("B-1", None, {"DATE_OF_BIRTH": "19800101"})]  # no NHS number, no names
    ledger.create_submission(NIC, "ADD", bad, at=MONDAY_10, state="due")
    assert run(cli(site, "submit", "--json")) == 1
    (outcome,) = out_json(capsys)["outcomes"]
    assert outcome["status"] == "refused" and outcome["ok"] is False
    assert outcome["problems"] and outcome["problems"][0]["row"] == 1
    assert run(cli(site, "submit")) == 1
    assert "refused" in capsys.readouterr().out


def test_nothing_due_exits_0(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(cli(site, "submit")) == 0
    assert "nothing is due" in capsys.readouterr().out
    assert run(cli(site, "submission", "list")) == 0
    assert "no submissions yet" in capsys.readouterr().out


def test_resolve_an_unknown_verdict_and_usage_errors(
    site: Path, ledger: LedgerStore, capsys: pytest.CaptureFixture[str]
) -> None:
    sub = ledger.create_submission(NIC, "ADD", rows("R", 2), at=MONDAY_10, state="due")
    sub = ledger.claim_upload(sub, at=MONDAY_10, nhs_day=MONDAY_10.date())
    sub = ledger.record_upload(sub, at=MONDAY_10, evidence_deadline=MONDAY_10 + timedelta(days=1))
    sub = ledger.record_verdict(sub, "unknown", at=MONDAY_10 + timedelta(days=1))

    assert (
        run(cli(site, "submission", "resolve", str(sub.id), "--outcome", "maybe", "--note", "x"))
        == 2
    )
    assert run(cli(site, "submission", "resolve", str(sub.id), "--outcome", "success")) == 2
    assert run(cli(site, "submission", "show", "999")) == 1
    assert "no submission #999" in capsys.readouterr().err

    assert (
        run(
            cli(
                site,
                "submission",
                "resolve",
                str(sub.id),
                "--outcome",
                "success",
                "--note",
                "NHS England confirmed",
                "--json",
            )
        )
        == 0
    )
    doc = out_json(capsys)
    assert doc["verdict"] == "confirmed_success"
    # Resolving twice is refused: only an unknown verdict is resolved by hand.
    assert (
        run(cli(site, "submission", "resolve", str(sub.id), "--outcome", "failed", "--note", "x"))
        == 1
    )
    assert "only an unknown verdict" in capsys.readouterr().err


def test_confirm_refuses_a_time_in_the_future_or_a_submission_not_waiting(
    site: Path, ledger: LedgerStore, capsys: pytest.CaptureFixture[str]
) -> None:
    sub = ledger.create_submission(NIC, "ADD", rows("F", 1), at=MONDAY_10, state="due")
    assert run(cli(site, "submission", "confirm", str(sub.id))) == 1
    assert "not waiting for a manual upload" in capsys.readouterr().err
    assert run(cli(site, "submit")) == 0
    later = (MONDAY_10 + timedelta(hours=3)).isoformat()
    assert run(cli(site, "submission", "confirm", str(sub.id), "--at", later)) == 1
    assert "in the future" in capsys.readouterr().err
    # A malformed --at is a usage error (2), as a wrong --outcome word is.
    assert run(cli(site, "submission", "confirm", str(sub.id), "--at", "yesterday")) == 2
    assert "not an ISO 8601 time" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command", [["submit"], ["submission", "list"], ["submission", "show", "1"]]
)
def test_without_a_settings_file_is_a_usage_error_and_creates_no_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    assert run(command) == 2
    assert "configuration file not found" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


def test_submit_says_the_deadline_and_next_opportunity_on_the_london_clock(
    tmp_path: Path,
    sftp_server: InProcessSftpServer,
    smtp_server: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Summer time: London is UTC+1, so ISO UTC and the operator's clock differ by an hour.
    monday = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)  # 11:00 BST, inside the window
    ep = sftp_server.endpoint()
    config = site_config(
        tmp_path,
        state_dir="state",
        smtp=smtp_table(smtp_server),
        operator={"emails": ["operator@study.example"]},
        canary={"enabled": False},
        agreement=[
            {
                "nic": NIC,
                "upload": {
                    "transport": "sftp",
                    "sftp": {
                        "host": ep.host,
                        "port": ep.port,
                        "username": ep.username,
                        "key_file": ep.key_file,
                        "known_hosts": ep.known_hosts,
                        "remote_dir": ep.remote_dir,
                    },
                },
            }
        ],
    )
    monkeypatch.setattr(submission_cli, "clock_factory", lambda: FakeClock(monday))
    with Store(tmp_path / "state") as store:
        ledger = LedgerStore(store)
        ledger.create_submission(NIC, "ADD", rows("S", 2), at=monday, state="due")
        ledger.create_submission(NIC, "ADD", rows("T", 2), at=monday, state="due")

    assert run(["submit", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    # The next NHS working day at verdict_deadline (12:00 London), as the digest says it.
    assert "its evidence window closes 12:00 on Tue 2 Jun (London)" in out, out
    assert "+00:00" not in out
    # One upload per NHS day: the second waits for Tuesday's window (09:00 London).
    assert run(["submit", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "next opportunity 09:00 on Tue 2 Jun (London)" in out, out
    # --json keeps the unambiguous instants.
    assert run(["submit", "--json", "--config", str(config)]) == 0
    (outcome,) = out_json(capsys)["outcomes"]
    assert outcome["next_opportunity"] == "2026-06-02T08:00:00+00:00"
