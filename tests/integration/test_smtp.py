"""The SMTP adapter against a real aiosmtpd server on loopback."""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
import trustme

from seftpilot.adapters import retry
from seftpilot.adapters.smtp import CAUGHT, Mailer, build_message, translate
from seftpilot.config import SmtpSettings
from seftpilot.errors import (
    AuthenticationError,
    ConfigError,
    PermanentError,
    TLSVerificationError,
    TransientError,
    TransportError,
)
from tests.fixtures.smtp_server import SmtpServer
from tests.fixtures.tls import TlsFiles

PASSPHRASE = "correct-horse-battery-staple-42"


def _message(to: str = "operator@study.example") -> EmailMessage:
    return build_message(
        to,
        "seftpilot: archive passphrase",
        f"The passphrase is {PASSPHRASE}\n",
        html=f"<p>The passphrase is <b>{PASSPHRASE}</b></p>",
        headers={"X-Seftpilot-Kind": "passphrase"},
        now=datetime(2026, 3, 2, 10, 0, tzinfo=UTC),
    )


def test_build_message_sets_identity_and_auto_submitted_headers() -> None:
    msg = build_message(["a@x.example", "b@x.example"], "hello", "text", sender="s@study.example")
    assert msg["To"] == "a@x.example, b@x.example"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Message-ID"].endswith("@study.example>")
    assert msg["Date"]
    assert msg.get_content_type() == "text/plain"


def test_plain_send_delivers_message_with_envelope_and_returns_message_id(
    smtp_server: SmtpServer,
) -> None:
    mailer = Mailer(smtp_server.settings())
    msg = _message()
    message_id = mailer.send(msg)

    [received] = smtp_server.messages
    assert received.mail_from == "seftpilot@study.example"
    assert received.rcpt_tos == ("operator@study.example",)
    parsed = received.message
    assert parsed["Message-ID"] == message_id
    assert parsed["From"] == "seftpilot@study.example"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["X-Seftpilot-Kind"] == "passphrase"
    assert parsed.get_content_type() == "multipart/alternative"
    plain = parsed.get_body(preferencelist=("plain",))
    assert plain is not None and PASSPHRASE in plain.get_content()


def test_send_never_logs_the_body(
    smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="seftpilot")
    Mailer(smtp_server.settings()).send(_message())
    assert smtp_server.messages
    ours = [r for r in caplog.records if r.name.startswith("seftpilot")]
    assert ours, "a send should leave a trace in the log"
    assert all(PASSPHRASE not in r.getMessage() for r in ours)


def test_starttls_with_test_ca_and_auth_is_accepted(smtp_server_tls: SmtpServer) -> None:
    mailer = Mailer(smtp_server_tls.settings())
    mailer.check()
    mailer.send(_message())
    [received] = smtp_server_tls.messages
    assert received.authenticated_as == "sender"


def test_starttls_without_the_ca_is_refused(smtp_server_tls: SmtpServer) -> None:
    # Only the system store: the throw-away test CA is not in it.
    mailer = Mailer(smtp_server_tls.settings(ca_file=None))
    with pytest.raises(TLSVerificationError) as info:
        mailer.send(_message())
    assert f"127.0.0.1:{smtp_server_tls.port}" in str(info.value)
    assert "ca_file" in (info.value.hint or "")
    assert smtp_server_tls.messages == []


def test_certificate_from_an_untrusted_ca_is_refused(
    smtp_server_factory: Callable[..., SmtpServer], test_ca: TlsFiles, untrusted_ca: TlsFiles
) -> None:
    server = smtp_server_factory(tls=untrusted_ca, auth=("sender", "pw"))
    mailer = Mailer(server.settings(ca_file=test_ca.ca_file))
    with pytest.raises(TLSVerificationError):
        mailer.send(_message())
    assert server.messages == []


