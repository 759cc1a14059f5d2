"""The mailbox, over IMAP (imapclient): connect, select, fetch by UID, wait, flag or move.

Owns the connection to one IMAP server: TLS (implicit or STARTTLS, certificates verified
against the system store or ``imap.ca_file``; plain text only when ``security = "plain"``),
socket timeouts (always set), authentication by password or XOAUTH2 (a bearer token from a
``token_provider``, asked afresh on every connect), IDLE with renewal and a check of the
server's capabilities (falling back to polling), and the after-handling flag or move.

It translates every imapclient / imaplib / ssl / socket exception into ``seftpilot.errors``
at this boundary (see ``EXCEPTION_MAP``): a dropped connection or a timeout is a
``TransientError`` (the intake reconnects), refused credentials an ``AuthenticationError``,
an untrusted certificate a ``TLSVerificationError``.

It must not decide anything about messages (parsing, rules, checkpoints live elsewhere),
never marks a message seen (``BODY.PEEK[]``) and never logs a secret.
"""

from __future__ import annotations

import imaplib
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

from imapclient import IMAPClient
from imapclient import exceptions as imapx
from imapclient.imapclient import SocketTimeout

from seftpilot.adapters.oauth import xoauth2_string
from seftpilot.config import ImapSettings
from seftpilot.errors import (
    AuthenticationError,
    PermanentError,
    SeftpilotError,
    TLSVerificationError,
    TransientError,
)

log = logging.getLogger(__name__)

FETCH_ITEMS = [b"BODY.PEEK[]", b"RFC822.SIZE", b"INTERNALDATE"]
# Messages per UID FETCH round trip during a catch-up (and per ledger transaction).
DEFAULT_FETCH_BATCH = 250
# How often an IDLE wait looks at the stop event: short, so SIGTERM is honoured promptly.
IDLE_CHECK_SECONDS = 1.0  # how often a wait looks at its stop flag
# imaplib's NO responses that mean "later", not "never" (RFC 5530 response codes).
_TRANSIENT_CODES = ("[UNAVAILABLE]", "[INUSE]", "[LIMIT]", "[SERVERBUG]", "[OVERQUOTA]")


# -- the exception boundary ------------------------------------------------------------
def _imap_error(exc: BaseException, server: str) -> SeftpilotError:
    text = str(exc)
    if any(code in text.upper() for code in _TRANSIENT_CODES):
        return TransientError(f"server busy or unavailable: {text}", server=server)
    return PermanentError(
        f"the server refused a command: {text}",
        server=server,
        hint="check imap.folder and imap.move_to exist and the account may use them",
    )


def _login_error(exc: BaseException, server: str) -> SeftpilotError:
    text = str(exc)
    if isinstance(exc.__context__, imaplib.IMAP4.abort):
        # imapclient wraps a connection lost mid-LOGIN ("socket error: EOF") in LoginError:
        # the network's fault, not the credentials'. Refusing for good would stop the intake.
        return TransientError(f"connection lost while logging in: {text}", server=server)
    if any(code in text.upper() for code in _TRANSIENT_CODES):
        # e.g. Dovecot's "[UNAVAILABLE] Temporary authentication failure": try again.
        return TransientError(f"login temporarily unavailable: {text}", server=server)
    return AuthenticationError(
        f"login refused: {text}",
        server=server,
        hint="check imap.username and the password or OAuth2 settings; Microsoft 365 "
        "and NHSmail need imap.auth = 'xoauth2'",
    )


