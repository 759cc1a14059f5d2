"""Embedded servers on loopback: IMAP (pymap), SMTP (aiosmtpd) and SFTP (asyncssh).

Owns the one implementation of each in-process server that the sandbox (``seftpilot demo``,
``seftpilot sandbox up``) and the test fixtures (tests/fixtures/*_server.py are thin
wrappers over this module) start. Each runs its own asyncio loop in a daemon thread, binds
127.0.0.1 on a port the kernel picks, is handed out only once it answers (readiness), and
stops cleanly (``stop()``: listener closed, client connections aborted, loop closed).

- ``ImapServer``: pymap's dict backend speaking real IMAP4rev1 with IDLE, UIDPLUS, MOVE and
  STARTTLS; adds implicit TLS, XOAUTH2 bearer tokens (``add_token``), and the hooks that
  tests and the NHS England simulator need: ``append`` (with the internal date the caller's
  clock says: the service dates mail by it), ``drop_connections``, ``change_uidvalidity``,
  ``folder_uids`` / ``flags`` / ``messages`` / ``folders``.
- ``SmtpServer``: aiosmtpd's threaded Controller; optional STARTTLS and AUTH, ``fail_next``
  refusals, and a ``deliver_to`` hook (the sandbox files each message into the IMAP server).
- ``SftpServer``: one user (password or a generated ed25519 client key) confined to
  ``base/root``, a generated ed25519 host key pinned in ``base/known_hosts``; records
  renames (``renames``) so a test can count what reached its final name, and can cut the
  connection after a byte budget (``drop_after_bytes``).

Must not listen beyond loopback, accept a client key it did not generate, or import test
code: TLS material comes in as anything with ``ca_file`` and ``server_context()``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
import time
from argparse import Namespace
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncssh
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from proxyprotocol.reader import ProxyProtocolReader
from pydantic import SecretStr
from pymap.backend.dict import Config as DictConfig
from pymap.backend.dict import Identity, Login
from pymap.backend.dict.mailbox import MailboxData, MailboxSet
from pymap.config import BackendCapability
from pymap.exceptions import InvalidAuth
from pymap.imap import IMAPServer
from pymap.parsing.message import AppendMessage
from pymap.parsing.specials.flag import Flag
from pymap.user import Passwords, UserMetadata
from pysasl import SASLAuth
from pysasl.creds.external import ExternalCredentials
from pysasl.mechanism.oauth import OAuth2Mechanism

from seftpilot.config import ImapSettings, SftpEndpoint, SmtpSettings

LOOPBACK = "127.0.0.1"
# Defaults for throw-away servers (tests); the sandbox generates its own passwords.
IMAP_USER = "study@example.org"
IMAP_PASSWORD = "correct horse battery staple"  # noqa: S105 - loopback test server's own
SFTP_USER = "partner"
SFTP_PASSWORD = "correct horse battery staple"  # noqa: S105 - loopback test server's own


class TlsMaterial(Protocol):
    """A server certificate: what a client trusts (``ca_file``) and the server's context."""

    @property
    def ca_file(self) -> Path: ...

    def server_context(self) -> ssl.SSLContext: ...


# == IMAP ====================================================================================
T = TypeVar("T")


