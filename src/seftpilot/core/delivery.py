"""Deliveries: the forward state machine as one table, and the decisions around it.

Owns, as pure values and functions:

* the delivery state machine (``TRANSITIONS``, ``next_state``: any (state, event) pair not
  in the table is ``errors.IllegalTransition`` and nothing changes). A state is the last
  step *completed*; the step in hand is claimed separately (``STEP_FOR_STATE``) and what a
  claim left behind by a crash means is ``after_crash``;
* which files are new in SEFT's download area (``new_remote_files``), when a drop folder
  is quiet (``folder_decision``) and which names are unfinished downloads (``is_partial``);
* how an interrupted partner upload is settled from a listing (``upload_decision``);
* names (``archive_name``, ``part_names``, ``staging_name``), retention (``clean_after``),
  retry backoff (``retry_at``) and the text of the two partner mails.

It must not touch files, sockets, the clock or logs: ``service/forward.py`` reads the
world, asks here, and records through ``adapters/delivery_store.py``.
"""

from __future__ import annotations

import fnmatch
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Literal

from seftpilot.errors import IllegalTransition

MACHINE = "delivery"


class DeliveryState(StrEnum):
    WAITING = "waiting"  # created (new-data mail or by hand); files not yet collected
    COLLECTED = "collected"  # files in the work dir, manifest recorded
    ARCHIVED = "archived"  # one encrypted 7z (or its volumes) built, fingerprint recorded
    VERIFIED = "verified"  # the archive reopened with the passphrase and matched the manifest
    UPLOADED = "uploaded"  # under its final name at the partner's, size checked
    PASSPHRASE_SENT = "passphrase_sent"  # noqa: S105 - the passphrase mail was accepted by SMTP
    ANNOUNCED = "announced"  # the announcement went (or nobody is configured to get it)
    CLEANED = "cleaned"  # clear text and local archive deleted after retention
    FAILED = "failed"  # a step failed for good; the operator retries it
    BLOCKED = "blocked"  # a step's fate is unknown; the operator says what happened


class DeliveryEvent(StrEnum):
    COLLECT_DONE = "collect_done"
    ARCHIVE_DONE = "archive_done"
    VERIFY_DONE = "verify_done"
    VERIFY_FAILED = "verify_failed"  # rebuild the archive (bounded by the service)
    UPLOAD_DONE = "upload_done"
    PASSPHRASE_DONE = "passphrase_done"  # noqa: S105
    ANNOUNCE_DONE = "announce_done"
    CLEAN_DONE = "clean_done"
    FAIL = "fail"
    BLOCK = "block"
    # The operator's way back from ``failed``: one event per step that can be retried.
    RETRY_COLLECT = "retry_collect"
    RETRY_ARCHIVE = "retry_archive"
    RETRY_UPLOAD = "retry_upload"
    RETRY_PASSPHRASE = "retry_passphrase"  # noqa: S105
    RETRY_ANNOUNCE = "retry_announce"
    RETRY_CLEAN = "retry_clean"
    # The operator's answers to ``blocked``.
    RESOLVE_PASSPHRASE_ARRIVED = "resolve_passphrase_arrived"  # noqa: S105
    RESOLVE_RESEND_PASSPHRASE = "resolve_resend_passphrase"  # noqa: S105
    RESOLVE_PARTNER_HAS_IT = "resolve_partner_has_it"
    RESOLVE_UPLOAD_AGAIN = "resolve_upload_again"


D = DeliveryState
DE = DeliveryEvent

ACTIVE: tuple[DeliveryState, ...] = (
    D.WAITING,
    D.COLLECTED,
    D.ARCHIVED,
    D.VERIFIED,
    D.UPLOADED,
    D.PASSPHRASE_SENT,
    D.ANNOUNCED,
)

