"""The download-and-forward workflow: collect, archive, verify, upload, passphrase, announce,
clean; by hand (``forward_now``), from the service loop (``ForwardJob``) and from the
mailbox (``register_handlers``: class ``new_data`` starts a delivery).

Owns the order of a delivery's steps and the reliability argument:

* **One worker.** Steps run under ``state_dir/locks/forward.lock`` (an OS lock, gone
  when its process dies), so a claim found still held at the start of a pass was left
  by a crash, and ``core.delivery.after_crash`` says what that means.
* **Claim, act, record.** Each step is claimed in the ledger (conditional UPDATE) before
  its side effect and recorded after (``adapters.delivery_store``).
* **Never upload twice.** Each archive part goes complete to a hidden staging name
  (itself via the adapter's temporary name), the ledger records "staged", then one rename
  hands it to the partner's router (``isaric-*``). Resuming lists the partner's folder
  first (``core.delivery.upload_decision``): the final name there with the right size is
  recorded as uploaded; a staged copy is renamed; "staged" recorded but both names gone
  means the router took it, and the operator is asked rather than sending it again.
  A dropped connection leaves at most hidden names, never a half ``isaric-*`` file.
* **The passphrase mail goes at most once.** Its claim is recorded (with the Message-ID
  it will carry) before SMTP is spoken to, and the Message-ID as sent after. A claim left
  without that record (crash, or a connection lost after DATA) means its fate is unknown:
  the delivery is ``blocked`` and the operator alerted, never silently resent. A refusal
  the server answered with a code (or a connection that never opened) provably sent
  nothing and is retried. The announcement carries no secret and goes at least once
  (resent with the same Message-ID after a crash).
* **The passphrase is never stored in clear in the ledger or logged.** It lives from the
  archive step until its mail is accepted in ``<work_dir>/passphrase`` (0600, in a 0700
  dir), because a crash in between must not lose it; then that file is deleted. The
  ledger keeps its fingerprint; the log redactor knows it.

Must not decide (``core.delivery`` does), speak SQL (``adapters.delivery_store``), or
talk to a server except through ``adapters.sftp`` and ``adapters.smtp``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import smtplib
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from seftpilot.adapters.delivery_store import Delivery, DeliveryStore
from seftpilot.adapters.mail_store import MailRecord
from seftpilot.adapters.manifest import sha256_file
from seftpilot.adapters.passphrase import Passphrase, fingerprint, new_passphrase
from seftpilot.adapters.smtp import build_message
from seftpilot.config import Agreement, SftpEndpoint
from seftpilot.core.calendar import nhs_day
from seftpilot.core.delivery import (
    ACTIVE,
    RESOLUTIONS,
    RETRY_EVENT,
    ArchivePart,
    DeliveryEvent,
    DeliveryState,
    after_crash,
    announcement_mail,
    archive_name,
    clean_after,
    clean_due,
    part_names,
    passphrase_mail,
    retry_at,
    staging_name,
    step_for,
    upload_decision,
)
from seftpilot.core.message import Message
from seftpilot.core.rules import Classification
from seftpilot.errors import (
    AlreadyRunning,
    ArchiveError,
    ArchiveVerificationError,
    ConfigError,
    InputError,
    LedgerError,
    PermanentError,
    SeftpilotError,
    StateDirError,
    TransientError,
    TransportError,
)
from seftpilot.logs import register_secret
from seftpilot.service import collect
from seftpilot.service.alerts import clear_alert, raise_alert
from seftpilot.service.dispatch import Dispatcher
from seftpilot.service.runtime import Runtime

if TYPE_CHECKING:
    from seftpilot.adapters.sftp import SftpClient

log = logging.getLogger(__name__)

D = DeliveryState
DE = DeliveryEvent

NEW_DATA_CLASS = "new_data"
PASSPHRASE_FILE = "passphrase"  # noqa: S105 - a file name
MAX_VERIFY_FAILURES = 2
ALERT_AFTER_ATTEMPTS = 5  # transient failures in a row before the operator hears
WAITING_ALERT_AFTER = timedelta(days=1)  # new data announced, nothing to collect yet

Progress = Callable[[str, int, int], None]
Checkpoint = Callable[[str], None]

# Outcome statuses; the last two are problems (the CLI exits 1).
DELIVERED = "delivered"  # uploaded, passphrase sent (and announced)
CLEANED = "cleaned"
WAITING = "waiting"  # files not ready yet
NOTHING_NEW = "nothing_new"
IN_PROGRESS = "in_progress"  # a step will be retried later
FAILED = "failed"
BLOCKED = "blocked"
PROBLEMS = frozenset({FAILED, BLOCKED})


def deliveries(runtime: Runtime) -> DeliveryStore:
    """The deliveries repository on the runtime's store (stateless: cheap to make)."""
    return DeliveryStore(runtime.store)


# -- paths and configuration ---------------------------------------------------------------
def work_root(runtime: Runtime) -> Path:
    return runtime.settings.resolve(runtime.settings.state_dir) / "deliveries"


def _passphrase_path(d: Delivery) -> Path:
    return Path(d.work_dir) / PASSPHRASE_FILE


def _archive_dir(d: Delivery) -> Path:
    return Path(d.work_dir) / "archive"


def partner_endpoint(runtime: Runtime) -> SftpEndpoint:
    endpoint = runtime.settings.partner.sftp
    if endpoint is None:
        raise ConfigError(
            "partner.sftp is not configured: seftpilot has nowhere to deliver the archive",
            key="partner.sftp",
            hint="add [partner.sftp] with host, username, key_file and known_hosts",
        )
    return endpoint