def test_certificate_for_another_name_is_refused(
    smtp_server_factory: Callable[..., SmtpServer], tmp_path: Path
) -> None:
    # Trusted CA, but the certificate names another host: the name check must refuse it.
    ca = trustme.CA()
    leaf = ca.issue_cert("mail.other.example")
    files = TlsFiles(tmp_path / "ca.pem", tmp_path / "chain.pem", tmp_path / "key.pem")
    ca.cert_pem.write_to_path(str(files.ca_file))
    files.cert_file.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(files.key_file))
    server = smtp_server_factory(tls=files, auth=("sender", "pw"))
    with pytest.raises(TLSVerificationError, match=r"127\.0\.0\.1"):
        Mailer(server.settings()).send(_message())
    assert server.messages == []


def test_refused_password_is_an_authentication_error(smtp_server_tls: SmtpServer) -> None:
    mailer = Mailer(smtp_server_tls.settings(password="wrong"))
    with pytest.raises(AuthenticationError) as info:
        mailer.send(_message())
    assert "535" in str(info.value)
    assert "wrong" not in str(info.value)


def test_starttls_required_but_server_only_speaks_plain(smtp_server: SmtpServer) -> None:
    mailer = Mailer(smtp_server.settings(security="starttls"))
    with pytest.raises(PermanentError, match="STARTTLS"):
        mailer.send(_message())
    assert smtp_server.messages == []


def test_implicit_tls_against_a_plain_port_is_a_clear_permanent_error(
    smtp_server: SmtpServer,
) -> None:
    with pytest.raises(TransportError) as info:
        Mailer(smtp_server.settings(security="tls", timeout_seconds=5.0)).send(_message())
    assert info.value.server == f"127.0.0.1:{smtp_server.port}"


def test_451_is_transient(smtp_server: SmtpServer) -> None:
    smtp_server.fail_next(1, 451)
    with pytest.raises(TransientError, match="451"):
        Mailer(smtp_server.settings()).send(_message())
    assert smtp_server.messages == []


def test_550_is_permanent(smtp_server: SmtpServer) -> None:
    smtp_server.fail_next(1, 550)
    with pytest.raises(PermanentError, match="550"):
        Mailer(smtp_server.settings()).send(_message())


def test_transient_refusal_is_retried_by_policy(smtp_server: SmtpServer) -> None:
    smtp_server.fail_next(2, 451)
    mailer = Mailer(smtp_server.settings(), retry=retry.RetryPolicy(attempts=3))
    with retry.testing():
        message_id = mailer.send(_message())
    assert smtp_server.refused == 2
    assert [m.message["Message-ID"] for m in smtp_server.messages] == [message_id]


def test_permanent_refusal_is_not_retried(smtp_server: SmtpServer) -> None:
    smtp_server.fail_next(1, 550)
    mailer = Mailer(smtp_server.settings(), retry=retry.RetryPolicy(attempts=3))
    with retry.testing(), pytest.raises(PermanentError):
        mailer.send(_message())
    assert smtp_server.refused == 1
    assert smtp_server.messages == []


def test_connection_refused_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        mailer = Mailer(
            SmtpSettings(host="127.0.0.1", port=port, security="plain", timeout_seconds=5.0)
        )
        with pytest.raises(TransientError, match="connection failed"):
            mailer.send(_message())


def test_username_without_password_is_a_config_error(smtp_server: SmtpServer) -> None:
    with pytest.raises(ConfigError, match=r"smtp\.password"):
        Mailer(smtp_server.settings(username="someone"))


def test_unreadable_ca_file_is_a_config_error(smtp_server_tls: SmtpServer, tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-ca.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"smtp\.ca_file"):
        Mailer(smtp_server_tls.settings(ca_file=bogus)).send(_message())


# -- the exception mapping is complete for every type the Mailer catches -----------------