# Most specific first: the first matching row wins. Every type caught at this boundary is
# here, and tests/integration/test_imap_errors.py proves each one (and every subclass the
# libraries define) maps into our tree.
EXCEPTION_MAP: tuple[
    tuple[type[BaseException], Callable[[BaseException, str], SeftpilotError]], ...
] = (
    (
        ssl.SSLCertVerificationError,
        lambda e, s: TLSVerificationError(
            f"certificate not trusted: {getattr(e, 'verify_message', None) or e}",
            server=s,
            hint="set imap.ca_file to the CA that signed the server's certificate, and "
            "check imap.host matches a name in the certificate",
        ),
    ),
    (
        ssl.SSLZeroReturnError,
        lambda e, s: TransientError(f"TLS connection closed: {e}", server=s),
    ),
    (ssl.SSLEOFError, lambda e, s: TransientError(f"TLS connection dropped: {e}", server=s)),
    (ssl.SSLSyscallError, lambda e, s: TransientError(f"TLS connection broke: {e}", server=s)),
    (ssl.SSLWantReadError, lambda e, s: TransientError(f"TLS read stalled: {e}", server=s)),
    (ssl.SSLWantWriteError, lambda e, s: TransientError(f"TLS write stalled: {e}", server=s)),
    (
        ssl.SSLError,
        lambda e, s: PermanentError(
            f"TLS handshake failed: {e}",
            server=s,
            hint="check imap.security (tls for port 993, starttls for 143) and imap.port",
        ),
    ),
    (imapx.LoginError, _login_error),
    (
        imapx.CapabilityError,
        lambda e, s: PermanentError(
            f"the server lacks a capability we need: {e}",
            server=s,
            hint="use imap.security = 'tls' if STARTTLS is missing",
        ),
    ),
    (
        imapx.IllegalStateError,
        lambda e, s: TransientError(f"connection in an unexpected state: {e}", server=s),
    ),
    (
        imapx.ProtocolError,
        lambda e, s: TransientError(f"garbled server response: {e}", server=s),
    ),
    (
        imaplib.IMAP4.readonly,
        lambda e, s: PermanentError(
            f"folder is read-only: {e}",
            server=s,
            hint="the account needs write access to flag or move handled messages, "
            "or set imap.after_handling = 'none'",
        ),
    ),
    (imaplib.IMAP4.abort, lambda e, s: TransientError(f"connection lost: {e}", server=s)),
    (imaplib.IMAP4.error, _imap_error),
    (
        socket.gaierror,
        lambda e, s: TransientError(
            f"cannot resolve the server's name: {e}", server=s, hint="check imap.host and DNS"
        ),
    ),
    (TimeoutError, lambda e, s: TransientError(f"timed out: {e}", server=s)),
    (
        ConnectionRefusedError,
        lambda e, s: TransientError(
            "connection refused", server=s, hint="check imap.host and imap.port"
        ),
    ),
    (ConnectionError, lambda e, s: TransientError(f"connection dropped: {e}", server=s)),
    (EOFError, lambda e, s: TransientError("connection closed by the server", server=s)),
    (OSError, lambda e, s: TransientError(f"network error: {e}", server=s)),
)
CAUGHT: tuple[type[BaseException], ...] = tuple(kind for kind, _ in EXCEPTION_MAP)


def map_exception(exc: BaseException, server: str) -> SeftpilotError:
    """The seftpilot error for a library exception raised while talking to ``server``."""
    for kind, make in EXCEPTION_MAP:
        if isinstance(exc, kind):
            return make(exc, server)
    raise TypeError(f"{type(exc).__name__} is not mapped at the IMAP boundary") from exc


# -- values ------------------------------------------------------------------------------
@dataclass(frozen=True)
class FolderState:
    """What SELECT said about a folder."""

    name: str
    uidvalidity: int
    uidnext: int | None
    exists: int
    permanent_flags: frozenset[str]
    read_only: bool = False


@dataclass(frozen=True)
class FetchedMessage:
    uid: int
    raw: bytes
    size: int
    internal_date: datetime | None


@dataclass(frozen=True)
class WaitResult:
    kind: Literal["idle", "poll"]
    new_mail: bool  # the server said so (IDLE EXISTS); polls always look


