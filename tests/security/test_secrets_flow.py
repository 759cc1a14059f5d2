"""Secrets, private files and clear text through a realistic run of the whole loop.

One site, all real servers on loopback, every credential a distinctive value: an upload
to SEFT over SFTP (password), NHS England's "new data" mail fetched over IMAP (password),
the returned files collected from SEFT and forwarded to the partner's SFTP (another
password) in an archive whose passphrase goes by SMTP (AUTH over STARTTLS), then the
operator's commands (`status`, `digest`, `digest --send`, `check --connect` with a wrong
password), then the retention period and cleaning. Afterwards:

- no secret appears in the service's log, the commands' stdout/stderr, any mail to the
  operator, the SQLite ledger's bytes or any file under the state directory or outbox
  (the passphrase appears in exactly one place: the passphrase mail);
- every file under the state directory and the outbox is 0600 and every directory 0700;
- the archive at the partner's shows no member name without the passphrase;
- after cleaning, no returned clear text is left anywhere under the state directory.
"""

from __future__ import annotations

import io
import logging
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import py7zr
import pytest

from seftpilot.adapters.clock import FakeClock
from seftpilot.adapters.delivery_store import DeliveryStore
from seftpilot.adapters.ledger_store import RefRow
from seftpilot.cli import run
from seftpilot.config import load_settings
from seftpilot.core.synthetic import synthetic_nhs_numbers
from seftpilot.logs import configure_logging
from seftpilot.sandbox.servers import SftpServer
from seftpilot.service.assemble import run_once
from seftpilot.service.runtime import Runtime
from seftpilot.service.submit import submit_next
from tests.fixtures.imap_server import ImapTestServer
from tests.fixtures.site_config import imap_table, sftp_table, site_config, smtp_table
from tests.fixtures.smtp_server import SmtpServer
from tests.fixtures.tls import TlsFiles
from tests.integration.forward_support import returned_csv

REPO = Path(__file__).resolve().parents[2]
NIC = "NIC-402963-P0Y5D"
OPERATOR = "operator@study.example"
KEYS = "keys@partner.example"
DATA = "data@partner.example"
# Distinctive values: any appearance anywhere is a leak, not a coincidence.
IMAP_SECRET = "imap-SECRET-7Qx9vZ2mK4"
SMTP_SECRET = "smtp-SECRET-3Hd8pL1wR6"
SEFT_SECRET = "seft-SECRET-9Tn2bY5cJ8"
PARTNER_SECRET = "partner-SECRET-4Gk7sE1uF3"
WRONG_SECRET = "wrong-SECRET-6Vm3qA8zN2"
SECRETS = (IMAP_SECRET, SMTP_SECRET, SEFT_SECRET, PARTNER_SECRET, WRONG_SECRET)
# Monday 2 March 2026, 10:00 London: inside the upload window.
START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
RETURNED = {f"NIC402963_HES_{i:03d}.csv": returned_csv(i) for i in (1, 2, 3)}


@dataclass
class Site:
    config: Path
    state: Path
    outbox: Path
    log: io.StringIO
    seft: SftpServer
    partner: SftpServer
    smtp: SmtpServer
    imap: ImapTestServer


@pytest.fixture
def site(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    imap_server_factory: Callable[..., ImapTestServer],
    smtp_server_factory: Callable[..., SmtpServer],
    test_ca: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Site]:
    imap = imap_server_factory(password=IMAP_SECRET)
    smtp = smtp_server_factory(tls=test_ca, auth=("sender", SMTP_SECRET))
    seft = SftpServer(tmp_path_factory.mktemp("seft"), password=SEFT_SECRET).start()
    partner = SftpServer(tmp_path_factory.mktemp("partner"), password=PARTNER_SECRET).start()
    for folder in ("upload", "download"):
        (seft.root / folder).mkdir()
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    config = site_config(
        site_dir,
        state_dir="state",
        rules=[REPO / "src/seftpilot/default_rules"],
        imap=imap_table(imap, password=None),  # from the environment, below
        smtp=smtp_table(smtp, security="starttls", username="sender", ca_file=test_ca.ca_file),
        operator={"emails": [OPERATOR]},
        canary={"enabled": False},
        partner={
            "passphrase_recipients": [KEYS],
            "announce_recipients": [DATA],
            "retention_days": 7,
            "backend": "py7zr",
            "sftp": sftp_table(partner),  # its password from the environment, below
        },
        agreement=[
            {
                "nic": NIC,
                "upload": {
                    "transport": "sftp",
                    "outbox": "outbox",
                    "sftp": sftp_table(seft, remote_dir="/upload", password=SEFT_SECRET),
                },
                "download": {
                    "source": "sftp",
                    "sftp": sftp_table(seft, remote_dir="/download", password=SEFT_SECRET),
                },
            }
        ],
    )
    # The operator keeps these passwords in the environment (.env), as the docs advise.
    monkeypatch.setenv("SEFTPILOT_IMAP__PASSWORD", IMAP_SECRET)
    monkeypatch.setenv("SEFTPILOT_SMTP__PASSWORD", SMTP_SECRET)
    monkeypatch.setenv("SEFTPILOT_PARTNER__SFTP__PASSWORD", PARTNER_SECRET)
    log = io.StringIO()
    configure_logging("DEBUG", stream=log)
    try:
        yield Site(config, site_dir / "state", site_dir / "outbox", log, seft, partner, smtp, imap)
    finally:
        logging.getLogger("seftpilot").handlers.clear()
        seft.stop()
        partner.stop()