_SMTPLIB_ERRORS: list[BaseException] = [
    smtplib.SMTPException("generic"),
    smtplib.SMTPNotSupportedError("no STARTTLS"),
    smtplib.SMTPServerDisconnected("gone"),
    smtplib.SMTPResponseException(421, b"closing"),
    smtplib.SMTPResponseException(554, b"no"),
    smtplib.SMTPSenderRefused(451, b"later", "s@x"),
    smtplib.SMTPSenderRefused(553, b"bad sender", "s@x"),
    smtplib.SMTPRecipientsRefused({"a@x": (450, b"busy")}),
    smtplib.SMTPRecipientsRefused({"a@x": (450, b"busy"), "b@x": (550, b"no such user")}),
    smtplib.SMTPDataError(451, b"later"),
    smtplib.SMTPDataError(550, b"rejected"),
    smtplib.SMTPConnectError(421, b"too busy"),
    smtplib.SMTPConnectError(554, b"go away"),
    smtplib.SMTPHeloError(501, b"bad helo"),
    smtplib.SMTPAuthenticationError(535, b"bad credentials"),
]
_EXPECTED = [
    PermanentError,
    PermanentError,
    TransientError,
    TransientError,
    PermanentError,
    TransientError,
    PermanentError,
    TransientError,
    PermanentError,
    TransientError,
    PermanentError,
    TransientError,
    PermanentError,
    PermanentError,
    AuthenticationError,
]


def _leaf_smtplib_exception_types() -> set[type[BaseException]]:
    return {
        obj
        for obj in vars(smtplib).values()
        if isinstance(obj, type) and issubclass(obj, smtplib.SMTPException)
    }


def test_mapping_examples_cover_every_smtplib_exception_type() -> None:
    # If a Python release adds an smtplib exception, this fails until it is mapped here.
    assert {type(e) for e in _SMTPLIB_ERRORS} == _leaf_smtplib_exception_types()


@pytest.mark.parametrize(
    ("exc", "expected"), list(zip(_SMTPLIB_ERRORS, _EXPECTED, strict=True)), ids=repr
)
def test_smtplib_errors_map_by_reply_class(exc: BaseException, expected: type) -> None:
    mapped = translate(exc, "mail.example:587")
    assert type(mapped) is expected
    assert mapped.server == "mail.example:587"
    assert mapped.permanent is (expected is not TransientError)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), TLSVerificationError),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), TransientError),
        (ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed"), TransientError),
        (ssl.SSLError(1, "wrong version number"), PermanentError),
        (TimeoutError("timed out"), TransientError),
        (socket.gaierror(-2, "Name or service not known"), TransientError),
        (ConnectionRefusedError(111, "Connection refused"), TransientError),
        (ConnectionResetError(104, "Connection reset by peer"), TransientError),
        (OSError(113, "No route to host"), TransientError),
    ],
    ids=repr,
)
def test_socket_and_ssl_errors_map(exc: BaseException, expected: type) -> None:
    assert type(translate(exc, "mail.example:465")) is expected


def test_every_caught_type_maps_to_a_transport_error() -> None:
    # Each caught base class, instantiated bare, still gets a definite answer.
    for base in CAUGHT:
        mapped = translate(base("x"), "s:1")
        assert isinstance(mapped, TransportError)
        assert "unexpected" not in mapped.message


def test_fixture_hands_accepted_mail_to_deliver_to(
    smtp_server_factory: Callable[..., SmtpServer],
) -> None:
    delivered: list[tuple[str, tuple[str, ...]]] = []
    server = smtp_server_factory(deliver_to=lambda m: delivered.append((m.mail_from, m.rcpt_tos)))
    server.fail_next(1, 550)
    mailer = Mailer(server.settings())
    with pytest.raises(PermanentError):
        mailer.send(_message())
    mailer.send(_message("watch@study.example"))
    # Refused transactions are not delivered; accepted ones are, with their envelope.
    assert delivered == [("seftpilot@study.example", ("watch@study.example",))]
