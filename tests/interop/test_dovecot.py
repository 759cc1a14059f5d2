"""The mail intake against Dovecot, the IMAP server most NHS-adjacent mail systems resemble.

Dovecot runs as our child (root, loopback high ports, config and maildir in a temp dir,
implicit TLS with the test CA). Proves catch-up, IDLE wake-up, move after handling
(RFC 6851 MOVE into a folder created on first use, with Dovecot's own separator) and a
keyword flag the server really keeps.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from seftpilot.adapters.clock import SystemClock
from seftpilot.adapters.imap import ImapMailbox
from seftpilot.adapters.mail_store import MailRecord
from seftpilot.adapters.rules_files import default_rules_path, load_rules
from seftpilot.adapters.store import Store
from seftpilot.config import Settings
from seftpilot.core.message import Message
from seftpilot.core.rules import Classification
from seftpilot.service.intake import MailIntake
from tests.fixtures.imap_server import DovecotServer, make_message
from tests.fixtures.interop import require_tool
from tests.fixtures.tls import TlsFiles
from tests.integration.test_intake import Runner, wait_until

pytestmark = pytest.mark.interop


@pytest.fixture
def dovecot(test_ca: TlsFiles) -> Iterator[DovecotServer]:
    binary = require_tool("dovecot", "IMAP interop tests run against a real Dovecot")
    # Not tmp_path: Dovecot's unprivileged mail user must be able to reach the maildir.
    root = Path(tempfile.mkdtemp(prefix="seftpilot-dovecot-", dir="/tmp"))
    server = DovecotServer(binary, root, tls=test_ca).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


class Hook:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, record: MailRecord, message: Message, c: Classification) -> None:
        self.calls.append((message.subject, c.rule))


def test_catch_up_idle_and_move_against_dovecot(dovecot: DovecotServer, tmp_path: Path) -> None:
    dovecot.append(
        [
            make_message(1, subject="Backlog one"),
            make_message(2, subject="Backlog two", message_id=None),
        ]
    )
    settings = Settings(state_dir=tmp_path / "state", imap=dovecot.settings(after_handling="move"))
    ruleset = load_rules([default_rules_path()])
    hook = Hook()
    with Store(settings.state_dir) as store:
        intake = MailIntake(settings, store, ruleset, SystemClock(), hook)
        with Runner(intake):
            wait_until(lambda: len(hook.calls) == 2, "the backlog from Dovecot")
            wait_until(lambda: intake.mailbox.uses_idle, "IDLE")
            dovecot.append([make_message(3, subject="Arrived while idling")])
            wait_until(lambda: len(hook.calls) == 3, "Dovecot's IDLE notification", 30)
        handled = store.query("SELECT count(*) FROM mail_messages WHERE state='handled'")
        assert handled[0][0] == 3
    assert [s for s, _ in hook.calls] == ["Backlog one", "Backlog two", "Arrived while idling"]

    client = dovecot.client()
    try:
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
        moved = client.select_folder("seftpilot/handled")
        assert moved[b"EXISTS"] == 3
        flags = client.get_flags(client.search(["ALL"]))
        assert all(b"\\Seen" not in f for f in flags.values())  # never marked read
    finally:
        client.logout()


def test_keyword_flag_is_kept_by_dovecot(dovecot: DovecotServer, tmp_path: Path) -> None:
    dovecot.append([make_message(1)])
    settings = Settings(state_dir=tmp_path / "state", imap=dovecot.settings(after_handling="flag"))
    with Store(settings.state_dir) as store:
        intake = MailIntake(
            settings, store, load_rules([default_rules_path()]), SystemClock(), Hook()
        )
        assert intake.catch_up().handled == 1
        intake.close()
    client = dovecot.client()
    try:
        client.select_folder("INBOX")
        (flags,) = client.get_flags(client.search(["ALL"])).values()
        assert b"$SeftpilotHandled" in flags
    finally:
        client.logout()


def test_untrusted_certificate_refused_by_dovecot_client(
    dovecot: DovecotServer, untrusted_ca: TlsFiles
) -> None:
    from seftpilot.errors import TLSVerificationError

    with pytest.raises(TLSVerificationError):
        ImapMailbox(dovecot.settings(ca_file=untrusted_ca.ca_file)).connect()


def test_idle_stop_is_prompt_against_dovecot(dovecot: DovecotServer) -> None:
    with ImapMailbox(dovecot.settings()) as mailbox:
        mailbox.select()
        stop = threading.Event()
        threading.Timer(0.3, stop.set).start()
        assert mailbox.wait(stop).new_mail is False