def _rows(count: int) -> list[RefRow]:
    return [
        RefRow(
            f"S-{i:05d}",
            nhs,
            {"UNIQUE_REFERENCE": f"S-{i:05d}", "NHS_NO": nhs, "DATE_OF_BIRTH": "19800101"},
        )
        for i, nhs in enumerate(synthetic_nhs_numbers(count, seed=5), start=1)
    ]


def _files(*roots: Path) -> list[Path]:
    return sorted(p for root in roots if root.exists() for p in root.rglob("*") if p.is_file())


def _scan(label: str, data: bytes, secrets: tuple[str, ...]) -> None:
    for secret in secrets:
        assert secret.encode() not in data, f"{secret!r} leaked into {label}"


def test_a_whole_run_leaks_no_secret_and_leaves_nothing_readable(
    site: Site, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(site.config)
    clock = FakeClock(START)
    runtime = Runtime(settings, clock)
    try:
        # 1. Submit: the cohort file goes to SEFT over SFTP (password auth).
        agreement = settings.agreement[0]
        runtime.ledger.create_submission(NIC, "ADD", _rows(25), at=clock.now(), state="due")
        outcome = submit_next(runtime, agreement)
        assert [p.name for p in (site.seft.root / "upload").iterdir()], outcome

        # 2. NHS England returns files and says so by mail; the service listens and forwards.
        for name, data in RETURNED.items():
            (site.seft.root / "download" / name).write_bytes(data)
        site.imap.append((REPO / "sample_mail" / "new-data-plain.eml").read_bytes())
        deliveries = DeliveryStore(runtime.store)
        for _ in range(30):
            run_once(runtime)
            found = deliveries.list_deliveries()
            if found and found[0].state == "announced":
                break
            clock.advance(2)
        (delivery,) = deliveries.list_deliveries()
        assert delivery.state == "announced", delivery.last_error
        work = Path(delivery.work_dir)
        keys_mail = [m.message for m in site.smtp.messages if KEYS in str(m.message["To"])]
        (passphrase_mail,) = keys_mail
        passphrase_id = passphrase_mail["Message-ID"]
        body = passphrase_mail.get_content()
        passphrase = next(ln.strip() for ln in body.splitlines() if ln.startswith("    "))

        # 3. The archive at the partner's hides its member names without the passphrase.
        (archive,) = [p for p in site.partner.root.iterdir() if p.suffix == ".7z"]
        raw_archive = archive.read_bytes()
        for name in RETURNED:
            assert name.encode() not in raw_archive
            assert name.encode("utf-16-le") not in raw_archive  # 7z stores names in UTF-16
        with pytest.raises(Exception), py7zr.SevenZipFile(archive, "r") as locked:  # noqa: B017
            locked.list()

        # 4. Private while kept: 0600 files, 0700 directories (state dir, outbox, work dirs).
        roots = [r for r in (site.state, site.outbox) if r.exists()]  # outbox: manual only
        for path in [*roots, *(p for r in roots for p in r.rglob("*"))]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
        assert work.is_dir() and site.state in work.parents

        # 5. The operator's commands.
        early = capfd.readouterr()
        assert run(["status", "--json", "--config", str(site.config)]) in (0, 1)
        assert run(["status", "--config", str(site.config)]) in (0, 1)
        assert run(["digest", "--config", str(site.config)]) in (0, 1)
        assert run(["digest", "--send", "--config", str(site.config)]) in (0, 1)
        # A wrong password: refused, and the refusal does not quote it.
        monkeypatch.setenv("SEFTPILOT_SMTP__PASSWORD", WRONG_SECRET)
        assert run(["check", "--connect", "--config", str(site.config)]) != 0
        monkeypatch.setenv("SEFTPILOT_SMTP__PASSWORD", SMTP_SECRET)
        commands = capfd.readouterr()
        assert "smtp" in (commands.out + commands.err).lower()

        # 6. Retention over: cleaned.
        clock.advance(timedelta(days=8))
        for _ in range(5):
            run_once(runtime)
            clock.advance(2)
        assert deliveries.get(delivery.id).state == "cleaned"
        assert not work.exists()
    finally:
        runtime.close()

    everything = (*SECRETS, passphrase)
    assert "delivery" in site.log.getvalue()  # the log did capture the run
    _scan("the service log", site.log.getvalue().encode(), everything)
    late = capfd.readouterr()
    for label, out in (("setup", early), ("commands", commands), ("cleaning", late)):
        _scan(f"stdout/stderr ({label})", (out.out + out.err).encode(), everything)
    for mail in site.smtp.messages:
        # The passphrase mail is the one place the passphrase belongs.
        secrets = SECRETS if mail.message["Message-ID"] == passphrase_id else everything
        _scan(f"mail {mail.message['Subject']!r}", mail.message.as_bytes(), secrets)
    assert any(OPERATOR in m.rcpt_tos for m in site.smtp.messages)  # the digest went
    for path in _files(site.state, site.outbox):
        _scan(str(path), path.read_bytes(), everything)
        # Cleaned: no returned clear text left anywhere in the state directory.
        for data in RETURNED.values():
            assert data[60:160] not in path.read_bytes(), f"clear text left in {path}"
    assert passphrase not in site.log.getvalue()