class _Config(DictConfig):
    """The dict backend's config, with XOAUTH2 offered and IDLE optional."""

    def __init__(self, *args: Any, idle: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle = idle

    @property
    def backend_capability(self) -> BackendCapability:
        return BackendCapability(idle=self._idle, object_id=True, multi_append=True)

    @property
    def tls_auth(self) -> SASLAuth:
        return SASLAuth([*SASLAuth.defaults().server_mechanisms, OAuth2Mechanism()])


class _Login(Login):
    """Password logins as pymap does them, plus bearer tokens registered by the test."""

    def __init__(self, config: _Config) -> None:
        super().__init__(config)
        self.bearer_tokens: dict[str, str] = {}  # token -> user

    async def authenticate(self, credentials: Any) -> Identity:
        if isinstance(credentials, ExternalCredentials):
            user = self.bearer_tokens.get(credentials._token or "")
            if user is None or user != credentials.authzid:
                raise InvalidAuth()
            return Identity(user, self, None, frozenset())
        return await super().authenticate(credentials)


class _TrackingServer(IMAPServer):
    """pymap's connection handler, remembering each connection so tests can drop them."""

    def __init__(self, login: _Login, config: _Config, writers: set[asyncio.StreamWriter]) -> None:
        super().__init__(login, config)
        self._writers = writers

    async def __call__(self, reader: Any, writer: Any, sock_info: Any = None) -> None:
        self._writers.add(writer)
        try:
            await super().__call__(reader, writer, sock_info)
        except (ConnectionError, ssl.SSLError, EOFError):
            pass  # a client that hung up, or that refused our certificate
        finally:
            self._writers.discard(writer)


@dataclass
class ImapServer:
    """A running pymap server. ``settings()`` gives ImapSettings that reach it."""

    security: str = "plain"  # plain | tls | starttls
    tls: TlsMaterial | None = None
    idle: bool = True
    host: str = LOOPBACK
    port: int = 0
    username: str = IMAP_USER
    password: str = IMAP_PASSWORD
    _loop: asyncio.AbstractEventLoop = field(init=False, repr=False)
    _thread: threading.Thread = field(init=False, repr=False)
    _writers: set[asyncio.StreamWriter] = field(init=False, repr=False, default_factory=set)
    _server: asyncio.AbstractServer | None = field(init=False, repr=False, default=None)

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> ImapServer:
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name="pymap", daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("pymap did not start within 10 s")
        self._wait_for_greeting()
        return self

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()
        finally:
            # Let aborted connections finish their handlers, then release the loop's sockets.
            pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _start(self) -> None:
        tls_ctx = self.tls.server_context() if self.tls else None
        args = Namespace(passlib_cfg=None, proxy_protocol=None, inherited_sockets=None)
        self.config = _Config(
            args,
            host=self.host,
            port=0,
            idle=self.idle,
            demo_data=False,
            demo_user=self.username,
            demo_password=self.password,
            ssl_context=tls_ctx,
            # STARTTLS is offered (and LOGIN refused before it) only in starttls mode;
            # with implicit TLS the socket is already wrapped.
            tls_enabled=self.security == "starttls",
            invalid_user_sleep=0.0,
            reject_dnsbl=False,
        )
        self.config.apply_context()
        self.login = _Login(self.config)
        hashed = await Passwords(self.config).hash_password(self.password)
        await self.login.demo_user_identity.set(
            UserMetadata(self.config, self.username, password=hashed)
        )
        handler = _TrackingServer(self.login, self.config, self._writers)

        on_connect = ProxyProtocolReader(self.config.proxy_protocol).get_callback(handler)
        self._server = await asyncio.start_server(
            on_connect,
            host=self.host,
            port=0,
            ssl=tls_ctx if self.security == "tls" else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def _wait_for_greeting(self) -> None:
        """Readiness: a TCP connect that gets a byte back (or a TLS handshake) in time."""
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as sock:
                    if self.security == "tls":
                        return  # accepting connections is enough; handshakes need the CA
                    if sock.recv(4).startswith(b"* "):
                        return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return  # already stopped (a test may stop it early)

        async def _close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
            for writer in list(self._writers):
                writer.transport.abort()

        try:
            self._call(_close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- what a client needs ---------------------------------------------------
    def settings(self, **overrides: Any) -> ImapSettings:
        values: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "security": self.security,
            "username": self.username,
            "password": self.password,
            "timeout_seconds": 10.0,
        }
        if self.tls is not None:
            values["ca_file"] = self.tls.ca_file
        values.update(overrides)
        return ImapSettings(**values)

    def add_token(self, token: str, user: str | None = None) -> None:
        """Accept ``token`` as an XOAUTH2 bearer token for ``user``."""
        self.login.bearer_tokens[token] = user or self.username

    # -- reaching into the mailbox ---------------------------------------------
    async def _mailboxes(self) -> MailboxSet:
        identity = self.login.demo_user_identity
        async with identity.new_session() as session:
            return session.mailbox_set

    async def _mailbox(self, folder: str) -> MailboxData:
        mailboxes = await self._mailboxes()
        if folder.upper() != "INBOX":
            names = list((await mailboxes.list_mailboxes()).list())
            if not any(entry.name == folder for entry in names):
                await mailboxes.add_mailbox(folder)
        return await mailboxes.get_mailbox(folder)

    def append(
        self,
        raw: bytes,
        folder: str = "INBOX",
        flags: tuple[str, ...] = (),
        when: datetime | None = None,
    ) -> int:
        """Deliver ``raw`` into ``folder``; returns its UID. Wakes IDLE clients."""

        async def _append() -> int:
            mailbox = await self._mailbox(folder)
            message = AppendMessage(
                raw, when or datetime.now(UTC), frozenset(Flag(f.encode()) for f in flags)
            )
            return (await mailbox.append(message, recent=True)).uid

        return self._call(_append())

    def folder_uids(self, folder: str = "INBOX") -> list[int]:
        async def _uids() -> list[int]:
            mailbox = await self._mailbox(folder)
            return sorted([m.uid async for m in mailbox.messages()])

        return self._call(_uids())

    def flags(self, folder: str = "INBOX") -> dict[int, set[str]]:
        async def _flags() -> dict[int, set[str]]:
            mailbox = await self._mailbox(folder)
            return {
                m.uid: {bytes(f).decode() for f in m.permanent_flags}
                async for m in mailbox.messages()
            }

        return self._call(_flags())

    def messages(self, folder: str = "INBOX") -> list[bytes]:
        async def _messages() -> list[bytes]:
            mailbox = await self._mailbox(folder)
            return [bytes(m._content or b"") async for m in mailbox.messages()]

        return self._call(_messages())

    def folders(self) -> list[str]:
        async def _folders() -> list[str]:
            mailboxes = await self._mailboxes()
            return [entry.name for entry in (await mailboxes.list_mailboxes()).list()]

        return self._call(_folders())

    def uidvalidity(self, folder: str = "INBOX") -> int:
        async def _uv() -> int:
            return (await self._mailbox(folder)).uid_validity

        return self._call(_uv())

    def change_uidvalidity(self) -> int:
        """Rebuild INBOX: same messages, new UIDs, a new UIDVALIDITY; clients are dropped.

        This is what a server migration or a restored mailbox looks like to a client.
        """

        async def _rebuild() -> int:
            mailboxes = await self._mailboxes()
            old = mailboxes._inbox
            new = MailboxData(mailboxes._content_cache, mailboxes._thread_cache)
            while new.uid_validity == old.uid_validity:
                new = MailboxData(mailboxes._content_cache, mailboxes._thread_cache)
            new._max_uid = old._max_uid + 1000  # new UIDs must not line up with old ones
            async for message in old.messages():
                await new.append(
                    AppendMessage(
                        bytes(message._content or b""),
                        message.internal_date,
                        frozenset(message.permanent_flags),
                    )
                )
            mailboxes._inbox = new
            for writer in list(self._writers):
                writer.transport.abort()
            return new.uid_validity

        return self._call(_rebuild())

    def drop_connections(self) -> int:
        """Reset every client connection at once (a NAT timeout, a server restart)."""

        async def _drop() -> int:
            writers = list(self._writers)
            for writer in writers:
                writer.transport.abort()
            return len(writers)

        return self._call(_drop())

    def connection_count(self) -> int:
        return len(self._writers)


# == SMTP ====================================================================================
FAIL_REPLIES = {
    451: "451 4.3.0 Temporary local problem, try again later",
    421: "421 4.3.2 Service shutting down",
    550: "550 5.7.1 Message rejected by policy",
    554: "554 5.6.0 Transaction failed",
}


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    authenticated_as: str | None = None

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


def _content_bytes(envelope: Envelope) -> bytes:
    raw = envelope.original_content or envelope.content or b""
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else bytes(raw)


@dataclass
class _Handler:
    deliver_to: Callable[[ReceivedMail], None] | None = None
    messages: list[ReceivedMail] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    fail_remaining: int = 0
    fail_code: int = 451
    refused: int = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            if self.fail_remaining > 0:
                self.fail_remaining -= 1
                self.refused += 1
                return FAIL_REPLIES[self.fail_code]
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        mail = ReceivedMail(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            content=_content_bytes(envelope),
            authenticated_as=login.decode() if isinstance(login, bytes) else None,
        )
        if self.deliver_to is not None:
            self.deliver_to(mail)
        with self.lock:
            self.messages.append(mail)
        return "250 2.0.0 OK queued"


class _LoopbackController(Controller):
    """Binds 127.0.0.1 port 0 itself and publishes the port the kernel chose."""

    def _create_server(self) -> Any:
        # IPPROTO_TCP named, not left 0: asyncio turns Nagle off (TCP_NODELAY) only on
        # sockets whose proto says TCP. Without it each multi-line reply (EHLO's) waited
        # out Nagle against the client's delayed ACK: 42 ms per EHLO, now under 1 ms.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind((LOOPBACK, 0))
        self.port = sock.getsockname()[1]
        return self.loop.create_server(self._factory_invoker, sock=sock, ssl=self.ssl_context)


class SmtpServer:
    """A running server: its address, what it received, and the failure hook."""

    def __init__(
        self,
        *,
        tls: TlsMaterial | None = None,
        auth: tuple[str, str] | None = None,
        auth_require_tls: bool = True,
        deliver_to: Callable[[ReceivedMail], None] | None = None,
    ) -> None:
        self.host = LOOPBACK
        self.tls = tls
        self.auth = auth
        self._handler = _Handler(deliver_to=deliver_to)
        kwargs: dict[str, Any] = {}
        if tls is not None:
            kwargs.update(tls_context=tls.server_context(), require_starttls=True)
        if auth is not None:
            kwargs.update(
                authenticator=self._authenticate,
                auth_required=True,
                auth_require_tls=auth_require_tls,
            )
        self._controller = _LoopbackController(
            self._handler, hostname=self.host, port=0, server_hostname="smtp.test", **kwargs
        )
        self._controller.start()
        self.port: int = self._controller.port

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert self.auth is not None
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == self.auth[0]
            and data.password.decode() == self.auth[1]
        )
        # handled=False: aiosmtpd itself answers a refusal with 535.
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    @property
    def messages(self) -> list[ReceivedMail]:
        with self._handler.lock:
            return list(self._handler.messages)

    @property
    def refused(self) -> int:
        """How many transactions ``fail_next`` has refused so far."""
        with self._handler.lock:
            return self._handler.refused

    def fail_next(self, count: int, code: int = 451) -> None:
        """Refuse the next ``count`` messages at DATA with ``code`` (451, 421, 550, 554)."""
        if code not in FAIL_REPLIES:
            raise ValueError(f"choose one of {sorted(FAIL_REPLIES)}")
        with self._handler.lock:
            self._handler.fail_remaining = count
            self._handler.fail_code = code

    def settings(self, **overrides: Any) -> SmtpSettings:
        """Client settings that reach this server (STARTTLS + CA + AUTH when it has them)."""
        values: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "security": "starttls" if self.tls is not None else "plain",
            "from_address": "seftpilot@study.example",
            "timeout_seconds": 10.0,
        }
        if self.tls is not None:
            values["ca_file"] = self.tls.ca_file
        if self.auth is not None:
            values["username"], values["password"] = self.auth
        values.update(overrides)
        return SmtpSettings(**values)

    def stop(self) -> None:
        self._controller.stop()