TRANSITIONS: dict[tuple[DeliveryState, DeliveryEvent], DeliveryState] = {
    (D.WAITING, DE.COLLECT_DONE): D.COLLECTED,
    (D.COLLECTED, DE.ARCHIVE_DONE): D.ARCHIVED,
    (D.ARCHIVED, DE.VERIFY_DONE): D.VERIFIED,
    (D.ARCHIVED, DE.VERIFY_FAILED): D.COLLECTED,
    (D.VERIFIED, DE.UPLOAD_DONE): D.UPLOADED,
    (D.UPLOADED, DE.PASSPHRASE_DONE): D.PASSPHRASE_SENT,
    (D.PASSPHRASE_SENT, DE.ANNOUNCE_DONE): D.ANNOUNCED,
    (D.ANNOUNCED, DE.CLEAN_DONE): D.CLEANED,
    **{(state, DE.FAIL): D.FAILED for state in ACTIVE},
    # Only the two steps whose effect cannot be repeated blindly ever block.
    (D.VERIFIED, DE.BLOCK): D.BLOCKED,
    (D.UPLOADED, DE.BLOCK): D.BLOCKED,
    (D.FAILED, DE.RETRY_COLLECT): D.WAITING,
    (D.FAILED, DE.RETRY_ARCHIVE): D.COLLECTED,
    (D.FAILED, DE.RETRY_UPLOAD): D.VERIFIED,
    (D.FAILED, DE.RETRY_PASSPHRASE): D.UPLOADED,
    (D.FAILED, DE.RETRY_ANNOUNCE): D.PASSPHRASE_SENT,
    (D.FAILED, DE.RETRY_CLEAN): D.ANNOUNCED,
    (D.BLOCKED, DE.RESOLVE_PASSPHRASE_ARRIVED): D.PASSPHRASE_SENT,
    (D.BLOCKED, DE.RESOLVE_RESEND_PASSPHRASE): D.UPLOADED,
    (D.BLOCKED, DE.RESOLVE_PARTNER_HAS_IT): D.UPLOADED,
    (D.BLOCKED, DE.RESOLVE_UPLOAD_AGAIN): D.VERIFIED,
}

_TABLE: dict[tuple[str, str], str] = {(str(s), str(e)): str(n) for (s, e), n in TRANSITIONS.items()}


def next_state(state: str, event: str) -> str:
    """The state ``event`` leads to from ``state``; IllegalTransition for any other pair."""
    try:
        return _TABLE[(state, event)]
    except KeyError:
        raise IllegalTransition(MACHINE, str(state), str(event)) from None


def allowed_events(state: str) -> list[str]:
    return [ev for (st, ev) in _TABLE if st == state]


# -- steps and claims ---------------------------------------------------------------------
Step = Literal["collect", "archive", "verify", "upload", "passphrase", "announce", "clean"]
STEPS: tuple[Step, ...] = (
    "collect",
    "archive",
    "verify",
    "upload",
    "passphrase",
    "announce",
    "clean",
)

STEP_FOR_STATE: dict[str, Step] = {
    D.WAITING: "collect",
    D.COLLECTED: "archive",
    D.ARCHIVED: "verify",
    D.VERIFIED: "upload",
    D.UPLOADED: "passphrase",
    D.PASSPHRASE_SENT: "announce",
    D.ANNOUNCED: "clean",
}
DONE_EVENT: dict[Step, DeliveryEvent] = {
    "collect": DE.COLLECT_DONE,
    "archive": DE.ARCHIVE_DONE,
    "verify": DE.VERIFY_DONE,
    "upload": DE.UPLOAD_DONE,
    "passphrase": DE.PASSPHRASE_DONE,
    "announce": DE.ANNOUNCE_DONE,
    "clean": DE.CLEAN_DONE,
}
RETRY_EVENT: dict[str, DeliveryEvent] = {
    D.WAITING: DE.RETRY_COLLECT,
    D.COLLECTED: DE.RETRY_ARCHIVE,
    D.ARCHIVED: DE.RETRY_ARCHIVE,  # a failed verification rebuilds the archive
    D.VERIFIED: DE.RETRY_UPLOAD,
    D.UPLOADED: DE.RETRY_PASSPHRASE,
    D.PASSPHRASE_SENT: DE.RETRY_ANNOUNCE,
    D.ANNOUNCED: DE.RETRY_CLEAN,
}
# Which answers make sense for a delivery blocked in a given state.
RESOLUTIONS: dict[str, tuple[DeliveryEvent, ...]] = {
    D.VERIFIED: (DE.RESOLVE_PARTNER_HAS_IT, DE.RESOLVE_UPLOAD_AGAIN),
    D.UPLOADED: (DE.RESOLVE_PASSPHRASE_ARRIVED, DE.RESOLVE_RESEND_PASSPHRASE),
}


def step_for(state: str) -> Step | None:
    """The step a delivery in ``state`` takes next (None: nothing to do)."""
    return STEP_FOR_STATE.get(state)


CrashAction = Literal["redo", "reconcile_upload", "block_passphrase"]