def check_config(runtime: Runtime, agreement: Agreement) -> None:
    """Everything a delivery will need, checked before one starts (ConfigError: exit 2).

    Refuses only; what is allowed but worth a word is ``config_warnings``, said once per
    Forwarder: this check runs at every collect look, and twice in one `forward` run."""
    partner = runtime.settings.partner
    partner_endpoint(runtime)
    if not partner.passphrase_recipients:
        raise ConfigError(
            "partner.passphrase_recipients is empty: nobody would get the passphrase",
            key="partner.passphrase_recipients",
            hint="list the addresses that receive the archive passphrase",
        )
    try:
        archive_name(partner.name_template, nhs_day(runtime.clock.now()), 1, agreement.nic)
    except ValueError as exc:
        raise ConfigError(
            f"partner.name_template {partner.name_template!r}: {exc}",
            key="partner.name_template",
        ) from None
    if agreement.download.source == "sftp":
        collect.download_endpoint(agreement)


def config_warnings(runtime: Runtime) -> list[str]:
    """What the partner settings allow but the operator should hear about."""
    partner = runtime.settings.partner
    overlap = set(partner.passphrase_recipients) & set(partner.announce_recipients)
    if not overlap:
        return []
    return [
        f"{len(overlap)} address(es) get both the passphrase and the announcement: the two "
        "still travel as separate messages"
    ]


# -- the lock ------------------------------------------------------------------------------
@contextlib.contextmanager
def forward_lock(runtime: Runtime) -> Iterator[None]:
    """One process advances deliveries at a time (see the module docstring)."""
    path = runtime.settings.resolve(runtime.settings.state_dir) / "locks" / "forward.lock"
    try:
        collect.ensure_private_dir(path.parent)
    except OSError as exc:
        raise StateDirError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
    lock = FileLock(path, timeout=0, mode=0o600, thread_local=False, is_singleton=False)
    try:
        lock.acquire()
    except Timeout:
        raise AlreadyRunning(str(path)) from None
    try:
        yield
    finally:
        lock.release()


# -- outcome -------------------------------------------------------------------------------
@dataclass
class ForwardOutcome:
    status: str
    message: str
    delivery: Delivery | None = None
    steps: list[str] = field(default_factory=list)
    earlier: list[ForwardOutcome] = field(default_factory=list)  # unfinished ones advanced

    @property
    def ok(self) -> bool:
        return self.status not in PROBLEMS and all(e.ok for e in self.earlier)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "ok": self.ok,
            "message": self.message,
            "steps": self.steps,
            "delivery": self.delivery.to_dict() if self.delivery is not None else None,
            "earlier": [e.to_dict() for e in self.earlier],
        }


class _Stop(Exception):
    """A step cannot go on now (waiting, blocked, failed); the delivery says why."""


# -- SMTP outcome --------------------------------------------------------------------------
_NOT_SENT = (
    smtplib.SMTPResponseException,  # the server answered with a refusal code
    smtplib.SMTPRecipientsRefused,
    smtplib.SMTPNotSupportedError,
    ConnectionRefusedError,
    socket.gaierror,
    ssl.SSLCertVerificationError,
)


def provably_not_sent(exc: SeftpilotError) -> bool:
    """Did the SMTP server certainly not accept the message?

    ``adapters.smtp`` raises our error from inside its handler, so the library's
    exception is its ``__context__``. A reply code refusing the message, a connection
    that never opened or a certificate refused happen before the server takes
    responsibility; a connection dropped or timed out may have come after it did.
    """
    if isinstance(exc, ConfigError):
        return True
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, smtplib.SMTPResponseException) and not 400 <= cause.smtp_code < 600:
            # Not a refusal: a reply line cut short ("25" of "250 OK") may be the very
            # acceptance of the message.
            return False
        if isinstance(cause, _NOT_SENT):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


