"""The IMAP adapter against a real server on loopback: TLS verified with the test CA and
refused with an untrusted one, STARTTLS, password and XOAUTH2 logins, and errors that name
the server and say what to do."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest

from seftpilot.adapters.imap import ImapMailbox
from seftpilot.config import ImapSettings
from seftpilot.errors import (
    AuthenticationError,
    PermanentError,
    TLSVerificationError,
    TransientError,
)
from tests.fixtures.imap_server import ImapTestServer, make_message
from tests.fixtures.tls import TlsFiles


def test_implicit_tls_with_the_test_ca_is_accepted(imap_tls_server: ImapTestServer) -> None:
    imap_tls_server.append(make_message(1))
    with ImapMailbox(imap_tls_server.settings()) as mailbox:
        folder = mailbox.select()
        (fetched,) = mailbox.fetch(mailbox.uids_above(0))
    assert folder.exists == 1
    assert b"Test message 1" in fetched.raw
    assert fetched.size == len(fetched.raw)
    assert fetched.internal_date is not None and fetched.internal_date.tzinfo is not None


def test_a_certificate_from_an_untrusted_ca_is_refused(
    imap_tls_server: ImapTestServer, untrusted_ca: TlsFiles
) -> None:
    mailbox = ImapMailbox(imap_tls_server.settings(ca_file=untrusted_ca.ca_file))
    with pytest.raises(TLSVerificationError) as refused:
        mailbox.connect()
    assert refused.value.server == f"127.0.0.1:{imap_tls_server.port}"
    assert "imap.ca_file" in (refused.value.hint or "")
    assert not mailbox.connected


def test_the_system_store_alone_does_not_trust_the_test_ca(
    imap_tls_server: ImapTestServer,
) -> None:
    settings = imap_tls_server.settings(ca_file=None)
    with pytest.raises(TLSVerificationError):
        ImapMailbox(settings).connect()


def test_starttls_upgrades_before_login(
    imap_server_factory: Callable[..., ImapTestServer], test_ca: TlsFiles
) -> None:
    server = imap_server_factory(security="starttls", tls=test_ca)
    with ImapMailbox(server.settings()) as mailbox:
        assert mailbox.select().uidvalidity > 0
        assert mailbox.client.socket().version() is not None  # really TLS now


def test_nagle_is_off_so_split_commands_do_not_wait_for_a_delayed_ack(
    imap_server_factory: Callable[..., ImapTestServer], test_ca: TlsFiles
) -> None:
    """imapclient writes SEARCH and others in pieces: with Nagle on, each such command
    waited out the server's delayed ACK (44 ms a SEARCH on loopback, up to 200 ms on some
    servers). Off on every kind of connection, STARTTLS's upgraded one included."""
    for security in ("plain", "tls", "starttls"):
        server = imap_server_factory(security=security, tls=test_ca)
        with ImapMailbox(server.settings()) as mailbox:
            sock = mailbox.client.socket()
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), security


def test_starttls_with_an_untrusted_certificate_is_refused(
    imap_server_factory: Callable[..., ImapTestServer], untrusted_ca: TlsFiles, test_ca: TlsFiles
) -> None:
    server = imap_server_factory(security="starttls", tls=untrusted_ca)
    with pytest.raises(TLSVerificationError):
        ImapMailbox(server.settings(ca_file=test_ca.ca_file)).connect()


def test_tls_to_a_plain_text_port_fails_with_a_hint(imap_server: ImapTestServer) -> None:
    with pytest.raises((PermanentError, TransientError)) as failed:
        ImapMailbox(imap_server.settings(security="tls")).connect()
    assert not isinstance(failed.value, AuthenticationError)


def test_a_wrong_password_is_an_authentication_error(imap_server: ImapTestServer) -> None:
    with pytest.raises(AuthenticationError) as refused:
        ImapMailbox(imap_server.settings(password="wrong")).connect()
    assert "xoauth2" in (refused.value.hint or "")
    assert "wrong" not in str(refused.value)  # the password never appears


def test_nothing_listening_is_transient(imap_server: ImapTestServer) -> None:
    port = imap_server.port
    imap_server.stop()
    with pytest.raises(TransientError) as failed:
        ImapMailbox(imap_server.settings(port=port, timeout_seconds=2)).connect()
    assert failed.value.server == f"127.0.0.1:{port}"


def test_xoauth2_login_asks_for_a_fresh_token_on_every_connect(
    imap_server: ImapTestServer,
) -> None:
    issued: list[str] = []

    def token() -> str:
        issued.append(f"token-{len(issued)}")
        imap_server.add_token(issued[-1])
        return issued[-1]

    mailbox = ImapMailbox(imap_server.settings(auth="xoauth2", password=None), token_provider=token)
    for _ in range(2):
        mailbox.connect()
        assert mailbox.select().exists == 0
    mailbox.close()
    assert issued == ["token-0", "token-1"]


