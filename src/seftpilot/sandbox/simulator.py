"""The NHS England simulator: SEFT's cohort intake, its mail and its data releases.

Owns the behaviour NHS-COHORT.md describes, played against the sandbox's servers:

- **Intake.** Watches SEFT's upload area (a folder the sandbox's SFTP server serves). A
  file that appears under a visible name and keeps its size for one look is *collected*
  (moved out, as SEFT's intake does) and checked with the cohort engine's own validator
  (``adapters.cohort_files.validate_file``: header, CRLF, the NIC file name, mixed
  actions, every row), plus the one-file-a-day rule and any rows the scenario says NHS
  refuses (``reject_refs``: what only NHS can know, e.g. a trace that fails).
- **Answers, the next morning** (``notice_time`` Europe/London on the next working day):
  a file-level problem rejects the file; more than 2% failing rows reject it with a
  ``Cohort-Data-Validation-Errors`` CSV attached; fewer are dropped and the rest accepted
  (a notice says so, with the CSV). Success is **silence** in ``legacy`` mode and a
  ``Cohort-Data-Summary-File`` notice in ``pve`` mode. In legacy mode a file with LF line
  endings *breaks the intake*: nothing at all comes back (``lf_breaks_intake``).
- **Its own pool.** ADD rows join, DELETE rows leave, except the occasional record a
  DELETE fails to remove (``stuck_refs``, ``stuck_delete_rate``): the pool only NHS
  staff can fix.
- **Releases.** After a file changed the pool, matching runs ``match_delay_days``
  working days later at ``match_time``: ``returned_files`` synthetic CSVs land in SEFT's
  download area (written under a hidden name, then renamed) and a "There is new data"
  mail follows. Release reminders go 5 days before each of ``release_dates``.
- **Faults** (``Faults``): mail that is never sent (by kind, or the next N), days of
  total silence, mangled (broken MIME) messages. Connection drops are the sandbox's
  (it owns the servers).

The sender, subjects and bodies follow the samples in ``sample_mail/`` so that the
default rules (``default_rules/20-nhs-england.yaml``) classify them as the real ones.

Time comes from the injected clock: ``step()`` does whatever is due at ``clock.now()``.
Only synthetic data is ever written (999-range NHS numbers, echoed back from the files
it received). Must not talk to the service directly: only files and mail, as NHS does.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import io
import itertools
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any, Literal

from seftpilot.adapters.clock import Clock
from seftpilot.adapters.cohort_files import load_profile, validate_file
from seftpilot.core.calendar import is_working_day, london_instant, next_working_day, nhs_day
from seftpilot.core.cohort_profile import Profile
from seftpilot.core.synthetic import synthetic_nhs_number

SENDER = "dars.cohort@nhsdigital.nhs.uk"
SENDER_NAME = "NHS England - Data Access Request Service (sandbox)"
REJECT_SHARE = 0.02  # NHS rejects the whole file above this share of failing rows

MailKind = Literal["failure", "rows_dropped", "summary", "new_data", "reminder"]
MAIL_KINDS: tuple[str, ...] = ("failure", "rows_dropped", "summary", "new_data", "reminder")

# NHS's wording for the validator's codes (its own categories, NHS-COHORT.md).
CATEGORY_TEXT = {
    "incorrect_headers": "Incorrect headers",
    "invalid_nhs_number": "Invalid NHS number",
    "insufficient_information": "Insufficient information to trace the record",
    "unique_reference_duplicate": "Duplicate unique reference",
    "unique_reference_empty": "Empty unique reference",
    "incorrect_format_for_date_of_birth": "Date of birth in the wrong format",
    "wrong_line_endings": "The file could not be read (line endings)",
    "wrong_filename": "The file name does not match the agreement",
    "mixed_status": "The file mixes ADD and DELETE",
    "one_file_a_day": "More than one file was received today; only the first was processed",
}

DATASETS = ("HES_APC", "HES_OP", "HES_AE", "ONS_DEATHS", "CANCER_REG", "COVID_SGSS", "GDPPR")


@dataclass
class Faults:
    """What goes wrong on purpose (tests prove the service notices each)."""

    lose: set[str] = field(default_factory=set)  # kinds NHS "sends" that never arrive
    lose_next: int = 0  # the next N NHS mails of any kind never arrive
    silent_days: set[date] = field(default_factory=set)  # NHS days of total silence
    mangle: set[str] = field(default_factory=set)  # kinds sent as broken MIME
    mangle_next: int = 0


@dataclass
class SimulatorConfig:
    nic: str
    to: str  # the study's watched mailbox
    mode: Literal["legacy", "pve"] = "legacy"
    profile: str = "mps-legacy-24"
    sender: str = SENDER
    notice_time: time = time(7, 20)
    match_delay_days: int = 1
    match_time: time = time(14, 0)
    returned_files: int = 3
    reject_refs: dict[str, str] = field(default_factory=dict)  # ref -> category code
    stuck_refs: set[str] = field(default_factory=set)
    stuck_delete_rate: float = 0.0
    release_dates: list[date] = field(default_factory=list)
    reminder_days_before: int = 5
    reminder_time: time = time(10, 0)
    lf_breaks_intake: bool = True
    # Real-time rehearsals: NHS answers after (its normal delay / speed).
    speed: float = 1.0
    seed: int = 0
    faults: Faults = field(default_factory=Faults)


@dataclass(frozen=True)
class Receipt:
    """A file NHS collected and what became of it."""

    file_name: str
    at: datetime
    nhs_day: date
    action: str | None
    rows: int
    outcome: str  # accepted | rows_dropped | rejected | silent
    reason: str = ""
    failed_refs: tuple[str, ...] = ()
    stuck: tuple[str, ...] = ()


@dataclass(frozen=True)
class SentMail:
    kind: str
    at: datetime
    subject: str
    delivered: bool
    mangled: bool = False


@dataclass(frozen=True)
class PlacedFile:
    name: str
    size: int
    sha256: str
    at: datetime
    release: int


@dataclass(order=True)
class _Due:
    at: datetime
    seq: int
    what: str = field(compare=False)
    data: dict[str, Any] = field(compare=False, default_factory=dict)


class NhsSimulator:
    """NHS England's side of the loop (module docstring). Call ``step()`` as time passes."""

    def __init__(
        self,
        config: SimulatorConfig,
        clock: Clock,
        *,
        upload_dir: Path,
        download_dir: Path,
        send: Callable[[bytes], None],
        holidays: frozenset[date] = frozenset(),
        work_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.upload_dir = upload_dir
        self.download_dir = download_dir
        self.send = send
        self.holidays = holidays
        self.work_dir = work_dir or upload_dir.parent / "nhs-collected"
        self.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.profile: Profile = load_profile(config.profile)
        self.pool: dict[str, str] = {}  # ref -> NHS number ("" when none was given)
        self.received: list[Receipt] = []
        self.sent: list[SentMail] = []
        self.placed: list[PlacedFile] = []
        self._sizes: dict[str, int] = {}
        self._queue: list[_Due] = []
        self._seq = itertools.count()
        self._release = 0
        self._match_pending = False
        self._rng = random.Random(config.seed)  # noqa: S311 - simulated behaviour, not secrets
        now = clock.now()
        for release in config.release_dates:
            at = london_instant(
                release - timedelta(days=config.reminder_days_before), config.reminder_time
            )
            if at >= now:
                self._schedule(at, "reminder", release=release)

    # -- the loop ---------------------------------------------------------------------------
    def step(self) -> list[str]:
        """Do what is due now; returns one line per thing NHS did (for the live view)."""
        lines = self._collect()
        now = self.clock.now()
        while self._queue and self._queue[0].at <= now:
            due = heapq.heappop(self._queue)
            lines += self._run(due)
        return lines

    def next_due(self) -> datetime | None:
        return self._queue[0].at if self._queue else None

    def _schedule(self, at: datetime, what: str, **data: Any) -> None:
        heapq.heappush(self._queue, _Due(at, next(self._seq), what, data))

    def _later(self, target: datetime) -> datetime:
        """``target`` as seen from now, shortened by ``speed`` (real-time rehearsals)."""
        now = self.clock.now()
        if self.config.speed <= 1.0 or target <= now:
            return target
        return now + (target - now) / self.config.speed

    def _next_working_at(self, day: date, at: time, days: int = 1) -> datetime:
        for _ in range(days):
            day = next_working_day(day, self.holidays)
        return self._later(london_instant(day, at))

    # -- intake -----------------------------------------------------------------------------
    def _collect(self) -> list[str]:
        lines: list[str] = []
        try:
            entries = sorted(os.scandir(self.upload_dir), key=lambda e: e.name)
        except FileNotFoundError:
            return lines
        seen: set[str] = set()
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file():
                continue  # an upload in progress (temporary name) or a folder
            seen.add(entry.name)
            size = entry.stat().st_size
            if self._sizes.get(entry.name) != size:
                self._sizes[entry.name] = size  # first sight, or still growing: look again
                continue
            del self._sizes[entry.name]
            now = self.clock.now()
            # Kept under its own name (the name is part of what NHS checks).
            folder = self.work_dir / f"{now:%Y%m%dT%H%M%S}-{len(self.received) + 1}"
            folder.mkdir(mode=0o700, parents=True)
            kept = folder / entry.name
            os.replace(entry.path, kept)
            lines.append(self._receive(kept, entry.name, now))
        for name in set(self._sizes) - seen:
            del self._sizes[name]
        return lines

    def _receive(self, path: Path, name: str, now: datetime) -> str:
        cfg = self.config
        day = nhs_day(now)
        earlier = [r for r in self.received if r.nhs_day == day and r.outcome != "silent"]
        report = validate_file(path, self.profile, cfg.nic)
        rows = self._rows(path)
        action = report.action
        if day in cfg.faults.silent_days:
            return self._record(Receipt(name, now, day, action, len(rows), "silent", "fault"))
        file_problems = [p for p in report.problems if p.row is None]
        if (
            cfg.mode == "legacy"
            and cfg.lf_breaks_intake
            and any(p.code == "wrong_line_endings" for p in file_problems)
        ):
            return self._record(
                Receipt(name, now, day, action, len(rows), "silent", "LF line endings")
            )
        if earlier:
            reason = CATEGORY_TEXT["one_file_a_day"]
            self._notice("failure", day, file=name, reason=reason, rows=len(rows))
            return self._record(Receipt(name, now, day, action, len(rows), "rejected", reason))
        if file_problems:
            first = file_problems[0]
            reason = CATEGORY_TEXT.get(first.code, first.message)
            self._notice("failure", day, file=name, reason=reason, rows=len(rows))
            return self._record(Receipt(name, now, day, action, len(rows), "rejected", reason))
        failed: dict[str, tuple[str, str, str]] = {}  # ref -> (nhs, dob, code)
        by_row = {p.row: p.code for p in report.problems if p.row is not None}
        for number, row in enumerate(rows, start=1):
            code = by_row.get(number) or cfg.reject_refs.get(row["ref"])
            if code:
                failed.setdefault(row["ref"], (row["nhs"], row["dob"], code))
        share = len(failed) / len(rows) if rows else 0.0
        if failed and share > REJECT_SHARE:
            self._notice("failure", day, file=name, failed=failed, rows=len(rows))
            return self._record(
                Receipt(
                    name, now, day, action, len(rows), "rejected", "rows", tuple(sorted(failed))
                )
            )
        accepted = [r for r in rows if r["ref"] not in failed]
        stuck = self._apply(action or "", accepted)
        if failed:
            self._notice("rows_dropped", day, file=name, failed=failed, rows=len(rows))
            outcome = "rows_dropped"
        else:
            if cfg.mode == "pve":
                self._notice("summary", day, file=name, rows=len(rows))
            outcome = "accepted"
        if accepted and not self._match_pending:
            self._match_pending = True
            self._schedule(
                self._next_working_at(day, cfg.match_time, max(1, cfg.match_delay_days)), "match"
            )
        return self._record(
            Receipt(name, now, day, action, len(rows), outcome, "", tuple(sorted(failed)), stuck)
        )

    def _record(self, receipt: Receipt) -> str:
        self.received.append(receipt)
        what = {
            "accepted": "accepted"
            + (" (legacy intake: success is silence)" if self.config.mode == "legacy" else ""),
            "rows_dropped": f"accepted without {len(receipt.failed_refs)} failing row(s)",
            "rejected": f"rejected ({receipt.reason or 'row failures'}); mail tomorrow morning",
            "silent": f"swallowed ({receipt.reason}): no answer will come",
        }[receipt.outcome]
        return (
            f"NHS England collected {receipt.file_name} ({receipt.action or '?'}, "
            f"{receipt.rows} rows): {what}"
        )

    def _rows(self, path: Path) -> list[dict[str, str]]:
        header = list(self.profile.header)
        ref_i = header.index(self.profile.unique_field)
        nhs_i = next((i for i, f in enumerate(self.profile.fields) if f.kind == "nhs_number"), None)
        dob_i = next((i for i, f in enumerate(self.profile.fields) if f.kind == "date"), None)
        text = path.read_bytes().decode("utf-8", errors="replace").lstrip("\ufeff")
        reader = csv.reader(io.StringIO(text, newline=""))
        next(reader, None)
        out = []
        for row in reader:
            if not row:
                continue

            def cell(i: int | None, row: list[str] = row) -> str:
                return row[i] if i is not None and i < len(row) else ""

            out.append({"ref": cell(ref_i), "nhs": cell(nhs_i), "dob": cell(dob_i)})
        return out

    def _apply(self, action: str, rows: Iterable[dict[str, str]]) -> tuple[str, ...]:
        """Change the pool; returns the references a DELETE failed to remove."""
        stuck: list[str] = []
        for row in rows:
            ref = row["ref"]
            if action == "DELETE":
                if ref in self.config.stuck_refs or (
                    ref in self.pool and self._rng.random() < self.config.stuck_delete_rate
                ):
                    stuck.append(ref)
                    continue
                self.pool.pop(ref, None)
            else:
                self.pool[ref] = row["nhs"]
        return tuple(stuck)

    # -- what falls due ---------------------------------------------------------------------
    def _notice(self, kind: str, day: date, **data: Any) -> None:
        self._schedule(self._next_working_at(day, self.config.notice_time), kind, **data)

    def _run(self, due: _Due) -> list[str]:
        if due.what == "match":
            self._match_pending = False
            return self._match(due.at)
        if nhs_day(due.at) in self.config.faults.silent_days:
            self.sent.append(SentMail(due.what, due.at, "(silence)", delivered=False))
            return [f"NHS England stays silent today: the {due.what} mail is never sent"]
        message = self._compose(due.what, due.data)
        return [self._mail(due.what, message)]

    def _match(self, at: datetime) -> list[str]:
        if not self.pool:
            return ["NHS England matched nothing: its pool is empty"]
        self._release += 1
        self.download_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        names = []
        for n in range(self.config.returned_files):
            dataset = DATASETS[n % len(DATASETS)]
            name = f"{self.config.nic}_{dataset}_R{self._release:03d}_{n + 1:03d}.csv"
            payload = self._returned_file(dataset, n)
            temp = self.download_dir / f".{name}.part"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
            os.replace(temp, self.download_dir / name)
            self.placed.append(
                PlacedFile(
                    name, len(payload), hashlib.sha256(payload).hexdigest(), at, self._release
                )
            )
            names.append(name)
        message = self._compose("new_data", {"count": len(names)})
        return [
            f"NHS England matched {len(self.pool)} participants: {len(names)} files placed "
            "in the SEFT download area",
            self._mail("new_data", message),
        ]

    def _returned_file(self, dataset: str, n: int) -> bytes:
        """A synthetic extract: one line per participant NHS holds (echoing only the 999-range
        numbers it was sent), episodes made up from the seed."""
        rng = random.Random(f"{self.config.seed}-{self._release}-{n}")  # noqa: S311
        out = io.StringIO(newline="")
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(["UNIQUE_REFERENCE", "NHS_NO", "DATASET", "EVENT_DATE", "CODE"])
        for ref, nhs in sorted(self.pool.items()):
            event = date(2020, 1, 1) + timedelta(days=rng.randrange(1500))
            code = f"{rng.choice('ABCDEIJKNRZ')}{rng.randrange(100):02d}.{rng.randrange(10)}"
            writer.writerow(
                [ref, nhs or synthetic_nhs_number(rng), dataset, f"{event:%Y%m%d}", code]
            )
        return out.getvalue().encode("ascii")

    # -- mail -------------------------------------------------------------------------------
    def _mail(self, kind: str, message: EmailMessage) -> str:
        faults = self.config.faults
        now = self.clock.now()
        subject = str(message["Subject"])
        if kind in faults.lose or faults.lose_next > 0:
            faults.lose_next = max(0, faults.lose_next - 1)
            self.sent.append(SentMail(kind, now, subject, delivered=False))
            return f"NHS England sent '{subject}' (fault: lost on the way)"
        raw = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
        mangled = kind in faults.mangle or faults.mangle_next > 0
        if mangled:
            faults.mangle_next = max(0, faults.mangle_next - 1)
            raw = mangle(raw)
        self.send(raw)
        self.sent.append(SentMail(kind, now, subject, delivered=True, mangled=mangled))
        return f"NHS England mailed '{subject}'" + (" (fault: mangled)" if mangled else "")

    def _compose(self, kind: str, data: dict[str, Any]) -> EmailMessage:
        cfg = self.config
        nic = cfg.nic
        msg = EmailMessage()
        msg["From"] = f'"{SENDER_NAME}" <{cfg.sender}>'
        msg["To"] = cfg.to
        msg["Date"] = format_datetime(self.clock.now())
        msg["Message-ID"] = make_msgid(domain="nhsdigital.nhs.uk")
        sign = "\nData Access Request Service, NHS England\n"
        if kind == "failure":
            file = data["file"]
            failed: dict[str, tuple[str, str, str]] = data.get("failed") or {}
            if failed:
                total = int(data["rows"])
                msg["Subject"] = f"Cohort-Data-Validation-Errors for {nic}"
                msg.set_content(
                    "Dear Cohort Submitter,\n\n"
                    f"Your cohort file {file} was received but could not be accepted.\n"
                    f"{len(failed)} of {total} records failed validation "
                    f"({100 * len(failed) / total:.1f}%). More than 2% of records failed, "
                    "so the whole file has been rejected.\n"
                    "The attached Cohort-Data-Validation-Errors report lists every record "
                    f"that failed.\n{sign}"
                )
                self._attach_report(msg, failed)
            else:
                msg["Subject"] = f"Cohort submission {nic}: file rejected"
                msg.set_content(
                    "Dear Cohort Submitter,\n\n"
                    f"Your cohort file {file} failed validation and has been rejected.\n"
                    f"Reason: {data['reason']}\n\n"
                    f"Please correct the file and submit it again.\n{sign}"
                )
        elif kind == "rows_dropped":
            failed = data["failed"]
            total = int(data["rows"])
            msg["Subject"] = f"Cohort-Data-Validation-Errors for {nic}"
            msg.set_content(
                "Dear Cohort Submitter,\n\n"
                f"Your cohort file {data['file']} was received.\n"
                f"{len(failed)} of {total} records failed validation "
                f"({100 * len(failed) / total:.1f}%).\n"
                "The records that failed validation have been removed and the remaining "
                "records have been accepted.\n"
                f"The attached Cohort-Data-Validation-Errors report lists them.\n{sign}"
            )
            self._attach_report(msg, failed)
        elif kind == "summary":
            msg["Subject"] = f"Cohort submission {nic}: Cohort-Data-Summary-File available"
            msg.set_content(
                "Dear Cohort Submitter,\n\n"
                f"Your cohort submission file {data['file']} has been validated "
                f"successfully.\n{data['rows']:,} records were received.\n\n"
                "Your Cohort-Data-Summary-File is available in your SEFT account.\n"
                f"{sign}"
            )
        elif kind == "new_data":
            msg["Subject"] = "There is new data"
            msg.set_content(
                "Dear Data Recipient,\n\n"
                f"There is new data available for agreement {nic}.\n\n"
                f"{data['count']} files are ready in the SEFT download area for your "
                f"agreement. Files are kept for 30 days.\n{sign}"
            )
        elif kind == "reminder":
            release: date = data["release"]
            msg["Subject"] = f"Reminder: data release for {nic}"
            msg.set_content(
                "Dear Data Recipient,\n\n"
                f"This is a reminder that the next data release for agreement {nic} is "
                f"scheduled for {release.day} {release:%B %Y},\n"
                f"{self.config.reminder_days_before} days from today.\n\n"
                f"Changes to your cohort made after the extract is due may be charged.\n{sign}"
            )
        else:  # pragma: no cover - the queue holds only the kinds above
            raise ValueError(f"unknown mail kind {kind!r}")
        return msg

    def _attach_report(self, msg: EmailMessage, failed: dict[str, tuple[str, str, str]]) -> None:
        out = io.StringIO(newline="")
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(
            ["UNIQUE_REFERENCE", "NHS_NO", "DATE_OF_BIRTH", "ERROR_CATEGORY", "ERROR_DESCRIPTION"]
        )
        for ref, (nhs, dob, code) in sorted(failed.items()):
            writer.writerow([ref, nhs, dob, code, CATEGORY_TEXT.get(code, code)])
        day = nhs_day(self.clock.now())
        msg.add_attachment(
            out.getvalue().encode("ascii", errors="replace"),
            maintype="text",
            subtype="csv",
            filename=f"Cohort-Data-Validation-Errors_{self.config.nic}_{day:%Y%m%d}.csv",
        )

    # -- views ------------------------------------------------------------------------------
    def files_placed(self) -> dict[str, str]:
        """Every returned file placed so far: name -> SHA-256."""
        return {p.name: p.sha256 for p in self.placed}

    def working_day(self, day: date) -> bool:
        return is_working_day(day, self.holidays)


def mangle(raw: bytes) -> bytes:
    """A broken copy of a message: multipart headers with a boundary that never comes and
    the body cut short (what a relay that truncates mail delivers)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    kept: list[bytes] = []
    skipping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.lower().startswith((b"content-type:", b"content-transfer-encoding:"))
        if not skipping:
            kept.append(line)
    kept.append(b'Content-Type: multipart/mixed; boundary="=sandbox-missing-boundary="')
    return b"\r\n".join(kept) + b"\r\n\r\n" + body[: len(body) // 3]