# -- the workflow --------------------------------------------------------------------------
class Forwarder:
    """Advances deliveries. ``checkpoint(name)`` is called at every point a crash could
    happen (``claimed:<step>``, ``staged``, ``done:<step>``); tests make it raise."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        progress: Progress | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.runtime = runtime
        self.progress = progress
        self.checkpoint = checkpoint or (lambda _name: None)
        self._warned = False

    @property
    def store(self) -> DeliveryStore:
        return deliveries(self.runtime)

    def now(self) -> datetime:
        return self.runtime.clock.now()

    def _agreement(self, d: Delivery) -> Agreement:
        return self.runtime.settings.agreement_for(d.agreement)

    # -- public ---------------------------------------------------------------------------
    def advance(self, d: Delivery, *, by_hand: bool = False, max_steps: int = 20) -> Delivery:
        """Take steps until the delivery waits (files, retention, retry time) or stops.
        Call under ``forward_lock``."""
        for _ in range(max_steps):
            before = (d.state, d.version)
            d = self.step(d, by_hand=by_hand)
            if (d.state, d.version) == before or not d.active or d.step is not None:
                break
            if d.retry_at is not None and d.retry_at > self.now():
                break
        return d

    def step(self, d: Delivery, *, by_hand: bool = False) -> Delivery:
        """One step of ``d`` (recovering first from a claim a crash left behind)."""
        d = self.store.get(d.id)
        if not d.active:
            return d
        if d.retry_at is not None and d.retry_at > self.now() and not by_hand:
            return d
        if d.step is not None:
            action = after_crash(d.step)
            log.warning("delivery #%d: step %s was in hand when a process stopped", d.id, d.step)
            if action == "redo":
                d = self.store.release(
                    d, self.now(), "delivery.recovered", {"step": d.step, "action": "redo"}
                )
        name = step_for(d.state)
        handler = {
            "collect": self._collect,
            "archive": self._archive,
            "verify": self._verify,
            "upload": self._upload,
            "passphrase": self._passphrase,
            "announce": self._announce,
            "clean": self._clean,
        }[name or ""]
        state = d.state
        try:
            return handler(d, by_hand=by_hand)
        except _Stop:
            return self.store.get(d.id)
        except TransientError as exc:
            return self._transient(d.id, state, exc)
        except OSError as exc:
            return self._transient(
                d.id, state, TransientError(f"{exc.strerror or exc} ({exc.filename or ''})")
            )
        except (PermanentError, ArchiveError, InputError, ConfigError) as exc:
            return self._fail(d.id, state, exc)

    # -- failure handling ---------------------------------------------------------------
    def _transient(self, delivery_id: int, state: str, exc: SeftpilotError) -> Delivery:
        d = self.store.get(delivery_id)
        attempts = d.attempts + 1
        now = self.now()
        d = self.store.release(
            d,
            now,
            "delivery.step_failed",
            {"state": state, "error": exc.message, "attempts": attempts},
            attempts=attempts,
            retry_at=retry_at(now, attempts),
            last_error=exc.message,
        )
        log.warning(
            "delivery #%d: %s step failed (%d in a row), retry after %s: %s",
            d.id,
            step_for(state),
            attempts,
            d.retry_at.isoformat(timespec="seconds") if d.retry_at else "?",
            exc.message,
        )
        if attempts >= ALERT_AFTER_ATTEMPTS:
            raise_alert(
                self.runtime,
                f"delivery:{d.id}",
                f"delivery #{d.id}: {step_for(state)} keeps failing",
                f"Delivery #{d.id} ({d.agreement}) could not {step_for(state)} "
                f"{attempts} times in a row; seftpilot keeps trying.\n\n{exc}",
            )
        return d

    def _fail(self, delivery_id: int, state: str, exc: SeftpilotError) -> Delivery:
        d = self.store.get(delivery_id)
        d = self.store.record(
            d,
            DE.FAIL,
            self.now(),
            {"error": exc.message, "step": step_for(state)},
            held_from=state,
            last_error=exc.message,
        )
        log.error("delivery #%d failed at %s: %s", d.id, step_for(state), exc.message)
        raise_alert(
            self.runtime,
            f"delivery:{d.id}",
            f"delivery #{d.id} failed: {step_for(state)}",
            f"Delivery #{d.id} ({d.agreement}) stopped at step {step_for(state)}:\n\n{exc}\n\n"
            f"Fix the cause, then `seftpilot delivery retry {d.id}`.",
            severity="error",
        )
        return d

    def _block(self, d: Delivery, why: str, next_steps: str) -> None:
        d = self.store.record(
            d, DE.BLOCK, self.now(), {"reason": why}, held_from=d.state, last_error=why
        )
        log.error("delivery #%d blocked: %s", d.id, why)
        raise_alert(
            self.runtime,
            f"delivery:{d.id}",
            f"delivery #{d.id} needs you: {why}",
            f"Delivery #{d.id} ({d.agreement}): {why}.\n\n{next_steps}",
            severity="error",
        )
        raise _Stop

    def _succeeded(self, d: Delivery) -> None:
        clear_alert(self.runtime, f"delivery:{d.id}", f"delivery #{d.id} moved on: {d.state}")

    # -- collect --------------------------------------------------------------------------
    def _collect(self, d: Delivery, *, by_hand: bool) -> Delivery:
        agreement = self._agreement(d)
        # Refuse before touching the files: a delivery that cannot reach the partner
        # must not move them out of the drop folder.
        check_config(self.runtime, agreement)
        if not self._warned:
            self._warned = True
            for warning in config_warnings(self.runtime):
                log.warning("%s", warning)
        now = self.now()
        if d.source == "sftp":
            from seftpilot.adapters.sftp import SftpClient

            with SftpClient(collect.download_endpoint(agreement)) as client:
                look = collect.look_sftp(client, self.store.seen(d.agreement))
                if not look.ready:
                    return self._not_ready(d, look, now)
                d = self.store.claim(d, "collect", now)
                self.checkpoint("claimed:collect")
                got = collect.bring_sftp(client, d, look.files, self.progress)
        else:
            if d.source == "dir":
                folder = Path(d.source_path or "")
                look = collect.look_dir(folder)
            else:
                folder = self.runtime.settings.resolve(agreement.download.drop_folder)
                look = collect.look_folder(
                    folder,
                    d,
                    now,
                    agreement.download.quiet_seconds,
                    agreement.download.expected_count,
                    by_hand=by_hand,
                )
            if not look.ready:
                return self._not_ready(d, look, now)
            d = self.store.claim(d, "collect", now)
            self.checkpoint("claimed:collect")
            got = collect.bring_local(
                d, folder, look.files, move=d.source == "folder", progress=self.progress
            )
        if look.partial:
            self.store.note(d, "delivery.partial_left", now, names=len(look.partial))
            log.warning(
                "delivery #%d: %d unfinished download(s) left out: %s",
                d.id,
                len(look.partial),
                ", ".join(look.partial[:5]),
            )
        self.checkpoint("done:collect")
        d = self.store.record_collected(d, got.manifest, got.sources, got.seen, self.now())
        log.info(
            "delivery #%d: collected %d file(s), %d bytes from %s",
            d.id,
            d.file_count or 0,
            d.total_bytes or 0,
            got.manifest.source,
        )
        self._succeeded(d)
        return d

    def _not_ready(self, d: Delivery, look: collect.Look, now: datetime) -> Delivery:
        if look.snapshot is not None and (
            look.snapshot != d.observed or look.quiet_since != d.quiet_since
        ):
            d = self.store.update(d, now, observed=look.snapshot, quiet_since=look.quiet_since)
        log.info("delivery #%d waits for its files: %s", d.id, look.reason)
        if now - d.created_at >= WAITING_ALERT_AFTER:
            raise_alert(
                self.runtime,
                f"delivery-waiting:{d.id}",
                f"delivery #{d.id}: new data announced, nothing to collect yet",
                f"Delivery #{d.id} ({d.agreement}) has waited since "
                f"{d.created_at.isoformat(timespec='minutes')}: {look.reason}.\n\n"
                "Check SEFT's download area (or save the files into the drop folder).",
            )
        return d

    # -- archive --------------------------------------------------------------------------
    def _load_passphrase(self, d: Delivery) -> Passphrase | None:
        path = _passphrase_path(d)
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        secret = Passphrase(text)
        register_secret(secret)
        return secret

    def _store_passphrase(self, d: Delivery, secret: Passphrase) -> None:
        path = _passphrase_path(d)
        collect.ensure_private_dir(path.parent)
        temp = path.with_name(f".{path.name}.part")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secret.get_secret_value() + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)

    def _archive(self, d: Delivery, *, by_hand: bool) -> Delivery:
        partner = self.runtime.settings.partner
        manifest = d.manifest
        assert manifest is not None
        name = archive_name(partner.name_template, d.nhs_day, d.id, d.agreement)
        d = self.store.claim(d, "archive", self.now())
        self.checkpoint("claimed:archive")
        secret = self._load_passphrase(d)
        if secret is None or fingerprint(secret) != (
            d.passphrase_fingerprint or fingerprint(secret)
        ):
            secret = new_passphrase()
            register_secret(secret)
            self._store_passphrase(d, secret)
        files = [collect.files_dir(d) / f.name for f in manifest.files]
        progress = self.progress

        def each(done: int, total: int) -> None:
            if progress is not None:
                progress("archive", done, total)

        from seftpilot.adapters.archive import create_archive

        result = create_archive(
            files,
            _archive_dir(d) / name,
            secret,
            codec=partner.codec,
            level=partner.level,
            backend=partner.backend,
            volume_size_mb=partner.volume_size_mb,
            progress=each,
        )
        remote = part_names(name, [p.name for p in result.paths])
        parts = []
        for path, remote_name in zip(result.paths, remote, strict=True):
            size, digest = sha256_file(path)
            parts.append({"local": path.name, "name": remote_name, "size": size, "sha256": digest})
        self.checkpoint("done:archive")
        d = self.store.record(
            d,
            DE.ARCHIVE_DONE,
            self.now(),
            {"parts": len(parts), "bytes": result.size, "backend": result.backend},
            archive_name=name,
            archive_parts=parts,
            remote_name=name,
            passphrase_fingerprint=fingerprint(secret),
            attempts=0,
            retry_at=None,
            last_error=None,
        )
        log.info(
            "delivery #%d: archived into %s (%d part(s), %d bytes, %s)",
            d.id,
            name,
            len(parts),
            result.size,
            result.backend,
        )
        return d

    # -- verify ---------------------------------------------------------------------------
    def _verify(self, d: Delivery, *, by_hand: bool) -> Delivery:
        manifest = d.manifest
        assert manifest is not None
        d = self.store.claim(d, "verify", self.now())
        self.checkpoint("claimed:verify")
        secret = self._load_passphrase(d)
        paths = [_archive_dir(d) / p["local"] for p in d.archive_parts]
        try:
            if secret is None or fingerprint(secret) != d.passphrase_fingerprint:
                raise ArchiveVerificationError(
                    "the passphrase file of this delivery is missing or belongs to another"
                )
            for path, part in zip(paths, d.archive_parts, strict=True):
                size, digest = sha256_file(path)
                if (size, digest) != (part["size"], part["sha256"]):
                    raise ArchiveVerificationError(f"{path.name} changed since it was built")
            from seftpilot.adapters.archive import verify_archive

            verify_archive(paths, secret, manifest, backend=self.runtime.settings.partner.backend)
        except (ArchiveVerificationError, FileNotFoundError) as exc:
            failures = 1 + sum(
                1
                for e in self.runtime.store.events("delivery", d.id)
                if e["kind"] == f"delivery.{DE.VERIFY_FAILED}"
            )
            message = exc.message if isinstance(exc, SeftpilotError) else str(exc)
            if failures > MAX_VERIFY_FAILURES:
                raise ArchiveVerificationError(
                    f"the archive failed verification {failures} times: {message}",
                    hint="check the disk and the files in the work dir",
                ) from exc
            log.warning("delivery #%d: verification failed (%s); rebuilding", d.id, message)
            return self.store.record(d, DE.VERIFY_FAILED, self.now(), {"error": message})
        self.checkpoint("done:verify")
        d = self.store.record(d, DE.VERIFY_DONE, self.now(), {"files": d.file_count})
        log.info("delivery #%d: archive verified against its manifest", d.id)
        return d

    # -- upload ---------------------------------------------------------------------------
    def _rename(self, client: SftpClient, source: str, target: str) -> None:
        """Plain SFTP rename: it refuses to replace an existing file, which is what we
        want (the final name was just listed as absent)."""
        from seftpilot.adapters.sftp import CAUGHT, map_exception

        try:
            client.sftp.rename(client.path(source), client.path(target))
        except CAUGHT as exc:
            raise map_exception(exc, client.server, f"rename {source} to {target}") from exc

    def _upload(self, d: Delivery, *, by_hand: bool) -> Delivery:
        endpoint = partner_endpoint(self.runtime)
        resumed = d.step == "upload"
        if not resumed:
            d = self.store.claim(d, "upload", self.now())
            self.checkpoint("claimed:upload")
        local = {p["name"]: _archive_dir(d) / p["local"] for p in d.archive_parts}
        from seftpilot.adapters.sftp import SftpClient

        with SftpClient(endpoint) as client:
            listing = {f.name: f.size for f in client.list()}
            plan = {
                p["name"]: upload_decision(
                    int(p["size"]),
                    listing.get(p["name"]),
                    listing.get(staging_name(p["name"])),
                    d.staged_at is not None,
                )
                for p in d.archive_parts
            }
            if resumed:
                self.store.note(d, "delivery.reconciled", self.now(), plan=plan)
            for name, decision in plan.items():
                if decision == "block_mismatch":
                    self._block(
                        d,
                        f"the partner's folder holds {name} with another size",
                        f"Someone else's file, or a damaged one, holds {name} at "
                        f"{client.server}. Find out what it is; when it is removed, "
                        f"`seftpilot delivery resolve {d.id} --upload-again`.",
                    )
                if decision == "block_vanished":
                    self._block(
                        d,
                        f"{name} was staged and is gone: the partner may already have it",
                        "The rename that hands the archive to the partner may have "
                        "happened before seftpilot stopped, and the partner's router may "
                        "have taken the file. Ask the partner whether they received "
                        f"{name}; then `seftpilot delivery resolve {d.id} --partner-has-it` "
                        "or `--upload-again`.",
                    )
            to_stage = [p for p in d.archive_parts if plan[p["name"]] == "upload"]
            total = sum(int(p["size"]) for p in to_stage)
            sent = 0
            progress = self.progress
            for part in to_stage:
                base = sent

                def each(done: int, _size: int, base: int = base) -> None:
                    if progress is not None:
                        progress("upload", base + done, total)

                client.upload(
                    local[part["name"]],
                    staging_name(part["name"]),
                    overwrite=True,
                    progress=each,
                )
                sent += int(part["size"])
            if to_stage or d.staged_at is None:
                d = self.store.update(
                    d,
                    self.now(),
                    "delivery.staged",
                    {"parts": len(to_stage)},
                    staged_at=self.now(),
                )
            self.checkpoint("staged")
            for part in d.archive_parts:
                if plan[part["name"]] == "done":
                    continue
                self._rename(client, staging_name(part["name"]), part["name"])
                arrived = client.stat(part["name"])
                if arrived is None or arrived.size != int(part["size"]):
                    raise TransientError(
                        f"{part['name']} has {arrived.size if arrived else 'no'} bytes after "
                        f"the rename, expected {part['size']}",
                        server=client.server,
                    )
        self.checkpoint("done:upload")
        now = self.now()
        d = self.store.record(
            d,
            DE.UPLOAD_DONE,
            now,
            {"parts": [p["name"] for p in d.archive_parts], "resumed": resumed},
            uploaded_at=now,
            clean_after=clean_after(now, self.runtime.settings.partner.retention_days),
            attempts=0,
            retry_at=None,
            last_error=None,
        )
        log.info("delivery #%d: uploaded as %s to %s", d.id, d.remote_name, client.server)
        self._succeeded(d)
        return d

    # -- passphrase -----------------------------------------------------------------------
    def _passphrase(self, d: Delivery, *, by_hand: bool) -> Delivery:
        if d.step == "passphrase":
            self._block(
                d,
                "the passphrase mail may or may not have gone",
                "seftpilot stopped (or lost the connection) after it started sending the "
                "passphrase and before the server confirmed it, and never sends a "
                "passphrase twice silently. Ask the recipients whether the passphrase for "
                f"delivery {d.id} arrived (fingerprint {d.passphrase_fingerprint}); then "
                f"`seftpilot delivery resolve {d.id} --passphrase-arrived` or "
                "`--resend-passphrase`.",
            )
        partner = self.runtime.settings.partner
        if not partner.passphrase_recipients:
            raise ConfigError(
                "partner.passphrase_recipients is empty", key="partner.passphrase_recipients"
            )
        secret = self._load_passphrase(d)
        if secret is None or fingerprint(secret) != d.passphrase_fingerprint:
            raise ArchiveError(
                f"delivery #{d.id}: the passphrase file is missing, so the uploaded archive "
                "cannot be opened by anyone",
                hint="ask the partner to delete the archive; start a new delivery with "
                "`seftpilot forward --from` the same files",
            )
        subject, body = passphrase_mail(
            d.id, d.agreement, d.passphrase_fingerprint or "", secret.get_secret_value()
        )
        message = build_message(
            partner.passphrase_recipients,
            subject,
            body,
            headers={"X-Seftpilot-Delivery": str(d.id)},
            sender=self.runtime.settings.smtp.from_address,
            now=self.now(),
        )
        message_id = str(message["Message-ID"])
        d = self.store.claim(d, "passphrase", self.now())
        self.store.note(d, "delivery.passphrase_sending", self.now(), message_id=message_id)
        self.checkpoint("claimed:passphrase")
        try:
            self.runtime.mailer.send(message)
        except (TransportError, ConfigError) as exc:
            if not provably_not_sent(exc):
                d = self.store.get(d.id)
                self._block(
                    d,
                    f"the passphrase mail may or may not have gone ({exc.message})",
                    "The connection ended before the server confirmed the message. "
                    f"Ask the recipients whether {message_id} arrived; then "
                    f"`seftpilot delivery resolve {d.id} --passphrase-arrived` or "
                    "`--resend-passphrase`.",
                )
            raise
        self.checkpoint("done:passphrase")
        d = self.store.record(
            self.store.get(d.id),
            DE.PASSPHRASE_DONE,
            self.now(),
            {"message_id": message_id, "recipients": len(partner.passphrase_recipients)},
            passphrase_message_id=message_id,
            passphrase_sent_at=self.now(),
            attempts=0,
            retry_at=None,
            last_error=None,
        )
        _passphrase_path(d).unlink(missing_ok=True)
        log.info("delivery #%d: passphrase mail %s accepted", d.id, message_id)
        self._succeeded(d)
        return d

    # -- announce -------------------------------------------------------------------------
    def _announce(self, d: Delivery, *, by_hand: bool) -> Delivery:
        _passphrase_path(d).unlink(missing_ok=True)  # sent: it must not outlive that
        partner = self.runtime.settings.partner
        if not partner.announce_recipients:
            return self.store.record(d, DE.ANNOUNCE_DONE, self.now(), {"skipped": True})
        endpoint = partner_endpoint(self.runtime)
        parts = [ArchivePart(p["name"], int(p["size"]), p["sha256"]) for p in d.archive_parts]
        where = f"sftp://{endpoint.host}:{endpoint.port}/{endpoint.remote_dir.strip('/')}"
        subject, body = announcement_mail(
            d.id,
            d.agreement,
            parts,
            d.file_count or 0,
            where.rstrip("/"),
            d.passphrase_fingerprint or "",
        )
        # At least once: a resend after a crash carries the same Message-ID.
        message_id = d.announce_message_id
        headers = {"X-Seftpilot-Delivery": str(d.id)}
        if message_id:
            headers["Message-ID"] = message_id
        message = build_message(
            partner.announce_recipients,
            subject,
            body,
            headers=headers,
            sender=self.runtime.settings.smtp.from_address,
            now=self.now(),
        )
        message_id = str(message["Message-ID"])
        d = self.store.claim(d, "announce", self.now(), announce_message_id=message_id)
        self.checkpoint("claimed:announce")
        self.runtime.mailer.send(message)
        self.checkpoint("done:announce")
        d = self.store.record(
            d,
            DE.ANNOUNCE_DONE,
            self.now(),
            {"message_id": message_id},
            attempts=0,
            retry_at=None,
            last_error=None,
        )
        log.info("delivery #%d: announcement %s accepted", d.id, message_id)
        return d

    # -- clean ----------------------------------------------------------------------------
    def _clean(self, d: Delivery, *, by_hand: bool, force: bool = False) -> Delivery:
        retention = self.runtime.settings.partner.retention_days
        if not force and not clean_due(d.uploaded_at, retention, self.now(), d.keep):
            return d
        d = self.store.claim(d, "clean", self.now())
        self.checkpoint("claimed:clean")
        deleted = clean_work_dir(d)
        names = [f.name for f in self.store.files(d.id)]
        self.store.mark_deleted(d.id, names, self.now())
        self.checkpoint("done:clean")
        d = self.store.record(
            d, DE.CLEAN_DONE, self.now(), {"deleted": deleted}, cleaned_at=self.now()
        )
        log.info(
            "delivery #%d: clear text and local archive deleted (%d files)", d.id, len(deleted)
        )
        return d


def clean_work_dir(d: Delivery) -> list[str]:
    """Delete the delivery's work dir; returns what was in it (relative names)."""
    root = Path(d.work_dir)
    deleted: list[str] = []
    if root.exists():
        for path in sorted(root.rglob("*")):
            if path.is_file():
                deleted.append(str(path.relative_to(root)))
        shutil.rmtree(root)
    return deleted