def test_xoauth2_with_a_revoked_token_is_refused(imap_server: ImapTestServer) -> None:
    mailbox = ImapMailbox(
        imap_server.settings(auth="xoauth2", password=None), token_provider=lambda: "revoked"
    )
    with pytest.raises(AuthenticationError):
        mailbox.connect()


def test_uids_above_never_returns_the_checkpoint_itself(imap_server: ImapTestServer) -> None:
    uids = [imap_server.append(make_message(n)) for n in range(3)]
    with ImapMailbox(imap_server.settings()) as mailbox:
        mailbox.select()
        assert mailbox.uids_above(0) == uids
        # "UID n:*" matches the highest UID even when it is below n; we must not.
        assert mailbox.uids_above(uids[-1]) == []
        assert mailbox.uids_above(uids[0]) == uids[1:]


def test_idle_wait_returns_on_new_mail_and_on_stop(imap_server: ImapTestServer) -> None:
    with ImapMailbox(imap_server.settings()) as mailbox:
        mailbox.select()
        stop = threading.Event()
        timer = threading.Timer(0.5, imap_server.append, args=(make_message(1),))
        timer.start()
        woke = mailbox.wait(stop)
        timer.join()
        assert woke.kind == "idle" and woke.new_mail
        mailbox.select()
        stop.set()
        assert mailbox.wait(stop).new_mail is False  # returns at once, connection intact
        assert mailbox.uids_above(0) == imap_server.folder_uids()


def test_idle_notices_a_dropped_connection(imap_server: ImapTestServer) -> None:
    with ImapMailbox(imap_server.settings()) as mailbox:
        mailbox.select()
        stop = threading.Event()
        timer = threading.Timer(0.5, imap_server.drop_connections)
        timer.start()
        with pytest.raises(TransientError):
            mailbox.wait(stop)
        timer.join()
        assert not mailbox.connected


def test_idle_switched_off_polls(imap_server: ImapTestServer) -> None:
    with ImapMailbox(imap_server.settings(idle=False, poll_interval_seconds=1)) as mailbox:
        mailbox.select()
        assert "IDLE" in mailbox.capabilities and not mailbox.uses_idle
        assert mailbox.wait(threading.Event()).kind == "poll"


class _SplitLineServer:
    """A scripted IMAP server on loopback for one protocol edge: during IDLE it writes
    ``* 2 EXISTS`` in two pieces, 0.3 s apart, as a server may (TCP promises bytes, not
    lines). Speaks just what a connect, SELECT, NOOP and IDLE need."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.idles = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1 IDLE] split-line test server\r\n")
            for line in lines:
                tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
                command = rest.split(b" ", 1)[0].upper()
                if command == b"CAPABILITY":
                    conn.sendall(b"* CAPABILITY IMAP4rev1 IDLE\r\n" + tag + b" OK done\r\n")
                elif command == b"SELECT":
                    conn.sendall(
                        b"* 1 EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Seen)\r\n"
                        b"* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 2] ok\r\n"
                        + tag
                        + b" OK [READ-WRITE] selected\r\n"
                    )
                elif command == b"IDLE":
                    self.idles += 1
                    conn.sendall(b"+ idling\r\n")
                    time.sleep(0.2)
                    conn.sendall(b"* 2 EX")
                    time.sleep(0.3)
                    conn.sendall(b"ISTS\r\n")
                    if lines.readline().strip() == b"DONE":
                        conn.sendall(tag + b" OK idle done\r\n")
                elif command == b"LOGOUT":
                    conn.sendall(b"* BYE bye\r\n" + tag + b" OK bye\r\n")
                    return
                else:  # LOGIN, NOOP
                    conn.sendall(tag + b" OK done\r\n")

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


def test_new_mail_written_in_two_pieces_during_idle_is_seen_whole() -> None:
    """imapclient's idle_check reads a non-blocking socket and breaks on half a line
    ("unterminated line", imapclient issue #519): the wait lost its connection instead of
    reporting mail. The wait reads the server's words whole."""
    server = _SplitLineServer()
    settings = ImapSettings(
        host="127.0.0.1", port=server.port, security="plain", username="u", password="p"
    )
    try:
        with ImapMailbox(settings) as mailbox:
            mailbox.select()
            woke = mailbox.wait(threading.Event())
            assert (woke.kind, woke.new_mail) == ("idle", True)
            assert mailbox.connected and server.idles == 1
    finally:
        server.close()