def after_crash(step: str) -> CrashAction:
    """What a claim found still held at the start of a pass means (its process died).

    Collecting, archiving, verifying and cleaning are repeatable: do them again. An upload
    is settled by listing the partner's folder (never re-upload blind). A passphrase mail
    whose claim was recorded but whose Message-ID was not may or may not have gone: it is
    sent at most once, so the operator is asked instead of sending it again. The
    announcement carries no secret and is sent at least once (same Message-ID again).
    """
    if step == "upload":
        return "reconcile_upload"
    if step == "passphrase":
        return "block_passphrase"
    return "redo"


def retry_at(now: datetime, attempts: int) -> datetime:
    """When a step that failed transiently ``attempts`` times in a row may run again:
    1, 2, 4 ... minutes, at most an hour."""
    return now + timedelta(minutes=min(2 ** max(attempts - 1, 0), 60))


# -- collecting ---------------------------------------------------------------------------
PARTIAL_PATTERNS: tuple[str, ...] = (
    "*.crdownload",
    "*.part",
    "*.partial",
    "*.tmp",
    ".~lock*",
    "*.download",
)


def is_partial(name: str) -> bool:
    """An unfinished browser download, an office lock file, or a hidden file."""
    return name.startswith(".") or any(fnmatch.fnmatch(name, p) for p in PARTIAL_PATTERNS)


@dataclass(frozen=True, order=True)
class SeenFile:
    """One file as a listing shows it: name, size and modification time."""

    name: str
    size: int
    mtime: int


def new_remote_files(listing: Iterable[SeenFile], seen: Iterable[SeenFile]) -> list[SeenFile]:
    """Files of ``listing`` not collected before (by name + size + mtime), partial
    downloads left out. A file NHS replaced (same name, new size or time) is new."""
    done = set(seen)
    return sorted(f for f in listing if f not in done and not is_partial(f.name))


@dataclass(frozen=True)
class FolderDecision:
    ready: bool
    quiet_since: datetime
    complete: tuple[SeenFile, ...]  # what would be collected
    partial: tuple[str, ...]  # unfinished downloads present (never collected)
    reason: str


def folder_decision(  # noqa: PLR0917 - a pure decision over six plain values
    snapshot: Sequence[SeenFile],
    previous: Sequence[SeenFile] | None,
    quiet_since: datetime | None,
    now: datetime,
    quiet_seconds: int,
    expected_count: int | None,
) -> FolderDecision:
    """Is the drop folder ready to collect?

    ``snapshot`` is every entry now (partial downloads included: a growing
    ``.crdownload`` is activity), ``previous`` and ``quiet_since`` what the last look
    recorded. Ready when nothing changed for ``quiet_seconds`` (measured between looks,
    never by sleeping) and there is at least one complete file, or as soon as
    ``expected_count`` complete files are present and no download is unfinished.
    """
    current = tuple(sorted(snapshot))
    complete = tuple(f for f in current if not is_partial(f.name))
    partial = tuple(f.name for f in current if is_partial(f.name) and not f.name.startswith("."))
    changed = previous is None or tuple(sorted(previous)) != current
    since = now if changed or quiet_since is None else quiet_since
    if not complete:
        return FolderDecision(False, since, complete, partial, "the drop folder holds no file")
    if expected_count is not None and len(complete) >= expected_count and not partial:
        return FolderDecision(
            True, since, complete, partial, f"{len(complete)} of {expected_count} expected files"
        )
    quiet_for = (now - since).total_seconds()
    if quiet_for >= quiet_seconds:
        return FolderDecision(
            True, since, complete, partial, f"quiet for {int(quiet_for)} s ({len(complete)} files)"
        )
    return FolderDecision(
        False,
        since,
        complete,
        partial,
        f"changed {int(quiet_for)} s ago; waiting for {quiet_seconds} s of quiet",
    )


# -- names --------------------------------------------------------------------------------
_FIELDS = {"date", "delivery", "nic"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def archive_name(template: str, day: date, delivery_id: int, nic: str) -> str:
    """The archive's name from ``partner.name_template``: ``{date}`` is the NHS day the
    delivery started (ISO, YYYY-MM-DD), ``{delivery}`` its id, ``{nic}`` the agreement.
    ValueError names what is wrong with the template."""
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    unknown = fields - _FIELDS
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(sorted('{' + f + '}' for f in unknown))}; "
            "use {date}, {delivery} and {nic}"
        )
    if "delivery" not in fields:
        raise ValueError("the template must contain {delivery} so that names never repeat")
    name = template.format(date=day.isoformat(), delivery=delivery_id, nic=nic)
    if not _SAFE_NAME.match(name):
        raise ValueError(
            f"it gives {name!r}: a name must start with a letter or digit and hold only "
            "letters, digits, '.', '_', '+' and '-'"
        )
    return name