# -- by hand -------------------------------------------------------------------------------
def forward_now(
    runtime: Runtime,
    nic: str | None = None,
    *,
    from_dir: Path | None = None,
    keep: bool = False,
    progress: Progress | None = None,
    checkpoint: Checkpoint | None = None,
) -> ForwardOutcome:
    """Start (or continue) a delivery by hand and take it as far as it goes now.

    Unfinished deliveries of the agreement are advanced first; then the one waiting for
    files (created by a new-data mail) is collected, or a new one is started: from
    ``from_dir`` (copied; the folder stays the operator's), or from the agreement's
    source (SEFT's download area; the drop folder, collected at once).
    """
    agreement = runtime.settings.agreement_for(nic)
    check_config(runtime, agreement)
    if from_dir is not None:
        # Before anything is recorded (or an earlier delivery advanced): a missing or empty
        # folder is the operator's slip, not a failed delivery with an alert mail.
        collect.look_dir(from_dir)
    forwarder = Forwarder(runtime, progress=progress, checkpoint=checkpoint)
    store = deliveries(runtime)
    with forward_lock(runtime):
        # Unfinished deliveries first (advanced), and those waiting for the operator
        # (reported: the command exits 1 while one does).
        earlier = []
        held = [s for s in (*ACTIVE, D.FAILED, D.BLOCKED) if s != D.WAITING]
        for other in store.list_deliveries(agreement.nic, held):
            after = forwarder.advance(other) if other.active else other
            if after.state != other.state or not after.active or after.last_error:
                earlier.append(_outcome(runtime, after))
        d = store.waiting(agreement.nic)
        now = runtime.clock.now()
        if d is None:
            source = "dir" if from_dir is not None else agreement.download.source
            if from_dir is None and not _has_something(runtime, agreement, forwarder):
                if earlier:  # nothing new: say what became of the unfinished ones
                    last = earlier[-1]
                    last.earlier = earlier[:-1]
                    return last
                return ForwardOutcome(
                    NOTHING_NEW,
                    "nothing new to forward"
                    + (" in SEFT's download area" if source == "sftp" else " in the drop folder"),
                )
            d = store.create(
                agreement.nic,
                source=source,
                origin="cli",
                nhs_day=nhs_day(now),
                work_root=str(work_root(runtime)),
                at=now,
                keep=keep,
                source_path=str(from_dir.resolve()) if from_dir else None,
            )
        else:
            changes: dict[str, Any] = {}
            if keep:
                changes["keep"] = True
            if from_dir is not None:
                changes.update(source="dir", source_path=str(from_dir.resolve()))
            if changes:
                d = store.update(d, now, "delivery.adopted", {"by": "cli"}, **changes)
        outcome = _outcome(runtime, forwarder.advance(d, by_hand=True))
        outcome.earlier = earlier
        return outcome


