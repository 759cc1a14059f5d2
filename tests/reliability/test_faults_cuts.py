"""A connection cut at any byte of a session is a transient failure (try again later),
never "login refused", "host key changed" or any other error that stops a workflow for
good: IMAP connect + login + select, SFTP handshake + auth + listing + upload, SMTP send.

Found by the sustained chaos run (seed 15): a connection reset while the LOGIN command was
in flight reached the service as ``AuthenticationError`` ("login refused: socket error:
EOF"), which stops the mailbox intake for good, as a wrong password must; one network
glitch would have left the study deaf until someone restarted the service. imapclient
wraps the connection's ``abort`` in a ``LoginError``; the adapter now looks at the cause.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from seftpilot.adapters.imap import ImapMailbox
from seftpilot.adapters.sftp import SftpClient
from seftpilot.adapters.smtp import Mailer, build_message
from seftpilot.errors import AuthenticationError, SeftpilotError, TransientError
from seftpilot.sandbox.servers import ImapServer, SftpServer, SmtpServer, known_hosts_line
from seftpilot.service.forward import provably_not_sent
from tests.reliability.chaos_proxy import ChaosProxy


@pytest.fixture
def imap() -> Iterator[ImapServer]:
    server = ImapServer().start()
    try:
        yield server
    finally:
        server.stop()


def test_a_cut_anywhere_in_connect_and_login_is_transient(imap: ImapServer) -> None:
    outcomes: Counter[str] = Counter()
    with ChaosProxy(imap.port, name="imap", seed=3) as proxy:
        settings = imap.settings(port=proxy.port, timeout_seconds=5.0)
        # Every offset from the greeting to past the LOGIN reply, both drop and reset.
        for offset in [*range(1, 120, 7), *range(120, 700, 23)]:
            for fault in ("drop", "reset"):
                proxy.force_next(fault, offset=offset)
                mailbox = ImapMailbox(settings)
                try:
                    mailbox.connect()
                    mailbox.select("INBOX")
                    outcomes["connected"] += 1
                except AuthenticationError as exc:
                    pytest.fail(f"{fault} after {offset} bytes became 'login refused': {exc}")
                except TransientError:
                    outcomes["transient"] += 1
                finally:
                    mailbox.close()
    assert outcomes["transient"] > 20, outcomes  # the cuts did land in the exchange

    # And a wrong password is still refused for good.
    wrong = ImapMailbox(imap.settings(password="not the password"))
    with pytest.raises(AuthenticationError):
        wrong.connect()
    wrong.close()


def cut_everywhere(proxy: ChaosProxy, attempt: Any, offsets: list[int]) -> Counter[str]:
    """Run ``attempt()`` once per (offset, fault); any error but TransientError fails."""
    outcomes: Counter[str] = Counter()
    for offset in offsets:
        for fault in ("drop", "reset"):
            proxy.force_next(fault, offset=offset)
            try:
                attempt()
                outcomes["ok"] += 1
            except TransientError:
                outcomes["transient"] += 1
            except SeftpilotError as exc:
                pytest.fail(f"{fault} after {offset} bytes: {type(exc).__name__}: {exc}")
    return outcomes


def test_a_cut_anywhere_in_an_sftp_session_is_transient(tmp_path: Path) -> None:
    """SEFT and the partner: handshake, host key check, key auth, listing, upload."""
    server = SftpServer(tmp_path / "sftp").start()
    local = tmp_path / "file.csv"
    local.write_bytes(b"UNIQUE_REFERENCE\r\n" * 500)
    try:
        with ChaosProxy(server.port, name="sftp", seed=4) as proxy:
            known = tmp_path / "known_hosts"
            known.write_text(known_hosts_line("127.0.0.1", proxy.port, server.host_key))
            endpoint = server.endpoint(port=proxy.port, known_hosts=known, timeout_seconds=5.0)

            def session() -> None:
                with SftpClient(endpoint) as client:
                    client.list()
                    client.upload(local, "file.csv", overwrite=True)

            offsets = [int(10 ** (i / 8)) for i in range(8, 8 * 5)]  # 10 B .. 75 KB
            outcomes = cut_everywhere(proxy, session, sorted(set(offsets)))
        assert outcomes["transient"] > 20, outcomes
        # Never a half file under the final name.
        final = server.root / "file.csv"
        assert not final.exists() or final.read_bytes() == local.read_bytes()
    finally:
        server.stop()


def test_a_cut_anywhere_in_an_smtp_send_is_transient_and_never_not_sent_if_it_arrived() -> None:
    """Also the passphrase mail's promise: ``provably_not_sent`` must never say "not sent"
    of a message the server accepted (a cut inside the final "250" reply included), or the
    passphrase would go twice."""
    server = SmtpServer()
    lied: list[str] = []
    try:
        with ChaosProxy(server.port, name="smtp", seed=5) as proxy:
            mailer = Mailer(server.settings(port=proxy.port, timeout_seconds=5.0))

            def send() -> None:
                before = len(server.messages)
                message = build_message(
                    ["data-manager@study.example"], "alert", "x" * 3000, sender="s@x.example"
                )
                try:
                    mailer.send(message)
                except TransientError as exc:
                    if len(server.messages) > before and provably_not_sent(exc):
                        lied.append(str(exc))
                    raise

            offsets = [*range(1, 200, 9), *range(200, 3400, 150), *range(3400, 3800, 3)]
            outcomes = cut_everywhere(proxy, send, offsets)
        assert outcomes["transient"] > 20, outcomes
        assert lied == []
    finally:
        server.stop()