# -- the mailbox -------------------------------------------------------------------------
class ImapMailbox:
    """One connection to one IMAP account. Not thread-safe: one intake owns it."""

    def __init__(
        self,
        settings: ImapSettings,
        *,
        token_provider: Callable[[], str] | None = None,
        fetch_batch: int = DEFAULT_FETCH_BATCH,
    ) -> None:
        self.settings = settings
        self.server = f"{settings.host}:{settings.port}"
        self._token_provider = token_provider
        self._fetch_batch = fetch_batch
        self._client: IMAPClient | None = None
        self._caps: frozenset[str] = frozenset()
        self._folder: FolderState | None = None
        self._known_folders: set[str] = set()
        self._skip_noop = False

    # -- plumbing --------------------------------------------------------------
    @contextmanager
    def _boundary(self) -> Iterator[None]:
        """Translate library exceptions; a transient one also forgets the connection."""
        try:
            yield
        except SeftpilotError:
            raise
        except CAUGHT as exc:
            mapped = map_exception(exc, self.server)
            if isinstance(mapped, TransientError):
                self._discard()
            raise mapped from exc

    @property
    def client(self) -> IMAPClient:
        if self._client is None:
            raise TransientError("not connected", server=self.server)
        return self._client

    @property
    def connected(self) -> bool:
        return self._client is not None

    def _ssl_context(self) -> ssl.SSLContext:
        ca_file = self.settings.ca_file
        cafile = str(ca_file) if ca_file is not None else None
        if ca_file is not None and not ca_file.is_file():
            raise PermanentError(
                f"imap.ca_file {cafile} does not exist",
                server=self.server,
                hint="point imap.ca_file at the PEM file of the CA that signed the server",
            )
        # Verification on, hostname checked, TLS >= 1.2: never an accept-anything context.
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    # -- connection ------------------------------------------------------------
    def connect(self) -> None:
        """Connect, secure and authenticate. A token is asked for on every call."""
        self.close()
        s = self.settings
        timeout = SocketTimeout(connect=s.timeout_seconds, read=s.timeout_seconds)
        with self._boundary():
            ctx = self._ssl_context() if s.security != "plain" else None
            client = IMAPClient(
                s.host,
                port=s.port,
                ssl=s.security == "tls",
                ssl_context=ctx,
                timeout=timeout,
            )
            try:
                # imapclient sends some commands (SEARCH with criteria, among others) in
                # more than one write. With Nagle on, the second write waits for the
                # server to acknowledge the first, which the server delays (40 ms on
                # Linux, 200 ms on some servers) because it has nothing to say until the
                # command is whole: 44 ms per SEARCH on loopback, 0.3 ms without Nagle.
                client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # Timezone-aware INTERNALDATEs; we store UTC.
                client.normalise_times = False
                if s.security == "starttls":
                    client.starttls(ctx)
                self._authenticate(client)
                self._caps = frozenset(
                    c.decode("ascii", "replace").upper() for c in client.capabilities()
                )
            except BaseException:
                _quietly(client.shutdown)
                raise
            self._client = client
            self._folder = None
            self._known_folders = set()
        log.info("connected to %s as %s (%s)", self.server, s.username, s.auth)

    def _authenticate(self, client: IMAPClient) -> None:
        s = self.settings
        if s.auth == "xoauth2":
            if self._token_provider is None:
                raise AuthenticationError(
                    "imap.auth is xoauth2 but no token source is configured",
                    server=self.server,
                    hint="fill in [imap.oauth] (client_id, tenant, flow)",
                )
            token = self._token_provider()
            sasl = xoauth2_string(s.username, token)
            answered: list[bytes] = []

            def mechanism(challenge: bytes) -> bytes:
                # RFC 7628: after an error challenge the client answers empty so the
                # server can finish with NO; never resend the token.
                answered.append(challenge)
                return sasl if len(answered) == 1 else b""

            client.sasl_login("XOAUTH2", mechanism)
            return
        if s.password is None:
            raise AuthenticationError(
                "imap.password is not set",
                server=self.server,
                hint="set SEFTPILOT_IMAP__PASSWORD, or use imap.auth = 'xoauth2'",
            )
        client.login(s.username, s.password.get_secret_value())

    def close(self) -> None:
        """Log out if we can; never raises (the connection may already be gone)."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.logout()
            except Exception:
                _quietly(client.shutdown)

    def _discard(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            _quietly(client.shutdown)

    def __enter__(self) -> ImapMailbox:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- capabilities ----------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[str]:
        return self._caps

    def has(self, capability: str) -> bool:
        return capability.upper() in self._caps

    @property
    def uses_idle(self) -> bool:
        """IDLE when switched on and the server offers it; otherwise we poll."""
        return self.settings.idle and self.has("IDLE")

    # -- reading ---------------------------------------------------------------
    def select(self, folder: str | None = None, *, readonly: bool = False) -> FolderState:
        """SELECT ``folder``; with ``readonly``, EXAMINE it instead: the server then
        changes nothing in it for this session (no flag, no \\Recent claimed, no expunge).
        """
        name = folder or self.settings.folder
        with self._boundary():
            info = self.client.select_folder(name, readonly=readonly)
        uidvalidity = info.get(b"UIDVALIDITY")
        if uidvalidity is None:
            raise PermanentError(
                f"SELECT {name} returned no UIDVALIDITY; cannot keep a checkpoint",
                server=self.server,
            )
        flags = frozenset(_text(f) for f in info.get(b"PERMANENTFLAGS", ()))
        uidnext = info.get(b"UIDNEXT")
        self._folder = FolderState(
            name=name,
            uidvalidity=int(uidvalidity),
            uidnext=int(uidnext) if uidnext is not None else None,
            exists=int(info.get(b"EXISTS", 0)),
            permanent_flags=flags,
            # What the server said ([READ-ONLY] / [READ-WRITE] response codes).
            read_only=b"READ-ONLY" in info or (readonly and b"READ-WRITE" not in info),
        )
        return self._folder

    def uids_above(self, last_uid: int) -> list[int]:
        """UIDs greater than ``last_uid`` in the selected folder, ascending."""
        with self._boundary():
            # "n:*" always includes the highest UID, even below n: filter it out.
            found = self.client.search(["UID", f"{last_uid + 1}:*"])
        return sorted(int(u) for u in found if int(u) > last_uid)

    def search_uids(self, since: date | None = None) -> list[int]:
        """UIDs in the selected folder, ascending; with ``since``, only messages whose
        internal date is on or after that day (IMAP SEARCH SINCE, day granularity)."""
        criteria: list[Any] = ["SINCE", since] if since is not None else ["ALL"]
        with self._boundary():
            found = self.client.search(criteria)
        return sorted(int(u) for u in found)

    def fetch(self, uids: Sequence[int]) -> Iterator[FetchedMessage]:
        """The messages ``uids`` in ascending order, fetched in batches, none marked seen.

        A UID expunged meanwhile is skipped (the server no longer has it).
        """
        for batch in self.fetch_batches(uids):
            yield from batch

    def fetch_batches(self, uids: Sequence[int]) -> Iterator[list[FetchedMessage]]:
        """``fetch``, one list per server round trip (``fetch_batch`` messages each), so a
        caller can record a whole batch in one ledger transaction."""
        ordered = sorted(uids)
        for start in range(0, len(ordered), self._fetch_batch):
            batch = ordered[start : start + self._fetch_batch]
            with self._boundary():
                response = self.client.fetch(batch, FETCH_ITEMS)
            out: list[FetchedMessage] = []
            for uid in batch:
                item = response.get(uid)
                if item is None:
                    continue
                raw = item.get(b"BODY[]") or b""
                when = item.get(b"INTERNALDATE")
                out.append(
                    FetchedMessage(
                        uid=uid,
                        # imapclient hands out bytes already; no copy unless it did not.
                        raw=raw if type(raw) is bytes else bytes(raw),
                        size=int(item.get(b"RFC822.SIZE", len(raw))),
                        internal_date=_utc(when) if isinstance(when, datetime) else None,
                    )
                )
            yield out

    # -- waiting ---------------------------------------------------------------
    def wait(self, stop: threading.Event) -> WaitResult:
        """Wait for new mail: IDLE (renewed within ``idle_renew_seconds``) or a poll.

        Returns early when ``stop`` is set. Raises TransientError when the connection
        turns out to be dead, so the caller reconnects and catches up.
        """
        if self.uses_idle:
            return WaitResult("idle", self._idle(stop))
        stop.wait(self.settings.poll_interval_seconds)
        with self._boundary():
            # NOOP proves the connection is alive and lets the server report new mail.
            self.client.noop()
        return WaitResult("poll", False)

    def _idle(self, stop: threading.Event) -> bool:
        renew_at = time.monotonic() + self.settings.idle_renew_seconds
        with self._boundary():
            client = self.client
            if not self._skip_noop:
                # Mail that arrived after the last search but before IDLE starts is not
                # announced by every server once IDLE begins (pymap does not; Dovecot
                # does). A NOOP first reports it. Taken at most once in a row, so a server
                # that sends EXISTS on every NOOP cannot spin us.
                _, untagged = client.noop()
                if any(_is_exists(r) for r in untagged):
                    self._skip_noop = True
                    return True
            self._skip_noop = False
            sock = client.socket()
            while True:
                client.idle()
                woken = False
                try:
                    while not stop.is_set():
                        remaining = renew_at - time.monotonic()
                        if remaining <= 0:
                            break
                        if _readable(sock, min(IDLE_CHECK_SECONDS, remaining)):
                            woken = True
                            break
                finally:
                    # The server said something (or the connection ended): DONE, then its
                    # responses up to the tagged OK, read whole with the connection's
                    # timeout. Not imapclient's idle_check: it reads a non-blocking socket
                    # line by line and breaks on a line the server wrote in two pieces
                    # ("unterminated line", imapclient issue #519; seen with pymap and
                    # reported with Dovecot). DONE's tagged answer also proves the
                    # connection alive, or raises.
                    _, responses = client.idle_done()
                if any(_is_bye(r) for r in responses):
                    raise imaplib.IMAP4.abort("server said BYE during IDLE")
                if any(_is_exists(r) for r in responses):
                    return True
                if not woken:
                    return False  # stopped, or time to renew
                # Something else (a keep-alive, a flag change): back to IDLE until renewal.

    # -- after handling ----------------------------------------------------------
    def after_handling_many(self, uids: Sequence[int]) -> str | None:
        """Flag or move handled messages as configured, in one command each; returns what
        was done. The intake passes one message as it is handled, or the interrupted
        tidy-ups of earlier runs together. A UID no longer in the folder is passed over
        by the server without an error (RFC 3501 UID STORE/COPY, RFC 6851 UID MOVE).
        Without MOVE, redoing a COPY cut short before its \\Deleted can leave a second copy
        in ``move_to``: a duplicate there, never a message lost."""
        mode = self.settings.after_handling
        if mode == "none" or not uids:
            return None
        batch = list(uids)
        if self._folder is not None and self._folder.read_only:
            # Opened with EXAMINE (e.g. `rules test --mailbox`): changing it is a bug.
            raise PermanentError(
                f"{self._folder.name} is open read-only; refusing to {mode} "
                f"uid {','.join(map(str, batch))}",
                server=self.server,
            )
        if mode == "flag":
            flag = self._usable_flag()
            with self._boundary():
                self.client.add_flags(batch, [flag.encode()])
            return f"flagged {flag}"
        target = self._ensure_folder(self.settings.move_to)
        with self._boundary():
            if self.has("MOVE"):
                self.client.move(batch, target)
            else:
                self.client.copy(batch, target)
                self.client.add_flags(batch, [b"\\Deleted"])
                if self.has("UIDPLUS"):
                    self.client.uid_expunge(batch)
                # Without UIDPLUS a plain EXPUNGE could remove messages someone else
                # marked deleted; leave ours marked \Deleted for the server to clean up.
        return f"moved to {target}"

    def _usable_flag(self) -> str:
        flag = self.settings.flag
        folder = self._folder
        if flag.startswith("\\") or folder is None:
            return flag
        if "\\*" in folder.permanent_flags or flag in folder.permanent_flags:
            return flag
        # The server would accept the keyword for this session only and forget it.
        log.warning(
            "%s does not keep keyword %s (PERMANENTFLAGS %s); using \\Flagged instead",
            self.server,
            flag,
            " ".join(sorted(folder.permanent_flags)),
        )
        return "\\Flagged"

    def _ensure_folder(self, name: str) -> str:
        with self._boundary():
            target = self._server_folder_name(name)
            if target not in self._known_folders:
                if not self.client.folder_exists(target):
                    self.client.create_folder(target)
                    log.info("created folder %s on %s", target, self.server)
                self._known_folders.add(target)
        return target

    def _server_folder_name(self, name: str) -> str:
        """``move_to`` is written with "/"; use the server's own hierarchy separator."""
        delimiter = "/"
        if self.has("NAMESPACE"):
            personal = self.client.namespace().personal
            if personal and personal[0][1]:
                delimiter = _text(personal[0][1])
        return name.replace("/", delimiter) if delimiter != "/" else name


def _quietly(call: Callable[[], Any]) -> None:
    try:
        call()
    except Exception as exc:  # closing a dead connection: nothing more to learn
        log.debug("ignored while closing: %s", exc)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _utc(when: datetime) -> datetime:
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)


def _readable(sock: socket.socket, timeout: float) -> bool:
    """Whether ``sock`` has something to read within ``timeout`` seconds: bytes the TLS
    layer has already decrypted count (select cannot see them)."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    readable, _, _ = select.select([sock], [], [], timeout)
    return bool(readable)


def _is_exists(response: Any) -> bool:
    return isinstance(response, tuple) and len(response) >= 2 and response[1] == b"EXISTS"


def _is_bye(response: Any) -> bool:
    return isinstance(response, tuple) and len(response) >= 1 and response[0] == b"BYE"


__all__ = [
    "CAUGHT",
    "DEFAULT_FETCH_BATCH",
    "EXCEPTION_MAP",
    "FetchedMessage",
    "FolderState",
    "ImapMailbox",
    "WaitResult",
    "map_exception",
]
