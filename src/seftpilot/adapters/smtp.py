"""SMTP: sends the service's mail (alerts, digests, canaries, the partner's passphrase).

Owns the connection to the configured SMTP server: implicit TLS or STARTTLS verified
against the system trust store plus ``ca_file`` (plain only when configured so), AUTH
when a username is set, timeouts, and the translation of smtplib/ssl/socket exceptions
into ``errors``: 4xx replies and dropped connections are ``TransientError``, 5xx replies
``PermanentError``, refused credentials ``AuthenticationError``, an untrusted or
mismatched certificate ``TLSVerificationError``.

Must not log message bodies or recipients' content: a body may carry an archive
passphrase. It logs the Message-ID, the number of recipients and the server only.
It does not decide what to send; ``build_message`` only shapes a message.
"""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr

from seftpilot.adapters.retry import NO_RETRY, RetryPolicy, run
from seftpilot.config import SmtpSettings
from seftpilot.errors import (
    AuthenticationError,
    ConfigError,
    PermanentError,
    TLSVerificationError,
    TransientError,
    TransportError,
)

log = logging.getLogger(__name__)

_NO_REPLY_DOMAIN = "seftpilot.invalid"


def _domain_of(address: str) -> str:
    _, addr = parseaddr(address)
    domain = addr.rpartition("@")[2]
    return domain or _NO_REPLY_DOMAIN


def build_message(
    to: str | Sequence[str],
    subject: str,
    text: str,
    html: str | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    sender: str | None = None,
    now: datetime | None = None,
) -> EmailMessage:
    """A message ready for ``Mailer.send``: Message-ID, Date, Auto-Submitted set.

    ``Auto-Submitted: auto-generated`` (RFC 3834) keeps well-behaved auto-responders
    quiet; ``X-Auto-Response-Suppress`` does the same for Exchange. ``now`` comes from
    the injected clock; ``sender`` defaults to the Mailer's ``from_address`` at send time.
    """
    msg = EmailMessage()
    recipients = [to] if isinstance(to, str) else list(to)
    if not recipients:
        raise ValueError("a message needs at least one recipient")
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject
    if sender:
        msg["From"] = sender
    msg["Date"] = format_datetime((now or datetime.now(UTC)).astimezone(UTC))
    # make_msgid's default domain is socket.getfqdn(), a DNS lookup; never needed here.
    msg["Message-ID"] = make_msgid(domain=_domain_of(sender or ""))
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    for name, value in (headers or {}).items():
        if name in msg:
            msg.replace_header(name, value)
        else:
            msg[name] = value
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg


def _reply_text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return " ".join(text.split())[:200]


def _by_code(code: int, text: str, server: str) -> TransportError:
    if not 200 <= code < 600:
        # Not a reply code at all (smtplib's -1, or "2" from a reply line cut short): the
        # connection broke mid-reply, which is weather, not a refusal.
        return TransientError(f"reply cut short or garbled ({code} {text})", server=server)
    if 400 <= code < 500:
        return TransientError(f"server replied {code} {text}", server=server)
    return PermanentError(
        f"server replied {code} {text}",
        server=server,
        hint="the server refused the message; read its reply and fix the address or content",
    )


def _ssl_text(exc: ssl.SSLError) -> str:
    # Raised by the ssl module these carry reason/verify_message; built by hand they may not.
    text = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
    return str(text or exc.strerror or exc)