def _has_something(runtime: Runtime, agreement: Agreement, forwarder: Forwarder) -> bool:
    if agreement.download.source == "sftp":
        from seftpilot.adapters.sftp import SftpClient

        with SftpClient(collect.download_endpoint(agreement)) as client:
            look = collect.look_sftp(client, forwarder.store.seen(agreement.nic))
        return look.ready
    folder = runtime.settings.resolve(agreement.download.drop_folder)
    look = collect.look_folder(folder, None, runtime.clock.now(), 0, None, by_hand=True)
    return look.ready


def _outcome(runtime: Runtime, d: Delivery) -> ForwardOutcome:
    steps = [
        e["kind"].removeprefix("delivery.")
        for e in runtime.store.events("delivery", d.id)
        if e["kind"].endswith("_done")
    ]
    if d.state == D.FAILED:
        return ForwardOutcome(FAILED, f"delivery #{d.id} failed: {d.last_error}", d, steps)
    if d.state == D.BLOCKED:
        return ForwardOutcome(
            BLOCKED, f"delivery #{d.id} needs the operator: {d.last_error}", d, steps
        )
    if d.state == D.CLEANED:
        return ForwardOutcome(CLEANED, f"delivery #{d.id} was delivered and cleaned", d, steps)
    if d.state in (D.PASSPHRASE_SENT, D.ANNOUNCED):
        kept = (
            "kept (--keep)"
            if d.keep
            else f"deleted after {d.clean_after:%Y-%m-%d %H:%M} UTC"
            if d.clean_after
            else ""
        )
        return ForwardOutcome(
            DELIVERED,
            f"delivery #{d.id}: {d.file_count} file(s) uploaded as {d.remote_name}; passphrase "
            f"sent separately (fingerprint {d.passphrase_fingerprint}); clear text {kept}",
            d,
            steps,
        )
    if d.state == D.WAITING:
        return ForwardOutcome(WAITING, f"delivery #{d.id} waits for its files", d, steps)
    why = f": {d.last_error}" if d.last_error else ""
    return ForwardOutcome(
        IN_PROGRESS, f"delivery #{d.id} is {d.state}; the next step is retried later{why}", d, steps
    )


