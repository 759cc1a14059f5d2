"""A scan of every connection the service makes, as `seftpilot check --connect` makes them:
TLS (IMAP, SMTP) is accepted only when the server's CA is configured, and SFTP (SEFT's
upload and download areas, the partner's drop) only when the server's host key is pinned.
An untrusted certificate, an unknown host key or a changed one is refused, every time,
naming the server; nothing falls back to plain text or accepts a key on first use.

(The adapters' own tests prove each refusal in detail; this scan proves no endpoint the
settings can name escapes it.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from seftpilot.config import Settings
from seftpilot.sandbox.servers import known_hosts_line, write_key_pair
from seftpilot.service.checks import run_checks
from tests.fixtures.imap_server import ImapTestServer
from tests.fixtures.sftp_server import InProcessSftpServer
from tests.fixtures.smtp_server import SmtpServer
from tests.fixtures.tls import TlsFiles

NIC = "NIC-402963-P0Y5D"


def _settings(
    tmp: Path,
    imap: ImapTestServer,
    smtp: SmtpServer,
    sftp: InProcessSftpServer,
    *,
    ca_file: Path | None,
    known_hosts: Path,
) -> Settings:
    endpoint = sftp.endpoint(known_hosts=known_hosts)
    return Settings(
        state_dir=tmp / "state",
        imap=imap.settings(ca_file=ca_file),
        smtp=smtp.settings(ca_file=ca_file),
        agreement=[
            {
                "nic": NIC,
                "upload": {"transport": "sftp", "sftp": endpoint},
                "download": {"source": "sftp", "sftp": endpoint},
            }
        ],
        partner={"sftp": endpoint, "passphrase_recipients": ["keys@partner.example"]},
        operator={"emails": ["operator@study.example"]},
        canary={"enabled": False},
    )


def _connects(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    by_name = {c["name"]: c for c in report["checks"]}
    return {
        name: check
        for name, check in by_name.items()
        if any(k in name.lower() for k in ("imap", "smtp", "upload", "download", "partner"))
    }


@pytest.fixture
def servers(
    imap_server_factory: Callable[..., ImapTestServer],
    smtp_server_factory: Callable[..., SmtpServer],
    sftp_server: InProcessSftpServer,
    test_ca: TlsFiles,
) -> tuple[ImapTestServer, SmtpServer, InProcessSftpServer]:
    imap = imap_server_factory(security="tls", tls=test_ca)
    smtp = smtp_server_factory(tls=test_ca, auth=("sender", "s3cret-pw"))
    return imap, smtp, sftp_server


def test_configured_trust_connects_everywhere(
    tmp_path: Path,
    servers: tuple[ImapTestServer, SmtpServer, InProcessSftpServer],
    test_ca: TlsFiles,
) -> None:
    imap, smtp, sftp = servers
    cfg = _settings(
        tmp_path, imap, smtp, sftp, ca_file=test_ca.ca_file, known_hosts=sftp.known_hosts
    )
    checks = _connects(run_checks(cfg, connect=True))
    assert len(checks) == 5, checks  # imap, smtp, SEFT upload + download, partner drop
    assert all(c["ok"] for c in checks.values()), checks


@pytest.mark.parametrize("trust", ["no CA", "another CA"])
def test_tls_without_the_servers_ca_is_refused(
    tmp_path: Path,
    servers: tuple[ImapTestServer, SmtpServer, InProcessSftpServer],
    untrusted_ca: TlsFiles,
    trust: str,
) -> None:
    imap, smtp, sftp = servers
    ca = None if trust == "no CA" else untrusted_ca.ca_file
    cfg = _settings(tmp_path, imap, smtp, sftp, ca_file=ca, known_hosts=sftp.known_hosts)
    checks = _connects(run_checks(cfg, connect=True))
    tls = {n: c for n, c in checks.items() if "imap" in n.lower() or "smtp" in n.lower()}
    assert len(tls) == 2, checks
    for name, check in tls.items():
        assert not check["ok"], name
        assert "certificate" in check["detail"].lower(), check
        server = f"{imap.port}" if "imap" in name.lower() else f"{smtp.port}"
        assert server in check["detail"], check


@pytest.mark.parametrize("pin", ["unknown host", "changed key", "empty file"])
def test_sftp_without_the_pinned_key_is_refused_everywhere(
    tmp_path: Path,
    servers: tuple[ImapTestServer, SmtpServer, InProcessSftpServer],
    test_ca: TlsFiles,
    pin: str,
) -> None:
    imap, smtp, sftp = servers
    known = tmp_path / "known_hosts"
    other, _ = write_key_pair(tmp_path, "other_key")
    if pin == "unknown host":  # a pin for another port only
        known.write_text(known_hosts_line(sftp.host, sftp.port + 1, sftp.host_key))
    elif pin == "changed key":
        known.write_text(known_hosts_line(sftp.host, sftp.port, other))
    else:
        known.write_text("")
    pinned = known.read_text()
    cfg = _settings(tmp_path, imap, smtp, sftp, ca_file=test_ca.ca_file, known_hosts=known)
    checks = _connects(run_checks(cfg, connect=True))
    ssh = {n: c for n, c in checks.items() if "imap" not in n.lower() and "smtp" not in n.lower()}
    assert len(ssh) == 3, checks  # SEFT upload, SEFT download, partner drop
    for name, check in ssh.items():
        assert not check["ok"], name
        assert "host key" in check["detail"].lower(), check
        assert str(sftp.port) in check["detail"], check
    # Nothing was learnt: the known_hosts file is as the operator wrote it.
    assert known.read_text() == pinned
