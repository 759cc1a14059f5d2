"""Shared set-up for the forward tests: two real SFTP servers (SEFT's download area and the
partner's drop), a real SMTP server, a fake clock, synthetic returned files."""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import py7zr

from seftpilot.adapters.clock import FakeClock
from seftpilot.adapters.delivery_store import Delivery, DeliveryStore
from seftpilot.config import Settings
from seftpilot.core.synthetic import synthetic_nhs_numbers
from seftpilot.service.runtime import Runtime
from tests.fixtures.sftp_server import InProcessSftpServer
from tests.fixtures.smtp_server import SmtpServer

NIC = "NIC-402963-P0Y5D"
OPERATOR = "operator@study.example"
KEYS = "keys@partner.example"
DATA = "data@partner.example"
# Wednesday 2 July 2025, 15:30 London (BST): the day the sample new-data mail came.
START = datetime(2025, 7, 2, 14, 30, tzinfo=UTC)


def returned_csv(index: int, rows: int = 40) -> bytes:
    """A synthetic returned file: NHS numbers from the 999 range, made-up events."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["UNIQUE_REFERENCE", "NHS_NO", "EVENT_DATE", "CODE"])
    for n, nhs in enumerate(synthetic_nhs_numbers(rows, seed=index), start=1):
        writer.writerow([f"S-{index:03d}-{n:04d}", nhs, f"2024-0{1 + n % 9}-1{n % 9}", f"X{n}"])
    return out.getvalue().encode("ascii")


def put_files(folder: Path, count: int, *, start: int = 1) -> dict[str, bytes]:
    files = {f"NIC402963_HES_{i:03d}.csv": returned_csv(i) for i in range(start, start + count)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


@dataclass
class World:
    tmp: Path
    clock: FakeClock
    settings: Settings
    runtime: Runtime
    seft: InProcessSftpServer
    partner: InProcessSftpServer
    smtp: SmtpServer

    def restart(self) -> Runtime:
        """A new process on the same state directory (what a crash and restart leave)."""
        self.runtime.close()
        self.runtime = Runtime(self.settings, self.clock)
        return self.runtime

    @property
    def store(self) -> DeliveryStore:
        return DeliveryStore(self.runtime.store)

    def only_delivery(self) -> Delivery:
        found = self.store.list_deliveries()
        assert len(found) == 1, found
        return found[0]

    def partner_names(self) -> list[str]:
        return sorted(p.name for p in self.partner.root.iterdir())

    def mails(self, to: str | None = None) -> list[EmailMessage]:
        got = [m.message for m in self.smtp.messages]
        return [m for m in got if to is None or to in str(m["To"])]

    def passphrase_from_mail(self) -> str:
        (mail,) = self.mails(KEYS)
        body = mail.get_content()
        lines = [ln.strip() for ln in body.splitlines() if ln.startswith("    ")]
        assert len(lines) == 1, body
        return lines[0]


def make_settings(
    tmp: Path,
    seft: InProcessSftpServer,
    partner: InProcessSftpServer,
    smtp: SmtpServer,
    *,
    source: str = "sftp",
    download: dict[str, Any] | None = None,
    partner_extra: dict[str, Any] | None = None,
) -> Settings:
    dl: dict[str, Any] = {"source": source, "drop_folder": tmp / "drop"}
    if source == "sftp":
        dl["sftp"] = seft.endpoint()
    dl.update(download or {})
    return Settings(
        state_dir=tmp / "state",
        agreement=[{"nic": NIC, "download": dl}],
        partner={
            "sftp": partner.endpoint(),
            "passphrase_recipients": [KEYS],
            "announce_recipients": [DATA],
            "retention_days": 7,
            "backend": "py7zr",
            **(partner_extra or {}),
        },
        smtp=smtp.settings(),
        operator={"emails": [OPERATOR]},
        canary={"enabled": False},
    )


@contextmanager
def running_world(
    tmp: Path,
    seft_base: Path,
    partner: InProcessSftpServer,
    smtp: SmtpServer,
    **options: Any,
) -> Iterator[World]:
    """A world whose SEFT download area is a second in-process SFTP server."""
    seft = InProcessSftpServer(seft_base)
    seft.start()
    try:
        world = make_world(tmp, seft, partner, smtp, **options)
        try:
            yield world
        finally:
            world.runtime.close()
    finally:
        seft.stop()


def make_world(
    tmp: Path,
    seft: InProcessSftpServer,
    partner: InProcessSftpServer,
    smtp: SmtpServer,
    **options: Any,
) -> World:
    (tmp / "drop").mkdir(exist_ok=True)
    settings = make_settings(tmp, seft, partner, smtp, **options)
    clock = FakeClock(START)
    return World(tmp, clock, settings, Runtime(settings, clock), seft, partner, smtp)


def open_archive(path: Path, passphrase: str) -> dict[str, bytes]:
    """Every member of the archive, read with ``passphrase`` (small test files only)."""
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp)
        with py7zr.SevenZipFile(path, "r", password=passphrase) as archive:
            archive.extractall(path=target)
        for member in sorted(target.iterdir()):
            out[member.name] = member.read_bytes()
    return out


def state_bytes(settings: Settings) -> bytes:
    """The ledger's files as bytes (database, WAL), to scan for secrets."""
    state = Path(settings.state_dir)
    return b"".join(p.read_bytes() for p in sorted(state.glob("seftpilot.sqlite3*")))