# == SFTP ====================================================================================
def write_key_pair(directory: Path, name: str) -> tuple[asyncssh.SSHKey, Path]:
    """A fresh ed25519 key written in OpenSSH format as ``directory/name`` (0600) + ``.pub``."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = directory / name
    path.write_bytes(key.export_private_key("openssh"))
    path.chmod(0o600)
    (directory / f"{name}.pub").write_bytes(key.export_public_key("openssh"))
    return key, path


def known_hosts_line(host: str, port: int, key: asyncssh.SSHKey) -> str:
    """The line ``ssh-keyscan -p PORT HOST`` would print for ``key``."""
    name = host if port == 22 else f"[{host}]:{port}"
    algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
    return f"{name} {algorithm} {blob}\n"


class _Server(asyncssh.SSHServer):
    def __init__(self, owner: SftpServer) -> None:
        self._owner = owner
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._owner.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._owner.connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True  # always require authentication

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == self._owner.username and password == self._owner.password

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return username == self._owner.username and (
            key.public_data == self._owner.client_key.public_data
        )


class _DroppingSftp(asyncssh.SFTPServer):
    """Chroot-confined SFTP that records renames and can abort the connection after a
    byte budget."""

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], owner: SftpServer) -> None:
        super().__init__(chan, chroot=os.fsencode(owner.root))
        self._owner = owner

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        owner = self._owner
        with owner.lock:
            owner.bytes_written += len(data)
            budget = owner.drop_after_bytes
            if budget is not None:
                if len(data) > budget:
                    owner.drop_after_bytes = None
                    owner.drops += 1
                    # Write the part of the chunk that "arrived", then cut the line.
                    super().write(file_obj, offset, data[:budget])
                    self.connection.abort()
                    raise asyncssh.SFTPConnectionLost("test drop")
                owner.drop_after_bytes = budget - len(data)
        result = super().write(file_obj, offset, data)
        assert isinstance(result, int)
        return result

    def _renamed(self, oldpath: bytes, newpath: bytes) -> None:
        with self._owner.lock:
            self._owner.renames.append((os.fsdecode(oldpath), os.fsdecode(newpath)))

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        super().rename(oldpath, newpath)
        self._renamed(oldpath, newpath)

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        super().posix_rename(oldpath, newpath)
        self._renamed(oldpath, newpath)


@dataclass
class SftpServer:
    """Handle on the running in-process server (see the module docstring)."""

    base: Path
    host: str = LOOPBACK
    port: int = 0
    username: str = SFTP_USER
    password: str = SFTP_PASSWORD
    drop_after_bytes: int | None = None
    drops: int = 0
    bytes_written: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: set[asyncssh.SSHServerConnection] = field(default_factory=set)
    # (old, new) client paths of every completed rename: how a file reaches its final name.
    renames: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.base.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root = self.base / "root"
        self.root.mkdir(mode=0o700)
        keys = self.base / "keys"
        keys.mkdir(mode=0o700)
        self.host_key, _ = write_key_pair(keys, "host_key")
        self.client_key, self.client_key_file = write_key_pair(keys, "client_key")
        self.known_hosts = self.base / "known_hosts"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._acceptor: asyncssh.SSHAcceptor | None = None

    def start(self) -> SftpServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self._acceptor = future.result(timeout=10)  # readiness: the socket is listening
        self.port = self._acceptor.get_port()
        self.known_hosts.write_text(known_hosts_line(self.host, self.port, self.host_key))
        return self

    def renamed_to(self, prefix: str = "") -> list[str]:
        """Final names (client paths) files were renamed to, oldest first."""
        with self.lock:
            return [new for _, new in self.renames if os.path.basename(new).startswith(prefix)]

    def drop_connections(self) -> int:
        """Abort every client connection at once (a firewall timeout, a restart)."""

        async def _drop() -> int:
            conns = list(self.connections)
            for conn in conns:
                conn.abort()
            return len(conns)

        return asyncio.run_coroutine_threadsafe(_drop(), self._loop).result(timeout=10)

    async def _listen(self) -> asyncssh.SSHAcceptor:
        return await asyncssh.listen(
            self.host,
            0,
            server_host_keys=[self.host_key],
            server_factory=lambda: _Server(self),
            sftp_factory=lambda chan: _DroppingSftp(chan, self),
            allow_scp=False,
            keepalive_interval=0,
        )

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        acceptor = self._acceptor
        if acceptor is not None:

            async def _close() -> None:
                acceptor.close()
                await acceptor.wait_closed()
                # Connections a client abandoned mid-handshake (a refused host key) linger.
                for conn in list(self.connections):
                    conn.close()
                    await conn.wait_closed()
                await asyncio.sleep(0)

            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def endpoint(self, *, auth: str = "key", **overrides: Any) -> SftpEndpoint:
        """A ``config.SftpEndpoint`` for this server (key auth, or ``auth="password"``)."""
        values: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "known_hosts": self.known_hosts,
            "remote_dir": "/",
            "timeout_seconds": 10.0,
        }
        if auth == "password":
            values["password"] = SecretStr(self.password)
        else:
            values["key_file"] = self.client_key_file
        values.update(overrides)
        return SftpEndpoint(**values)
