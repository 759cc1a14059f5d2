"""`seftpilot rules test --mailbox` against a real IMAP server (pymap on loopback).

What an operator relies on: trying the rules on the live mailbox changes nothing — no
flag (\\Seen included), no move, no new folder, no ledger write, no checkpoint, no lock —
so the service, running beside it or started afterwards, still handles every message.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from seftpilot.adapters.clock import SystemClock
from seftpilot.adapters.locks import MailboxLock
from seftpilot.adapters.rules_files import default_rules_path, load_rules
from seftpilot.adapters.store import Store
from seftpilot.cli import run
from seftpilot.config import load_settings
from seftpilot.service.intake import MailIntake, account_name
from tests.fixtures.imap_server import ImapTestServer
from tests.fixtures.site_config import imap_table, site_config

SAMPLES = Path(__file__).resolve().parents[2] / "sample_mail"
# (sample, flags it carries on the server before the preview)
MAILBOX = [
    ("failure-plain", ()),
    ("new-data-plain", ("\\Seen",)),
    ("unrelated-colleague", ("\\Flagged",)),
    ("release-reminder-qp", ()),
]


def _config(tmp_path: Path, server: ImapTestServer) -> Path:
    # after_handling=move: the preview must not create the "handled" folder even so.
    return site_config(
        tmp_path,
        state_dir="state",
        rules=[default_rules_path()],
        imap=imap_table(
            server, timeout_seconds=10, after_handling="move", move_to="seftpilot/handled"
        ),
    )


def _expected(name: str) -> dict[str, object]:
    data = json.loads((SAMPLES / f"{name}.expected.json").read_text())
    assert isinstance(data, dict)
    return data


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its bytes (the ledger, its WAL, locks)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_mailbox_preview_classifies_and_changes_nothing(
    tmp_path: Path, imap_server: ImapTestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, imap_server)
    uids = [
        imap_server.append((SAMPLES / f"{name}.eml").read_bytes(), flags=flags)
        for name, flags in MAILBOX
    ]
    settings = load_settings(config)
    # A ledger that already exists (the service ran before) and a running watcher's lock.
    with Store(settings.state_dir) as store:
        store.query("SELECT 1")
    lock = MailboxLock(settings.state_dir, account_name(settings.imap), "INBOX").acquire()
    flags_before = imap_server.flags()
    folders_before = imap_server.folders()
    state_before = _tree(settings.state_dir)
    try:
        code = run(["rules", "test", "--mailbox", "--json", "--config", str(config)])
    finally:
        lock.release()
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    assert [d["file"] for d in doc] == [f"imap:INBOX/{uid}" for uid in uids]
    for item, (name, _) in zip(doc, MAILBOX, strict=True):
        expected = _expected(name)
        assert (item["rule"], item["class"], item["action"]) == (
            expected["rule"],
            expected["class"],
            expected["action"],
        ), name
        assert item["captures"] == expected["captures"], name
    assert doc[0]["uid"] == uids[0] and doc[0]["from"].endswith("nhs.uk")
    assert "read-only" in captured.err and "4 of 4" in captured.err

    # Nothing changed on the server: same flags (unread mail still unread), same
    # messages in the folder, no "handled" folder created despite after_handling=move.
    assert imap_server.flags() == flags_before
    assert all("\\Seen" not in imap_server.flags()[uid] for uid in (uids[0], uids[3]))
    assert imap_server.folder_uids() == uids
    assert imap_server.folders() == folders_before
    # Nothing changed locally: the ledger and every other state file are byte-identical.
    assert _tree(settings.state_dir) == state_before

    # So the service, started afterwards, still handles every message exactly once.
    with Store(settings.state_dir) as store:
        intake = MailIntake(settings, store, load_rules([default_rules_path()]), SystemClock())
        try:
            report = intake.catch_up()
        finally:
            intake.close()
    assert report.handled == len(MAILBOX)


def test_mailbox_preview_limit_since_and_human_output(
    tmp_path: Path, imap_server: ImapTestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, imap_server)
    old = datetime(2020, 3, 2, 9, 0, tzinfo=UTC)
    for name in ("success-plain", "bounce-dsn"):
        imap_server.append((SAMPLES / f"{name}.eml").read_bytes(), when=old)
    recent = [
        imap_server.append((SAMPLES / f"{name}.eml").read_bytes())
        for name in ("failure-plain", "auto-reply-out-of-office", "new-data-plain")
    ]
    args = ["rules", "test", "--mailbox", "--config", str(config)]

    assert run([*args, "--since", "2024-01-01", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [d["file"] for d in doc] == [f"imap:INBOX/{uid}" for uid in recent]

    # --limit keeps the newest; the human view shows uid, sender, subject, rule, captures.
    assert run([*args, "--limit", "2", "--explain"]) == 0
    captured = capsys.readouterr()
    assert f"uid {recent[1]}" in captured.out and f"uid {recent[2]}" in captured.out
    assert f"uid {recent[0]}" not in captured.out
    assert "rule nhs-new-data -> class new_data, action forward" in captured.out
    assert "because:" in captured.out
    assert "2 of 5 message(s)" in captured.err and "--limit 0" in captured.err
    # The preview alone never creates the state directory (no ledger, no lock).
    assert not (tmp_path / "state").exists()


def test_rules_test_needs_files_or_mailbox_not_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eml = str(SAMPLES / "failure-plain.eml")
    assert run(["rules", "test"]) == 2
    assert "--mailbox" in capsys.readouterr().err
    assert run(["rules", "test", "--mailbox", eml]) == 2
    assert "not both" in capsys.readouterr().err
    assert run(["rules", "test", "--since", "2024-01-01", eml]) == 2
    assert run(["rules", "test", "--mailbox", "--since", "yesterday"]) == 2