# -- operator answers ----------------------------------------------------------------------
def retry_delivery(runtime: Runtime, delivery_id: int) -> Delivery:
    """A failed delivery goes back to the step it failed at."""
    store = deliveries(runtime)
    with forward_lock(runtime):
        d = store.get(delivery_id)
        if d.state != D.FAILED or d.held_from is None:
            raise LedgerError(f"delivery #{d.id} is {d.state}, not failed")
        return store.record(
            d,
            RETRY_EVENT[d.held_from],
            runtime.clock.now(),
            {"by": "operator"},
            held_from=None,
            attempts=0,
            retry_at=None,
            last_error=None,
        )


RESOLVE_CHOICES = {
    "passphrase-arrived": DE.RESOLVE_PASSPHRASE_ARRIVED,
    "resend-passphrase": DE.RESOLVE_RESEND_PASSPHRASE,
    "partner-has-it": DE.RESOLVE_PARTNER_HAS_IT,
    "upload-again": DE.RESOLVE_UPLOAD_AGAIN,
}


def resolve_delivery(runtime: Runtime, delivery_id: int, answer: str) -> Delivery:
    """The operator's answer to a blocked delivery (``RESOLVE_CHOICES``)."""
    store = deliveries(runtime)
    event = RESOLVE_CHOICES[answer]
    with forward_lock(runtime):
        d = store.get(delivery_id)
        allowed = RESOLUTIONS.get(d.held_from or "", ())
        if d.state != D.BLOCKED or event not in allowed:
            choices = (
                ", ".join(f"--{k}" for k, v in RESOLVE_CHOICES.items() if v in allowed) or "none"
            )
            raise LedgerError(
                f"delivery #{d.id} is {d.state}; {answer} does not apply (choices: {choices})"
            )
        now = runtime.clock.now()
        fields: dict[str, Any] = {
            "held_from": None,
            "attempts": 0,
            "retry_at": None,
            "last_error": None,
        }
        if event == DE.RESOLVE_PASSPHRASE_ARRIVED:
            fields["passphrase_sent_at"] = now
        if event == DE.RESOLVE_PARTNER_HAS_IT:
            fields["uploaded_at"] = now
            fields["clean_after"] = clean_after(now, runtime.settings.partner.retention_days)
        if event == DE.RESOLVE_UPLOAD_AGAIN:
            fields["staged_at"] = None
        d = store.record(d, event, now, {"by": "operator"}, **fields)
        if event == DE.RESOLVE_PASSPHRASE_ARRIVED:
            _passphrase_path(d).unlink(missing_ok=True)
        clear_alert(runtime, f"delivery:{d.id}", f"delivery #{d.id}: resolved ({answer})")
        return d


