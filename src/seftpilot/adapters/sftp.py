"""SFTP with paramiko: pinned host keys, temp name + rename, list, download.

Owns one SSH/SFTP session to one ``config.SftpEndpoint`` (SEFT's areas or the partner's drop)
and the translation of every paramiko, socket and OS error into ``seftpilot.errors`` at this
boundary (see ``map_exception``). It must not decide *whether* to upload (the ledger and the
service do: "never re-upload blind"), retry on its own beyond re-fetching a damaged download,
log secrets, or ever accept a host key that is not pinned in the endpoint's known_hosts file.

Guarantees:
- A file appears under its final remote name only after all its bytes were written to a
  temporary name (``.upload-<name>.part`` by default, which the partner's router ignores) and
  the remote size equals the local size; the rename is atomic (``posix-rename@openssh.com``,
  else remove + rename). A dropped connection leaves at most the temporary file, which the
  next attempt overwrites (restart, not resume: a prefix written before a drop cannot be
  verified remotely, so it is never trusted).
- A download lands under its local name (mode 0600) only when its size (and SHA-256, when
  given) are right; a wrong one is fetched once more before giving up.

Throughput: paramiko's defaults reach about half of OpenSSH's ``sftp`` on loopback. The
costs are per SSH packet (Python framing, cipher, MAC), so this module keeps every SFTP
write inside one SSH packet, keeps many writes in flight (like OpenSSH's 64 requests),
prefers AES-GCM (no separate MAC pass) and opens large channel windows. See
benchmarks/RESULTS.md ("SFTP upload") for the measurements behind the defaults.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import re
import socket
import stat as stat_module
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import paramiko
from paramiko.sftp import CMD_STATUS, CMD_WRITE, SFTP_OK, int64
from paramiko.util import ClosingContextManager
from pydantic import SecretStr

from seftpilot.config import SftpEndpoint
from seftpilot.errors import (
    AuthenticationError,
    ConfigError,
    HostKeyError,
    PermanentError,
    TransientError,
    TransportError,
)

Progress = Callable[[int, int], None]
"""``progress(done_bytes, total_bytes)``, called as a transfer advances."""

# Names the partner's router picks up; a temporary name must never look like one of these.
ROUTER_PREFIXES = ("isaric-",)
DEFAULT_TEMP_TEMPLATE = ".upload-{name}.part"

# Tuning (benchmarks/bench_sftp.py). Large windows keep the pipe full on fast links.
WINDOW_SIZE = 64 * 1024 * 1024
MAX_PACKET_SIZE = 256 * 1024
MAX_OUTSTANDING_WRITES = 64
READ_BLOCK = 1024 * 1024
PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)
KEEPALIVE_SECONDS = 30
# Write request framing: uint32 len, byte type, uint32 id, string handle, uint64 offset,
# uint32 data length; plus slack for the channel's own header (paramiko keeps 64 bytes).
_WRITE_OVERHEAD = 4 + 1 + 4 + 4 + 8 + 4 + 64


@dataclass(frozen=True)
class RemoteFile:
    """One entry of a remote directory listing (regular files only)."""

    name: str
    size: int
    mtime: int  # seconds since the epoch, as the server reports it


@dataclass(frozen=True)
class UploadResult:
    remote_path: str
    size: int
    already_present: bool  # the final name already held a file of this exact size


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size: int
    sha256: str
    attempts: int


# --- exception mapping ---------------------------------------------------------------------

_PERMANENT_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.EACCES,
        errno.EPERM,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.EEXIST,
        errno.ENOSPC,
        errno.EROFS,
        errno.EDQUOT,
        errno.ENAMETOOLONG,
    }
)

CAUGHT: tuple[type[BaseException], ...] = (
    paramiko.BadHostKeyException,
    paramiko.AuthenticationException,
    paramiko.ssh_exception.IncompatiblePeer,
    paramiko.ChannelException,
    paramiko.SFTPError,
    paramiko.SSHException,
    EOFError,
    socket.gaierror,
    TimeoutError,
    ConnectionError,
    OSError,
)
"""Every exception type ``map_exception`` translates (tests prove each one maps)."""


def _fingerprint(key: paramiko.PKey) -> str:
    return str(key.fingerprint)


# paramiko's words for "the transport died (or went quiet) while authenticating".
_NOT_A_REFUSAL = re.compile(r"transport shut down or saw EOF|Authentication timeout")


def map_exception(exc: BaseException, server: str, what: str = "") -> TransportError:
    """Translate one of ``CAUGHT`` into our tree; ``what`` names the operation and path."""
    where = f"{what}: " if what else ""
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        return HostKeyError(
            f"host key CHANGED: known_hosts pins {_fingerprint(exc.expected_key)}, "
            f"the server offered {_fingerprint(exc.key)}",
            server=server,
            hint="refused. Find out why the key changed before editing known_hosts",
        )
    if isinstance(exc, paramiko.AuthenticationException) and _NOT_A_REFUSAL.search(str(exc)):
        # paramiko reports a connection lost (or stalled) mid-authentication as an
        # authentication failure; it is the network's, and worth another try.
        return TransientError(
            f"{where}connection lost during authentication ({exc})",
            server=server,
            hint="retry later; if it persists, check the server",
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return AuthenticationError(
            f"{where}authentication refused ({exc})",
            server=server,
            hint="check username, key_file/key_passphrase or password for this endpoint",
        )
    if isinstance(exc, paramiko.ssh_exception.IncompatiblePeer):
        return PermanentError(
            f"{where}no common algorithm with the server ({exc})",
            server=server,
            hint="the server offers no host key type pinned in known_hosts, or no cipher we accept",
        )
    if isinstance(exc, paramiko.SFTPError):
        return PermanentError(f"{where}SFTP protocol error: {exc}", server=server)
    if isinstance(exc, (paramiko.ChannelException, paramiko.SSHException, EOFError)):
        return TransientError(
            f"{where}connection lost or refused by the SSH layer ({exc or type(exc).__name__})",
            server=server,
            hint="retry later; if it persists, check the server",
        )
    if isinstance(exc, socket.gaierror):
        return TransientError(
            f"{where}cannot resolve the host name ({exc})",
            server=server,
            hint="check the endpoint's host, and DNS",
        )
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return TransientError(
            f"{where}network error: {exc or type(exc).__name__}",
            server=server,
            hint="retry later; check the server is up and reachable",
        )
    if isinstance(exc, OSError):
        if exc.errno in _PERMANENT_ERRNOS:
            label = errno.errorcode.get(exc.errno or 0, "error")
            return PermanentError(
                f"{where}{label}: {exc.strerror or exc}",
                server=server,
                hint="check the remote path and this account's permissions there",
            )
        return TransientError(f"{where}{exc}", server=server, hint="retry later")
    raise TypeError(f"map_exception cannot translate {type(exc).__name__}")  # pragma: no cover


# --- host keys -------------------------------------------------------------------------------


def _known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def _pin_hint(host: str, port: int, known_hosts: Path) -> str:
    return (
        f"pin it: `ssh-keyscan -p {port} {host} >> {known_hosts}`, then compare the "
        "fingerprint with one the server's owner gives you by another channel "
        "(`ssh-keygen -lf known_hosts`)"
    )


def _load_known_hosts(endpoint: SftpEndpoint) -> paramiko.HostKeys:
    keys = paramiko.HostKeys()
    try:
        keys.load(str(endpoint.known_hosts))
    except FileNotFoundError:
        pass  # treated as "no key pinned": the refusal below says how to pin one
    except (OSError, paramiko.SSHException) as exc:
        raise ConfigError(
            f"cannot read known_hosts: {exc}",
            file=str(endpoint.known_hosts),
            key="known_hosts",
        ) from None
    return keys


def _key_types_for(pinned: dict[str, paramiko.PKey]) -> list[str]:
    types: list[str] = []
    for name in pinned:
        if name == "ssh-rsa":
            types += ["rsa-sha2-512", "rsa-sha2-256"]
        else:
            types.append(name)
    return types


def _load_private_key(path: Path, passphrase: SecretStr | None) -> paramiko.PKey:
    """The first key class that reads ``path`` (paramiko's ``PKey.from_path`` mishandles
    passphrases: it hands a str to an API that wants bytes)."""
    secret = passphrase.get_secret_value() if passphrase is not None else None
    last: Exception | None = None
    key_classes: tuple[type[paramiko.PKey], ...] = (
        paramiko.Ed25519Key,
        paramiko.ECDSAKey,
        paramiko.RSAKey,
    )
    for key_class in key_classes:
        try:
            return key_class.from_private_key_file(str(path), password=secret)
        except paramiko.PasswordRequiredException:
            raise
        except paramiko.SSHException as exc:
            last = exc
    raise paramiko.SSHException(f"not a supported private key ({last})")


# --- the client ------------------------------------------------------------------------------


class _WriteAcks:
    """Collects the status replies of pipelined writes, in whatever order they arrive."""

    def __init__(self) -> None:
        self.pending: set[int] = set()
        self.error: OSError | paramiko.SFTPError | None = None

    # paramiko's SFTPClient calls this for replies to requests registered with this object.
    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:
        self.pending.discard(num)
        if t != CMD_STATUS:
            self.error = self.error or paramiko.SFTPError("expected a status reply to a write")
            return
        code = msg.get_int()
        if code != SFTP_OK and self.error is None:
            text = msg.get_text()
            self.error = OSError(errno.ENOSPC if "space" in text.lower() else None, text)


class SftpClient(ClosingContextManager):
    """One connection to ``endpoint``; use as a context manager.

    Relative remote names are resolved in ``endpoint.remote_dir``.
    """

    def __init__(
        self,
        endpoint: SftpEndpoint,
        *,
        window_size: int = WINDOW_SIZE,
        max_packet_size: int = MAX_PACKET_SIZE,
        max_outstanding_writes: int = MAX_OUTSTANDING_WRITES,
        ciphers: tuple[str, ...] = PREFERRED_CIPHERS,
    ) -> None:
        self.endpoint = endpoint
        self.server = f"{endpoint.host}:{endpoint.port}"
        self._window_size = window_size
        self._max_packet_size = max_packet_size
        self._max_outstanding = max_outstanding_writes
        self._ciphers = ciphers
        self._transport: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None

    # -- lifecycle

    def __enter__(self) -> SftpClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        try:
            yield
        except CAUGHT as exc:
            raise map_exception(exc, self.server, what) from exc

    def connect(self) -> None:
        """Open the connection; on any failure nothing is left open."""
        try:
            self._connect()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        ep = self.endpoint
        timeout = ep.timeout_seconds
        known = _load_known_hosts(ep)
        name = _known_hosts_name(ep.host, ep.port)
        pinned = known.lookup(name)
        pinned_keys: dict[str, paramiko.PKey] = dict(pinned.items()) if pinned else {}
        with self._mapped("connect"):
            sock = socket.create_connection((ep.host, ep.port), timeout=timeout)
            transport = paramiko.Transport(
                sock,
                default_window_size=self._window_size,
                default_max_packet_size=self._max_packet_size,
            )
            self._transport = transport
            transport.banner_timeout = timeout
            transport.auth_timeout = timeout
            transport.handshake_timeout = timeout
            options = transport.get_security_options()
            available = set(options.ciphers)
            options.ciphers = tuple(c for c in self._ciphers if c in available) or tuple(
                options.ciphers
            )
            if pinned_keys:
                # Ask only for key types we can check, as OpenSSH does with known hosts.
                wanted = [t for t in _key_types_for(pinned_keys) if t in options.key_types]
                if wanted:
                    options.key_types = tuple(wanted)
            try:
                transport.start_client(timeout=timeout)
            except paramiko.ssh_exception.IncompatiblePeer as exc:
                if pinned_keys:
                    raise HostKeyError(
                        f"the server offers none of the host key types pinned for {name} "
                        f"in {ep.known_hosts} ({', '.join(pinned_keys)})",
                        server=self.server,
                        hint="treat as a changed key: verify with the server's owner",
                    ) from exc
                raise
            self._check_host_key(transport.get_remote_server_key(), pinned_keys, name)
            self._authenticate(transport)
            transport.set_keepalive(KEEPALIVE_SECONDS)
            sftp = paramiko.SFTPClient.from_transport(
                transport, window_size=self._window_size, max_packet_size=self._max_packet_size
            )
            if sftp is None:  # pragma: no cover - only when the channel cannot open
                raise TransientError("could not open an SFTP channel", server=self.server)
            sftp.get_channel().settimeout(timeout)  # type: ignore[union-attr]
            self._sftp = sftp

    def _check_host_key(
        self, offered: paramiko.PKey, pinned: dict[str, paramiko.PKey], name: str
    ) -> None:
        ep = self.endpoint
        if not pinned:
            self.close()
            raise HostKeyError(
                f"host key not pinned: {name} is not in {ep.known_hosts}; the server offered "
                f"{offered.get_name()} {_fingerprint(offered)}",
                server=self.server,
                hint=_pin_hint(ep.host, ep.port, ep.known_hosts),
            )
        expected = pinned.get(offered.get_name())
        if expected is None or expected != offered:
            self.close()
            wanted = ", ".join(f"{k.get_name()} {_fingerprint(k)}" for k in pinned.values())
            raise HostKeyError(
                f"host key CHANGED: {ep.known_hosts} pins {wanted}; the server offered "
                f"{offered.get_name()} {_fingerprint(offered)}. Refused",
                server=self.server,
                hint=(
                    "someone may be intercepting the connection, or the server was rebuilt: "
                    "confirm the new fingerprint with its owner before replacing the line"
                ),
            )

    def _authenticate(self, transport: paramiko.Transport) -> None:
        ep = self.endpoint
        if ep.key_file is None and ep.password is None:
            raise ConfigError(
                "no credentials: set key_file or password for this SFTP endpoint",
                key="sftp.key_file",
            )
        if ep.key_file is not None:
            try:
                pkey = _load_private_key(ep.key_file, ep.key_passphrase)
            except FileNotFoundError:
                raise ConfigError(
                    "private key file not found", file=str(ep.key_file), key="sftp.key_file"
                ) from None
            except paramiko.PasswordRequiredException:
                raise ConfigError(
                    "the private key is encrypted and no key_passphrase is set",
                    file=str(ep.key_file),
                    key="sftp.key_passphrase",
                ) from None
            except (paramiko.SSHException, ValueError, TypeError) as exc:
                raise ConfigError(
                    f"cannot load the private key ({exc})",
                    file=str(ep.key_file),
                    key="sftp.key_file",
                    hint="is key_passphrase right? is it an OpenSSH or PEM private key?",
                ) from None
            transport.auth_publickey(ep.username, pkey)
        else:
            assert ep.password is not None
            transport.auth_password(ep.username, ep.password.get_secret_value())

    def close(self) -> None:
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.close()
            self._sftp = None
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.close()
            self._transport = None

    # -- helpers

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            raise TransientError("not connected", server=self.server)
        return self._sftp

    def path(self, name: str) -> str:
        """``name`` resolved in the endpoint's remote_dir (absolute names are kept)."""
        return posixpath.join(self.endpoint.remote_dir, name)

    # -- operations

    def list(self, directory: str | None = None) -> list[RemoteFile]:
        """Regular files in ``directory`` (default: remote_dir), sorted by name."""
        target = self.path(directory) if directory else self.endpoint.remote_dir
        with self._mapped(f"list {target}"):
            entries = self.sftp.listdir_attr(target)
        files = [
            RemoteFile(e.filename, int(e.st_size or 0), int(e.st_mtime or 0))
            for e in entries
            if e.st_mode is None or stat_module.S_ISREG(e.st_mode)
        ]
        return sorted(files, key=lambda f: f.name)

    def stat(self, name: str) -> RemoteFile | None:
        """The remote file ``name``, or None when there is none."""
        target = self.path(name)
        try:
            with self._mapped(f"stat {target}"):
                attrs = self.sftp.stat(target)
        except PermanentError as exc:
            if isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.ENOENT:
                return None
            raise
        return RemoteFile(
            posixpath.basename(target), int(attrs.st_size or 0), int(attrs.st_mtime or 0)
        )

    def remove(self, name: str) -> None:
        target = self.path(name)
        with self._mapped(f"remove {target}"):
            self.sftp.remove(target)

    def upload(
        self,
        local: Path,
        remote_name: str,
        *,
        temp_name: str | None = None,
        progress: Progress | None = None,
        overwrite: bool = False,
    ) -> UploadResult:
        """Upload ``local`` as ``remote_name`` via a temporary name (see the module docstring).

        When the final name already holds a file of the same size (an earlier attempt
        finished but its answer was lost), nothing is sent and ``already_present`` is True;
        a different size there is refused unless ``overwrite``.
        """
        if "/" in remote_name or remote_name in ("", ".", ".."):
            raise ValueError(f"remote_name must be a plain file name, not {remote_name!r}")
        temp = temp_name or DEFAULT_TEMP_TEMPLATE.format(name=remote_name)
        if "/" in temp or temp == remote_name or temp.startswith(ROUTER_PREFIXES):
            raise ValueError(
                f"temporary name {temp!r} must be a plain name, differ from the final name "
                f"and not start with {' or '.join(ROUTER_PREFIXES)} (the partner's router "
                "would pick up a half file)"
            )
        final_path, temp_path = self.path(remote_name), self.path(temp)
        size = local.stat().st_size
        existing = self.stat(remote_name)
        if existing is not None and not overwrite:
            if existing.size == size:
                return UploadResult(final_path, size, already_present=True)
            raise PermanentError(
                f"{final_path} already exists with {existing.size} bytes (ours: {size})",
                server=self.server,
                hint="a different file holds that name: find out what it is before overwriting",
            )
        with self._mapped(f"upload {local.name} to {temp_path}"):
            written = self._write_file(local, temp_path, size, progress)
            remote_size = self.sftp.stat(temp_path).st_size
        if written != size or remote_size != size:
            raise TransientError(
                f"upload of {local.name} incomplete: {remote_size} of {size} bytes arrived "
                f"at {temp_path}",
                server=self.server,
                hint="retry: the next attempt starts the temporary file again",
            )
        with self._mapped(f"rename {temp_path} to {final_path}"):
            self._rename(temp_path, final_path)
            final_size = self.sftp.stat(final_path).st_size
        if final_size != size:
            raise TransientError(
                f"{final_path} has {final_size} bytes after the rename, expected {size}",
                server=self.server,
            )
        return UploadResult(final_path, size, already_present=False)

    def _write_file(self, local: Path, remote: str, size: int, progress: Progress | None) -> int:
        """Pipelined writes, each sized to fit one SSH packet, errors collected per request."""
        sftp = self.sftp
        raw = cast(Any, sftp)  # paramiko's request API is internal; pinned by tests
        channel = sftp.get_channel()
        assert channel is not None
        acks = _WriteAcks()
        offset = 0
        with open(local, "rb") as src, sftp.open(remote, "wb") as dst:
            handle = cast(Any, dst).handle
            chunk = max(4096, int(channel.out_max_packet_size) - _WRITE_OVERHEAD - len(handle))
            chunk = min(chunk, 255 * 1024)  # OpenSSH's sftp-server limit per write request
            while True:
                block = src.read(READ_BLOCK)
                if not block:
                    break
                view = memoryview(block)
                for start in range(0, len(view), chunk):
                    piece = view[start : start + chunk].tobytes()
                    while len(acks.pending) >= self._max_outstanding:
                        raw._read_response()
                    num = raw._async_request(acks, CMD_WRITE, handle, int64(offset), piece)
                    acks.pending.add(num)
                    offset += len(piece)
                    if acks.error is not None:
                        raise acks.error
                if progress is not None:
                    progress(offset, size)
            while acks.pending:
                raw._read_response()
            if acks.error is not None:
                raise acks.error
        return offset

    def _rename(self, source: str, target: str) -> None:
        try:
            self.sftp.posix_rename(source, target)
            return
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EACCES):
                raise
        # The server lacks posix-rename@openssh.com: plain SFTP rename refuses to replace.
        with contextlib.suppress(OSError):
            self.sftp.remove(target)
        self.sftp.rename(source, target)

    def download(
        self,
        remote: str,
        local: Path,
        *,
        expected_size: int | None = None,
        expected_sha256: str | None = None,
        progress: Progress | None = None,
        attempts: int = 2,
    ) -> DownloadResult:
        """Fetch ``remote`` to ``local`` (0600) via a temporary local name; re-fetch once
        when the size or SHA-256 is wrong; the final name only ever holds a good copy."""
        source = self.path(remote)
        local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = local.with_name(f".{local.name}.part")
        problem = ""
        for attempt in range(1, attempts + 1):
            with self._mapped(f"download {source}"):
                remote_size = int(self.sftp.stat(source).st_size or 0)
                digest = hashlib.sha256()
                got = 0
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    with os.fdopen(fd, "wb") as out, self.sftp.open(source, "rb") as src:
                        src.prefetch(remote_size)
                        while True:
                            block = src.read(READ_BLOCK)
                            if not block:
                                break
                            out.write(block)
                            digest.update(block)
                            got += len(block)
                            if progress is not None:
                                progress(got, remote_size)
                except BaseException:
                    temp.unlink(missing_ok=True)
                    raise
            want = expected_size if expected_size is not None else remote_size
            sha = digest.hexdigest()
            if got != want:
                problem = f"got {got} bytes, expected {want}"
            elif expected_sha256 is not None and sha != expected_sha256.lower():
                problem = f"SHA-256 {sha} differs from the expected {expected_sha256}"
            else:
                os.replace(temp, local)
                return DownloadResult(local, got, sha, attempt)
            temp.unlink(missing_ok=True)
        raise TransientError(
            f"download of {source} failed its check after {attempts} attempts: {problem}",
            server=self.server,
            hint="the file may still be being written on the server; try again later",
        )
