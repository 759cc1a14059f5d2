"""The sandbox world: the embedded servers, the mail router and the NHS England simulator,
wired together under one directory, plus the settings that point seftpilot at them.

Owns the layout of a sandbox directory (everything 0700/0600 under ``base``)::

    base/imap, smtp        (in memory; nothing on disk)
    base/seft-upload/root  SEFT's upload area (the NIC's "Cohort Submitter" account)
    base/seft-download/root  SEFT's download area (the NIC's download account)
    base/partner/root      the partner's drop (its router takes ``isaric-*``)
    base/nhs/              what the simulator collected from the upload area
    base/known_hosts       the three SFTP host keys, pinned

Mail: the SMTP server files every message by recipient into one IMAP account: the
watched mailbox's address -> ``INBOX`` (NHS mail, canaries), the operator's ->
``Operator`` (alerts, digests), the partner contacts' -> ``Partner`` (passphrase,
announcement), anything else -> ``Other``; each is dated by the sandbox clock (the
service dates mail by the IMAP internal date). ``MailRouter.drop`` loses mail on purpose.

Must not listen beyond loopback or hold real data: only synthetic participants.
"""

from __future__ import annotations

import json
import re
import secrets
import smtplib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from seftpilot.adapters.clock import Clock, SystemClock
from seftpilot.adapters.holidays_source import bank_holidays
from seftpilot.adapters.rules_files import default_rules_path
from seftpilot.config import Settings
from seftpilot.sandbox.servers import (
    LOOPBACK,
    ImapServer,
    ReceivedMail,
    SftpServer,
    SmtpServer,
)
from seftpilot.sandbox.simulator import NhsSimulator, SimulatorConfig

DEFAULT_NIC = "NIC-402963-P0Y5D"
WATCHED = "linkage@study.example"
OPERATOR = "data-manager@study.example"
PARTNER_CONTACTS = ("contact-one@partner.example", "contact-two@partner.example")
SERVICE_FROM = "seftpilot@study.example"
CANARY_HEADER = b"x-seftpilot-canary:"
PASSPHRASE_RE = re.compile(r"^\s+([A-Z2-7]{4}(?:-[A-Z2-7]{4}){6})\s*$", re.MULTILINE)
FOLDERS = ("INBOX", "Operator", "Partner", "Other")


@dataclass(frozen=True)
class Filed:
    """A message the router filed (or dropped), as an operator would find it."""

    folder: str
    at: datetime
    raw: bytes
    dropped: bool = False

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def subject(self) -> str:
        return str(self.message.get("Subject", ""))


@dataclass
class MailRouter:
    """The SMTP server's delivery hook: files each message into the IMAP account."""

    clock: Clock
    watched: str
    operators: tuple[str, ...]
    partners: tuple[str, ...]
    imap: ImapServer | None = None
    rules: list[Callable[[ReceivedMail], bool]] = field(default_factory=list)
    filed: list[Filed] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def folder_for(self, rcpt: str) -> str:
        rcpt = rcpt.lower()
        if rcpt == self.watched.lower():
            return "INBOX"
        if rcpt in (a.lower() for a in self.operators):
            return "Operator"
        if rcpt in (a.lower() for a in self.partners):
            return "Partner"
        return "Other"

    def drop(self, rule: Callable[[ReceivedMail], bool]) -> None:
        """Lose every later message ``rule`` matches (a quarantine, a broken relay)."""
        with self.lock:
            self.rules.append(rule)

    def drop_canaries(self) -> None:
        self.drop(lambda mail: CANARY_HEADER in mail.content.lower().partition(b"\r\n\r\n")[0])

    def heal(self) -> None:
        with self.lock:
            self.rules.clear()

    def __call__(self, mail: ReceivedMail) -> None:
        now = self.clock.now()
        folders = list(dict.fromkeys(self.folder_for(r) for r in mail.rcpt_tos))
        with self.lock:
            lost = any(rule(mail) for rule in self.rules)
        for folder in folders:
            if not lost and self.imap is not None:
                self.imap.append(mail.content, folder=folder, when=now)
            with self.lock:
                self.filed.append(Filed(folder, now, mail.content, dropped=lost))

    def in_folder(self, folder: str, *, include_dropped: bool = False) -> list[Filed]:
        with self.lock:
            return [
                f for f in self.filed if f.folder == folder and (include_dropped or not f.dropped)
            ]