def clean_now(runtime: Runtime, delivery_id: int) -> Delivery:
    """Delete a delivered delivery's clear text and archive now, retention and ``--keep``
    notwithstanding: the operator's explicit request."""
    store = deliveries(runtime)
    with forward_lock(runtime):
        d = store.get(delivery_id)
        if d.state != D.ANNOUNCED or d.step is not None:
            raise LedgerError(
                f"delivery #{d.id} is {d.state}: only a delivered (announced) delivery is cleaned"
            )
        return Forwarder(runtime)._clean(d, by_hand=True, force=True)


# -- the mailbox ---------------------------------------------------------------------------
def register_handlers(dispatcher: Dispatcher, runtime: Runtime) -> None:
    """A ``new_data`` mail starts a delivery (or joins the one waiting for files).

    Idempotent per mail record (``delivery_triggers``); touches only the ledger: the
    ForwardJob does the work.
    """

    def on_new_data(record: MailRecord, message: Message, classification: Classification) -> None:
        start_from_mail(runtime, record.id, classification.captures.get("nic"))

    dispatcher.on(NEW_DATA_CLASS, on_new_data)


def start_from_mail(runtime: Runtime, mail_id: int, nic: str | None) -> Delivery | None:
    store = deliveries(runtime)
    existing = store.trigger_for(mail_id)
    if existing is not None:
        return store.get(existing)
    try:
        agreement = runtime.settings.agreement_for(nic or None)
    except ConfigError as exc:
        raise_alert(
            runtime,
            f"new-data-agreement:{mail_id}",
            "new data announced for an agreement seftpilot cannot tell",
            f"Mail #{mail_id} says there is new data, but: {exc.message}\n\n"
            "Forward it by hand: `seftpilot forward --nic NIC`.",
        )
        return None
    now = runtime.clock.now()
    waiting = store.waiting(agreement.nic)
    if waiting is not None:
        store.link_trigger(mail_id, waiting.id, now)
        return waiting
    try:
        d = store.create(
            agreement.nic,
            source=agreement.download.source,
            origin="mail",
            nhs_day=nhs_day(now),
            work_root=str(work_root(runtime)),
            at=now,
            mail_id=mail_id,
        )
    except LedgerError:  # another thread created the waiting one a moment ago
        waiting = store.waiting(agreement.nic)
        if waiting is None:
            raise
        store.link_trigger(mail_id, waiting.id, now)
        return waiting
    log.info("delivery #%d started by new-data mail #%d (%s)", d.id, mail_id, agreement.nic)
    return d