def part_names(final: str, local_parts: Sequence[str]) -> list[str]:
    """Remote names for the archive's files: ``final`` itself, or ``final.001``... for
    volumes (the suffix 7-Zip gave each local part)."""
    if len(local_parts) == 1 and not re.search(r"\.\d{3}$", local_parts[0]):
        return [final]
    return [f"{final}{m.group(0)}" for p in local_parts if (m := re.search(r"\.\d{3}$", p))]


def staging_name(final: str) -> str:
    """Where a part waits, complete, before the rename that hands it to the partner's
    router: hidden, and never starting with the router's prefix."""
    return f".seftpilot-staged-{final}"


UploadDecision = Literal["done", "rename", "upload", "block_mismatch", "block_vanished"]


def upload_decision(
    size: int, final_size: int | None, staged_size: int | None, staged_recorded: bool
) -> UploadDecision:
    """What to do with one archive part of ``size`` bytes, given a listing of the partner's
    folder (``final_size``/``staged_size``: None when absent) and whether the ledger
    recorded that every part had been staged.

    - final name there, right size: it arrived (``done``); wrong size: ``block_mismatch``.
    - staged copy complete: ``rename`` it to the final name.
    - staged was recorded but neither name is there: the rename happened and the
      partner's router has already taken the file (or someone removed it); sending it
      again would deliver twice, so ``block_vanished``: the operator asks the partner.
    - otherwise nothing complete is there: ``upload`` (again, from the start).
    """
    if final_size is not None:
        return "done" if final_size == size else "block_mismatch"
    if staged_size == size:
        return "rename"
    if staged_recorded:
        return "block_vanished"
    return "upload"


# -- retention ----------------------------------------------------------------------------
def clean_after(uploaded_at: datetime, retention_days: int) -> datetime:
    return uploaded_at + timedelta(days=retention_days)


def clean_due(uploaded_at: datetime | None, retention_days: int, now: datetime, keep: bool) -> bool:
    """Clear text may go once the partner has held the archive for ``retention_days``."""
    if keep or uploaded_at is None:
        return False
    return now >= clean_after(uploaded_at, retention_days)


# -- the partner's mails --------------------------------------------------------------------
@dataclass(frozen=True)
class ArchivePart:
    name: str  # remote (final) name
    size: int
    sha256: str


def passphrase_mail(
    delivery_id: int, nic: str, fingerprint: str, passphrase: str
) -> tuple[str, str]:
    """(subject, body) of the passphrase mail. Names the delivery and the fingerprint only:
    not the archive, its size or where it is (that is the announcement's job)."""
    subject = f"seftpilot delivery {delivery_id}: passphrase"
    body = (
        f"This is the passphrase for seftpilot delivery {delivery_id} ({nic}).\n"
        "It opens the encrypted 7z archive announced in a separate message.\n"
        "\n"
        f"    {passphrase}\n"
        "\n"
        "Type it exactly as shown, hyphens included (letters A-Z and digits 2-7 only).\n"
        f"Fingerprint: {fingerprint} (the announcement names the same one).\n"
        "\n"
        "Do not forward this message. Keep it apart from the archive.\n"
    )
    return subject, body


def announcement_mail(  # noqa: PLR0917
    delivery_id: int,
    nic: str,
    parts: Sequence[ArchivePart],
    file_count: int,
    where: str,
    fingerprint: str,
) -> tuple[str, str]:
    """(subject, body) of the announcement: what was sent and where, never the passphrase."""
    subject = f"seftpilot delivery {delivery_id}: {parts[0].name} is ready"
    lines = [
        f"seftpilot delivery {delivery_id} ({nic}) has been uploaded to {where}.",
        "",
        f"Files inside: {file_count}",
        "Archive: 7z, AES-256, encrypted headers",
    ]
    for part in parts:
        lines += [
            "",
            f"  name:    {part.name}",
            f"  size:    {part.size} bytes",
            f"  SHA-256: {part.sha256}",
        ]
    lines += [
        "",
        f"The passphrase comes in a separate message (fingerprint {fingerprint}).",
        "Check the SHA-256 before opening: `sha256sum " + parts[0].name + "`.",
    ]
    return subject, "\n".join(lines) + "\n"