def translate(exc: BaseException, server: str) -> TransportError:
    """Map an smtplib/ssl/socket exception onto the error tree.

    The order matters: ``SSLCertVerificationError`` is an ``SSLError`` and an
    ``OSError``; ``SMTPAuthenticationError`` is an ``SMTPResponseException``;
    ``SMTPServerDisconnected`` and ``TimeoutError`` are ``OSError``.
    """
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSVerificationError(
            f"certificate not trusted: {_ssl_text(exc)}",
            server=server,
            hint="trust the server's CA with smtp.ca_file, or fix smtp.host to the "
            "name on the certificate",
        )
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return TransientError(f"TLS connection closed: {_ssl_text(exc)}", server=server)
    if isinstance(exc, ssl.SSLError):
        return PermanentError(
            f"TLS failed: {_ssl_text(exc)}",
            server=server,
            hint="check smtp.security: 'tls' is implicit TLS (usually port 465), "
            "'starttls' upgrades a plain connection (usually port 587)",
        )
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return AuthenticationError(
            f"login refused: {exc.smtp_code} {_reply_text(exc.smtp_error)}",
            server=server,
            hint="check smtp.username and smtp.password (or its expiry)",
        )
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        who = ", ".join(sorted(exc.recipients))
        if codes and all(400 <= c < 500 for c in codes):
            return TransientError(f"recipients temporarily refused: {who}", server=server)
        return PermanentError(
            f"recipients refused: {who}",
            server=server,
            hint="check the addresses in the configuration",
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        # SMTPSenderRefused, SMTPDataError, SMTPConnectError, SMTPHeloError and
        # plain replies all carry the server's code.
        return _by_code(exc.smtp_code, _reply_text(exc.smtp_error), server)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return TransientError(f"connection dropped: {exc}", server=server)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return PermanentError(
            f"server does not support what we need: {exc}",
            server=server,
            hint="check smtp.security and smtp.username against what the server offers",
        )
    if isinstance(exc, smtplib.SMTPException):
        # e.g. "No suitable authentication method found", "STARTTLS extension not
        # supported by server": configuration mismatches, not weather.
        return PermanentError(
            f"SMTP failed: {exc}",
            server=server,
            hint="check smtp.security and the authentication the server offers",
        )
    if isinstance(exc, socket.gaierror):
        return TransientError(
            f"cannot resolve host: {exc.strerror or exc}",
            server=server,
            hint="check smtp.host; if it is right, DNS is failing",
        )
    if isinstance(exc, TimeoutError):
        return TransientError("timed out", server=server)
    if isinstance(exc, OSError):
        return TransientError(
            f"connection failed: {exc.strerror or exc}",
            server=server,
            hint="check that the server is up and smtp.host/smtp.port are right",
        )
    return PermanentError(f"unexpected {type(exc).__name__}: {exc}", server=server)


# What ``Mailer`` catches at its boundary; ``translate`` maps every one of them.
CAUGHT: tuple[type[BaseException], ...] = (smtplib.SMTPException, ssl.SSLError, OSError)


class Mailer:
    """Sends messages through the configured SMTP server, one connection per send."""

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        retry: RetryPolicy = NO_RETRY,
    ) -> None:
        self.settings = settings
        self.server = f"{settings.host}:{settings.port}"
        self._retry = retry
        if settings.username and settings.password is None:
            raise ConfigError(
                "smtp.username is set but smtp.password is not",
                key="smtp.password",
                hint="set SEFTPILOT_SMTP__PASSWORD, or clear smtp.username for no AUTH",
            )

    def tls_context(self) -> ssl.SSLContext:
        """System trust store plus ``ca_file``; hostname checked; TLS 1.2 or later."""
        ctx = ssl.create_default_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.settings.ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=str(self.settings.ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"cannot load CA certificates: {exc}",
                    key="smtp.ca_file",
                    file=str(self.settings.ca_file),
                    hint="point smtp.ca_file at a PEM file of the CA that signed the server",
                ) from None
        return ctx

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        ctx = self.tls_context() if s.security != "plain" else None
        # local_hostname: smtplib would otherwise call socket.getfqdn() (a DNS lookup).
        helo = socket.gethostname() or "localhost"
        conn: smtplib.SMTP
        if s.security == "tls":
            conn = smtplib.SMTP_SSL(
                s.host, s.port, local_hostname=helo, timeout=s.timeout_seconds, context=ctx
            )
        else:
            conn = smtplib.SMTP(s.host, s.port, local_hostname=helo, timeout=s.timeout_seconds)
        try:
            conn.ehlo()
            if s.security == "starttls":
                if not conn.has_extn("starttls"):
                    # Never fall back to plain text: that is what an attacker would cause.
                    raise PermanentError(
                        "server does not offer STARTTLS",
                        server=self.server,
                        hint="use smtp.security = 'tls' on the implicit-TLS port, or ask "
                        "the mail administrator to enable STARTTLS",
                    )
                conn.starttls(context=ctx)
                conn.ehlo()
            if s.username:
                assert s.password is not None  # checked in __init__
                conn.login(s.username, s.password.get_secret_value())
        except BaseException:
            conn.close()
            raise
        return conn

    def check(self) -> None:
        """Connect, secure, authenticate and quit (``seftpilot check --connect``)."""
        try:
            conn = self._connect()
            try:
                conn.noop()
            finally:
                _quit(conn)
        except CAUGHT as exc:
            raise translate(exc, self.server) from None

    def _send_once(self, msg: EmailMessage) -> None:
        try:
            conn = self._connect()
            try:
                conn.send_message(msg)
            finally:
                _quit(conn)
        except CAUGHT as exc:
            raise translate(exc, self.server) from None

    def send(self, msg: EmailMessage) -> str:
        """Send ``msg`` (From and Message-ID filled in when missing); return its Message-ID.

        Retries transient failures per the Mailer's retry policy (none by default: the
        caller's own loop may prefer to retry later). A connection dropped after the
        server accepted DATA but before its reply looks transient and may, when retried,
        deliver twice; the Message-ID stays the same so receivers can tell.
        """
        if msg["From"] is None:
            msg["From"] = self.settings.from_address
        if msg["Message-ID"] is None:
            msg["Message-ID"] = make_msgid(domain=_domain_of(str(msg["From"])))
        message_id = str(msg["Message-ID"])
        recipients = sum(len(msg.get_all(h, [])) for h in ("To", "Cc", "Bcc"))
        run(
            lambda: self._send_once(msg),
            what=f"SMTP send via {self.server}",
            policy=self._retry,
        )
        log.info("sent %s to %d recipient header(s) via %s", message_id, recipients, self.server)
        return message_id


def _quit(conn: smtplib.SMTP) -> None:
    """QUIT politely; a server that already hung up has nothing more to say."""
    try:
        conn.quit()
    except (smtplib.SMTPException, OSError):
        conn.close()