@dataclass(frozen=True)
class ConfigFiles:
    toml: Path
    env: Path
    known_hosts: Path


class Sandbox:
    """Servers + router + simulator under ``base`` (module docstring). Use as a context
    manager, or ``start()`` / ``stop()``."""

    def __init__(
        self,
        base: Path,
        *,
        clock: Clock | None = None,
        simulator: SimulatorConfig | None = None,
        nic: str = DEFAULT_NIC,
    ) -> None:
        self.base = base
        self.clock = clock or SystemClock()
        self.nic = nic
        self.sim_config = simulator or SimulatorConfig(nic=nic, to=WATCHED)
        self.imap_password = secrets.token_urlsafe(18)
        self.router = MailRouter(self.clock, WATCHED, (OPERATOR,), PARTNER_CONTACTS)
        self._started: list[Any] = []
        self.imap: ImapServer
        self.smtp: SmtpServer
        self.seft_upload: SftpServer
        self.seft_download: SftpServer
        self.partner: SftpServer
        self.simulator: NhsSimulator

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Sandbox:
        self.base.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.base.chmod(0o700)
        try:
            self.imap = self._keep(
                ImapServer(username=WATCHED, password=self.imap_password).start()
            )
            self.router.imap = self.imap
            for folder in FOLDERS[1:]:
                self.imap.folder_uids(folder)  # created empty, so an operator sees them
            self.smtp = self._keep(SmtpServer(deliver_to=self.router))
            self.seft_upload = self._keep(
                SftpServer(self.base / "seft-upload", username=f"{self.nic}-up").start()
            )
            self.seft_download = self._keep(
                SftpServer(self.base / "seft-download", username=f"{self.nic}-down").start()
            )
            self.partner = self._keep(SftpServer(self.base / "partner", username="isaric").start())
        except BaseException:
            self.stop()
            raise
        self.known_hosts = self.base / "known_hosts"
        self.known_hosts.write_text(
            "".join(
                s.known_hosts.read_text()
                for s in (self.seft_upload, self.seft_download, self.partner)
            )
        )
        now = self.clock.now()
        self.simulator = NhsSimulator(
            self.sim_config,
            self.clock,
            upload_dir=self.seft_upload.root,
            download_dir=self.seft_download.root,
            send=self.send_as_nhs,
            holidays=bank_holidays(range(now.year - 1, now.year + 3)),
            work_dir=self.base / "nhs",
        )
        return self

    def _keep(self, server: Any) -> Any:
        self._started.append(server)
        return server

    def stop(self) -> None:
        for server in reversed(self._started):
            server.stop()
        self._started.clear()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def drop_connections(self) -> int:
        """Reset every client connection to every server at once (a NAT timeout, a
        restart on the far side); returns how many were cut."""
        servers = (self.seft_upload, self.seft_download, self.partner)
        return self.imap.drop_connections() + sum(s.drop_connections() for s in servers)

    # -- NHS England's outgoing mail -----------------------------------------------------------
    def send_as_nhs(self, raw: bytes) -> None:
        with smtplib.SMTP(LOOPBACK, self.smtp.port, timeout=10) as client:
            client.sendmail(self.sim_config.sender, [self.sim_config.to], raw)

    # -- seftpilot's view ----------------------------------------------------------------------
    def settings_values(self, state_dir: Path | None = None) -> dict[str, Any]:
        """Settings (as plain values) that point seftpilot at this sandbox."""
        return {
            "state_dir": state_dir or self.base / "state",
            "rules": [default_rules_path()],
            "imap": {
                "host": LOOPBACK,
                "port": self.imap.port,
                "security": "plain",
                "username": WATCHED,
                "password": SecretStr(self.imap_password),
                "timeout_seconds": 10.0,
            },
            "smtp": {
                "host": LOOPBACK,
                "port": self.smtp.port,
                "security": "plain",
                "from_address": SERVICE_FROM,
                "timeout_seconds": 10.0,
            },
            "operator": {"emails": [OPERATOR]},
            "agreement": [
                {
                    "nic": self.nic,
                    "profile": self.sim_config.profile,
                    "upload": {
                        "transport": "sftp",
                        "sftp": self._endpoint(self.seft_upload),
                    },
                    "download": {"source": "sftp", "sftp": self._endpoint(self.seft_download)},
                }
            ],
            "partner": {
                "sftp": self._endpoint(self.partner),
                "passphrase_recipients": list(PARTNER_CONTACTS),
                "announce_recipients": [PARTNER_CONTACTS[0]],
            },
        }

    def _endpoint(self, server: SftpServer) -> dict[str, Any]:
        return {
            "host": LOOPBACK,
            "port": server.port,
            "username": server.username,
            "key_file": server.client_key_file,
            "known_hosts": self.known_hosts,
            "remote_dir": "/",
            "timeout_seconds": 10.0,
        }

    def settings(self, state_dir: Path | None = None, **overrides: Any) -> Settings:
        """Settings for an in-process service; neither the environment's ``.env`` nor a
        settings file is read (explicit values win over ``SEFTPILOT_*`` as well)."""
        values = self.settings_values(state_dir)
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    def write_config(self, directory: Path) -> ConfigFiles:
        """A ready-to-use ``seftpilot.toml`` + ``.env`` (0600, the IMAP password) in
        ``directory``, for ``seftpilot watch --config``."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        values = self.settings_values(directory / "state")
        values["imap"].pop("password")

        def q(value: Any) -> str:
            if isinstance(value, bool):
                return "true" if value else "false"
            if isinstance(value, int | float):
                return str(value)
            if isinstance(value, list):
                return "[" + ", ".join(q(v) for v in value) + "]"
            return json.dumps(str(value))

        def table(name: str, section: dict[str, Any]) -> list[str]:
            lines = [f"[{name}]"]
            nested = []
            for key, value in section.items():
                if isinstance(value, dict):
                    nested.append((f"{name}.{key}", value))
                else:
                    lines.append(f"{key} = {q(value)}")
            out = [*lines, ""]
            for sub, inner in nested:
                out += table(sub, inner)
            return out

        agreement = values["agreement"][0]
        lines = [
            "# Written by `seftpilot sandbox up`: every server below runs on this machine's",
            "# loopback interface, holds synthetic data only, and is gone when it stops.",
            "# The IMAP password is in .env beside this file, where seftpilot reads it.",
            f"state_dir = {q(values['state_dir'])}",
            f"rules = {q(values['rules'])}",
            "",
            *table("imap", values["imap"]),
            *table("smtp", values["smtp"]),
            *table("operator", values["operator"]),
            "[submission]",
            "# Rehearsal: uploads at any hour of a working day (a real site keeps 09:00-16:00).",
            "upload_window_start = 00:00:00",
            "upload_window_end = 23:59:00",
            "",
            "[[agreement]]",
            f"nic = {q(agreement['nic'])}",
            f"profile = {q(agreement['profile'])}",
            "",
            *table("agreement.upload", agreement["upload"]),
            *table("agreement.download", agreement["download"]),
            *table("partner", values["partner"]),
        ]
        toml = directory / "seftpilot.toml"
        toml.write_text("\n".join(lines))
        toml.chmod(0o600)
        env = directory / ".env"
        env.touch(mode=0o600)
        env.chmod(0o600)
        env.write_text(f"SEFTPILOT_IMAP__PASSWORD={self.imap_password}\n")
        return ConfigFiles(toml, env, self.known_hosts)

    # -- what an operator or a partner would find ----------------------------------------------
    def mail(self, folder: str) -> list[Filed]:
        return self.router.in_folder(folder)

    def passphrases(self) -> dict[int, str]:
        """Delivery id -> passphrase, read from the mail the partner's contacts got
        (sandbox only: this is exactly the secret the real service never shows)."""
        found: dict[int, str] = {}
        for filed in self.mail("Partner"):
            message = filed.message
            delivery = message.get("X-Seftpilot-Delivery")
            body = message.get_body(("plain",))
            if delivery is None or body is None:
                continue
            match = PASSPHRASE_RE.search(str(body.get_content()))
            if match:
                found.setdefault(int(str(delivery)), match.group(1))
        return found

    def partner_files(self) -> list[Path]:
        """What the partner's router would pick up (``isaric-*``), by name."""
        return sorted(p for p in self.partner.root.iterdir() if p.name.startswith("isaric-"))
