"""How a cohort file reaches SEFT: the ``Transport`` protocol and its implementations.

Owns the side effect of one upload and the one read reconciliation needs (``find``: is
the file there, and how big?). ``SftpTransport`` uses ``adapters.sftp`` (pinned host key,
temporary name then rename, size checked); ``ManualTransport`` places the file in the
agreement's outbox and mails the operator what to do, because SEFT may offer this agreement
only its web UI. An HTTP-API transport (SEFT may be MOVEit Transfer) is one more class with
the same three members; nothing else changes.

Must not decide whether or when to upload, nor record anything: ``service.submit`` claims
the step in the ledger before calling ``put`` and records the outcome after it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from seftpilot.config import Agreement, SftpEndpoint
from seftpilot.errors import ConfigError, InputError, PermanentError

if TYPE_CHECKING:
    # paramiko is imported only when a transfer happens: an idle `watch` never pays for it.
    from seftpilot.adapters.sftp import RemoteFile

log = logging.getLogger(__name__)

__all__ = [
    "ManualTransport",
    "SftpTransport",
    "Transport",
    "transport_for",
]


class Transport(Protocol):
    """One way of delivering a cohort file to NHS England's SEFT upload area."""

    @property
    def name(self) -> str:
        """How the ledger and the operator call it: ``sftp``, ``manual``, ..."""
        ...

    @property
    def listable(self) -> bool:
        """Whether ``find`` can see the remote folder. A transport that cannot (manual)
        never reconciles by listing: the operator's ``submission confirm`` records it."""
        ...

    def put(self, local_path: Path, final_name: str, *, submission_id: int | None = None) -> None:
        """Deliver ``local_path`` under exactly ``final_name``; raise a TransportError when
        it may not have arrived. ``submission_id`` is for instructions and logs only."""
        ...

    def find(self, final_name: str) -> RemoteFile | None:
        """The remote file called ``final_name`` (name, size, mtime), or None when absent."""
        ...


# -- SFTP --------------------------------------------------------------------------------
class SftpTransport:
    """SEFT over SFTP (the agreement's ``upload.sftp`` endpoint).

    One connection per call: uploads happen once a day, and a fresh connection after a
    crash is what reconciliation needs anyway.
    """

    name = "sftp"
    listable = True

    def __init__(self, endpoint: SftpEndpoint) -> None:
        self.endpoint = endpoint

    def put(self, local_path: Path, final_name: str, *, submission_id: int | None = None) -> None:
        from seftpilot.adapters.sftp import SftpClient

        with SftpClient(self.endpoint) as client:
            result = client.upload(local_path, final_name)
        if result.already_present:
            # service.submit checks the name is free before it claims; a file of our size
            # under it now was not sent by this call, so this call cannot vouch for it.
            raise PermanentError(
                f"{result.remote_path} appeared before the upload started; nothing was sent",
                server=client.server,
                hint="find out who put it there before the next upload",
            )
        log.info(
            "uploaded submission #%s as %s (%d bytes)",
            submission_id,
            result.remote_path,
            result.size,
        )

    def find(self, final_name: str) -> RemoteFile | None:
        from seftpilot.adapters.sftp import SftpClient

        with SftpClient(self.endpoint) as client:
            return client.stat(final_name)

    def find_partial(self, final_name: str) -> RemoteFile | None:
        """The temporary file an interrupted ``put`` of ``final_name`` left, if any: while
        it is there, the rename that hands the file to NHS England has not happened."""
        from seftpilot.adapters.sftp import DEFAULT_TEMP_TEMPLATE, SftpClient

        with SftpClient(self.endpoint) as client:
            return client.stat(DEFAULT_TEMP_TEMPLATE.format(name=final_name))


# -- manual ------------------------------------------------------------------------------
Notify = Callable[[str, str], None]
"""``notify(subject, text)``: how ManualTransport reaches the operator."""


@dataclass(frozen=True)
class ManualTransport:
    """The service prepares the file; the operator uploads it in SEFT's web UI.

    ``put`` copies the file into ``outbox/submission-<id>/<final name>`` (directory 0700,
    file 0600: it holds identifiers) and mails the operator the instructions, including
    the ``seftpilot submission confirm ID`` to run afterwards. Until then the submission
    stays claimed (``uploading``): nothing else goes to NHS England for the agreement.
    """

    outbox: Path
    nic: str
    notify: Notify
    name: str = "manual"
    listable: bool = False

    def folder_for(self, submission_id: int | None) -> Path:
        return self.outbox / (f"submission-{submission_id}" if submission_id else "pending")

    def put(self, local_path: Path, final_name: str, *, submission_id: int | None = None) -> None:
        folder = self.folder_for(submission_id)
        target = folder / final_name
        try:
            self.outbox.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.mkdir(mode=0o700, exist_ok=True)
            os.chmod(folder, 0o700)
            temp = folder / f".{final_name}.part"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out, local_path.open("rb") as src:
                shutil.copyfileobj(src, out, 1024 * 1024)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        except OSError as exc:
            # A half copy (full disk) must not stay behind: identifiers, and the space.
            with contextlib.suppress(OSError):
                (folder / f".{final_name}.part").unlink(missing_ok=True)
            raise InputError(
                f"cannot place the file in the outbox {folder}: {exc.strerror or exc}",
                hint="check agreement.upload.outbox exists and is writable by this user",
            ) from None
        size = target.stat().st_size
        ident = str(submission_id) if submission_id is not None else "ID"
        text = "\n".join(
            [
                f"Cohort file for {self.nic} is ready to upload by hand (submission #{ident}).",
                "",
                f"  file:  {target}",
                f"  size:  {size} bytes",
                f"  name:  {final_name}  (upload it under exactly this name)",
                "",
                "What to do:",
                "  1. Sign in to SEFT (NHS England's Secure Electronic File Transfer) in a web",
                "     browser with the agreement's Cohort Submitter account",
                f"     (its user name starts with {self.nic.split('-')[1]}).",
                "  2. Open the upload folder of that account and upload the file above.",
                "     Do not rename it, open it in Excel or save it again: NHS England needs",
                "     its exact bytes (CRLF line endings, no byte-order mark).",
                "  3. Straight afterwards, record the upload so the evidence window opens:",
                f"       seftpilot submission confirm {ident}",
                "     (add --at 2026-03-02T10:15 if you uploaded earlier than you confirm).",
                "",
                "NHS England takes one file a day: until you confirm, seftpilot uploads",
                "nothing else for this agreement.",
            ]
        )
        self.notify(f"[seftpilot] upload {final_name} by hand (submission #{ident})", text)

    def find(self, final_name: str) -> RemoteFile | None:
        """A manual transport cannot see SEFT; ``listable`` is False, so this is unused."""
        return None


def transport_for(
    agreement: Agreement,
    *,
    notify: Notify,
    resolve: Callable[[Path], Path] = lambda p: p,
) -> Transport:
    """The transport the agreement's settings ask for (``upload.transport``)."""
    upload = agreement.upload
    if upload.transport == "sftp":
        if upload.sftp is None:
            raise ConfigError(
                f"agreement {agreement.nic}: upload.transport is 'sftp' but upload.sftp is not set",
                key="agreement.upload.sftp",
                hint="add an [agreement.upload.sftp] section (host, username, known_hosts)",
            )
        endpoint = upload.sftp
        return SftpTransport(
            endpoint.model_copy(
                update={
                    "known_hosts": resolve(endpoint.known_hosts),
                    "key_file": resolve(endpoint.key_file) if endpoint.key_file else None,
                }
            )
        )
    return ManualTransport(resolve(upload.outbox), agreement.nic, notify)
