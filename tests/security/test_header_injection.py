"""Header injection: text a sender controls (subjects, names, captures) reaches alert mails;
a CR or LF in it must never become a header line of its own, nor a recipient.

Pure property (thousands of inputs): the subject ``core.alerts.compose`` builds is one line
without control characters. Real path: alerts raised with hostile text go through the
real SMTP server, and the mail that arrives has exactly seftpilot's headers and goes to
the operator only; a hostile NHS-looking mail fetched over IMAP and classified by the
default rules reaches the operator the same way, and its attachment names (``../..``,
absolute paths) never become files.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seftpilot.adapters.clock import FakeClock
from seftpilot.adapters.rules_files import default_rules_path
from seftpilot.config import Settings
from seftpilot.core.alerts import OutgoingItem, clean_text, compose
from seftpilot.service import alerts
from seftpilot.service.assemble import run_once
from seftpilot.service.runtime import Runtime
from tests.fixtures.imap_server import ImapTestServer
from tests.fixtures.smtp_server import SmtpServer

OPERATOR = "operator@study.example"
START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
EXPECTED_HEADERS = {
    "to",
    "subject",
    "from",
    "date",
    "message-id",
    "auto-submitted",
    "x-auto-response-suppress",
    "x-seftpilot-alert",
    "content-type",
    "content-transfer-encoding",
    "mime-version",
}
hostile_text = st.lists(
    st.one_of(
        st.sampled_from(["\r", "\n", "\r\n", "\x00", "\x1b", "\u2028", "\u202e", ":", " "]),
        st.sampled_from(["Bcc: evil@attacker.example", "X-Injected: yes", "To: x@y"]),
        st.characters(),
    ),
    max_size=20,
).map("".join)


@settings(max_examples=2000, deadline=None)
@given(st.lists(hostile_text, min_size=1, max_size=3), hostile_text)
def test_composed_subjects_are_one_clean_line(subjects: list[str], text: str) -> None:
    items = [
        OutgoingItem(f"k{i}", "raised", "high", s, text, START) for i, s in enumerate(subjects)
    ]
    mail = compose(items)
    assert not _controls(mail.subject), repr(mail.subject)
    assert len(mail.subject) <= 200
    body = clean_text(text)
    assert "\r" not in body and not any(_controls(line) for line in body.split("\n"))


def _controls(text: str) -> list[str]:
    """Line breaks, control and format characters (what could end or fake a line)."""
    return [c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")]


@pytest.fixture
def runtime(
    tmp_path: Path, imap_server: ImapTestServer, smtp_server: SmtpServer
) -> Iterator[Runtime]:
    cfg = Settings(
        state_dir=tmp_path / "state",
        imap=imap_server.settings(),
        rules=[default_rules_path()],
        smtp=smtp_server.settings(),
        operator={"emails": [OPERATOR]},
        canary={"enabled": False},
        agreement=[{"nic": "NIC-402963-P0Y5D"}],
    )
    rt = Runtime(cfg, FakeClock(START))
    try:
        yield rt
    finally:
        rt.close()


def _check_arrived(smtp: SmtpServer) -> None:
    assert smtp.messages
    for got in smtp.messages:
        assert list(got.rcpt_tos) == [OPERATOR]
        parsed = message_from_bytes(got.message.as_bytes(), policy=policy.default)
        names = {k.lower() for k in parsed}
        assert names <= EXPECTED_HEADERS, names - EXPECTED_HEADERS
        for name, value in parsed.items():
            assert "\n" not in str(value) and "\r" not in str(value), (name, value)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(subject=hostile_text, text=hostile_text)
def test_hostile_alert_text_never_makes_a_header(
    runtime: Runtime, smtp_server: SmtpServer, subject: str, text: str
) -> None:
    smtp_server.messages.clear()
    runtime.clock.advance(3600)  # type: ignore[attr-defined]  # past the hourly mail cap
    alerts.raise_alert(runtime, f"k-{subject!r}-{text!r}", subject + "x", text, severity="high")
    _check_arrived(smtp_server)


HOSTILE_MAIL = (
    b"From: =?utf-8?Q?NHS=0D=0ABcc:_evil@attacker.example?= <dars@nhs.net>\r\n"
    b"To: study@example.org\r\n"
    b"Subject: =?utf-8?Q?Cohort_validation_failed=0D=0ABcc:_evil@attacker.example?=\r\n"
    b"Message-ID: <hostile@nhs.net>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
    b"--B\r\nContent-Type: text/plain\r\n\r\n"
    b"Your file NIC-402963-P0Y5D failed validation.\r\n"
    b"Reason: bad\rBcc: evil@attacker.example\x1b[2J\r\n"
    b'--B\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename="../../evil.csv"'
    b"\r\n\r\nNHS_NO\r\n9990000018\r\n"
    b"--B\r\nContent-Type: text/csv\r\n"
    b'Content-Disposition: attachment; filename="/tmp/abs-evil.csv"\r\n\r\nx\r\n--B--\r\n'
)


def test_a_hostile_mail_reaches_the_operator_without_injecting(
    tmp_path: Path, runtime: Runtime, imap_server: ImapTestServer, smtp_server: SmtpServer
) -> None:
    before = set(Path("/tmp").glob("abs-evil*"))
    imap_server.append(HOSTILE_MAIL)
    report = run_once(runtime)
    assert report["mail"] == {"fetched": 1, "handled": 1, "failed": 0}, report
    _check_arrived(smtp_server)
    # The attachment names were data, never paths: nothing written under them.
    assert not list(tmp_path.parent.rglob("evil.csv"))
    assert set(Path("/tmp").glob("abs-evil*")) == before
