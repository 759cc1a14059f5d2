"""Helpers shared by the monitoring tests (tests/integration/test_monitor*.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from seftpilot.adapters.clock import FakeClock
from seftpilot.config import Settings
from seftpilot.service.runtime import Runtime
from tests.fixtures.smtp_server import SmtpServer

NIC = "NIC-402963-P0Y5D"
OPERATOR = "ops@study.example"
MAILBOX = "study@example.org"
# Monday 2 March 2026, 08:00 UTC (= London, GMT).
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def make_settings(tmp_path: Path, server: SmtpServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "state_dir": tmp_path / "state",
        "smtp": server.settings(),
        "operator": {"emails": [OPERATOR]},
        "imap": {"host": "127.0.0.1", "username": MAILBOX, "idle": False},
        "agreement": [{"nic": NIC}],
    }
    values.update(overrides)
    return Settings(**values)


def make_runtime(
    tmp_path: Path, server: SmtpServer, clock: FakeClock | None = None, **overrides: Any
) -> Runtime:
    return Runtime(make_settings(tmp_path, server, **overrides), clock or FakeClock(T0))


def mails_to(smtp: SmtpServer, address: str = OPERATOR) -> list[EmailMessage]:
    return [m.message for m in smtp.messages if address in m.rcpt_tos]


def alert_mails(smtp: SmtpServer) -> list[EmailMessage]:
    return [m for m in mails_to(smtp) if m["X-Seftpilot-Alert"]]


def body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]