# -- the timer -----------------------------------------------------------------------------
class ForwardJob:
    """Watcher job: advances every active delivery one step per run; starts a delivery
    when files appear in an agreement's drop folder; cleans after retention."""

    name = "forward"

    def __init__(
        self,
        runtime: Runtime,
        *,
        poll: timedelta = timedelta(minutes=1),
        forwarder: Forwarder | None = None,
    ) -> None:
        self.runtime = runtime
        self.poll = poll
        self.forwarder = forwarder or Forwarder(runtime)
        self._not_before: datetime | None = None

    def _folder_agreements(self) -> list[Agreement]:
        return [a for a in self.runtime.settings.agreement if a.download.source == "folder"]

    def next_due(self, now: datetime) -> datetime | None:
        if self._not_before is not None and now < self._not_before:
            return self._not_before
        due: list[datetime] = []
        for d in deliveries(self.runtime).list_deliveries(states=list(ACTIVE)):
            if d.state == D.ANNOUNCED:
                if not d.keep and d.clean_after is not None:
                    due.append(max(d.clean_after, d.retry_at or d.clean_after))
                continue
            due.append(d.retry_at or now)
        if self._folder_agreements():
            due.append(now)  # look at the drop folders (throttled by ``poll``)
        return min(due) if due else None

    def run(self, now: datetime) -> None:
        try:
            with forward_lock(self.runtime):
                moved = self._run(now)
        except AlreadyRunning:
            log.info("forward: another process is forwarding; looking again later")
            moved = False
        self._not_before = None if moved else now + self.poll

    def _run(self, now: datetime) -> bool:
        store = deliveries(self.runtime)
        for agreement in self._folder_agreements():
            if store.waiting(agreement.nic) is None:
                folder = self.runtime.settings.resolve(agreement.download.drop_folder)
                if collect.complete_files(folder):
                    d = store.create(
                        agreement.nic,
                        source="folder",
                        origin="folder",
                        nhs_day=nhs_day(now),
                        work_root=str(work_root(self.runtime)),
                        at=now,
                    )
                    log.info("delivery #%d started: files appeared in %s", d.id, folder)
        moved = False
        for d in store.list_deliveries(states=list(ACTIVE)):
            before = (d.state, d.version)
            try:
                after = self.forwarder.step(d)
            except SeftpilotError as exc:  # a ledger problem: tell, go on with the others
                log.error("delivery #%d: %s", d.id, exc)
                continue
            # Progress means a state change; a waiting delivery's look is not progress.
            if after.state != before[0]:
                moved = True
        return moved


def jobs(runtime: Runtime) -> list[ForwardJob]:
    """The watcher jobs of this capability (``service.assemble`` collects them)."""
    return [ForwardJob(runtime)]
