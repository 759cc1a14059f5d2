"""The checks that capabilities add to ``seftpilot check``: rules offline, servers online.

Each check takes the settings and returns a one-line description of what it saw, or raises
a SeftpilotError whose message and hint the operator reads. Connection checks only log
in and look: they never flag, move, upload or send anything.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from seftpilot.config import Settings, SftpEndpoint

Check = tuple[str, Callable[[Settings], str]]


def offline_checks() -> list[Check]:
    from seftpilot.adapters.rules_files import check_configured_rules

    return [("rules", check_configured_rules)]


def _imap(cfg: Settings) -> str:
    from seftpilot.adapters.imap import ImapMailbox
    from seftpilot.adapters.oauth import OAuthTokenProvider

    provider = OAuthTokenProvider(cfg.imap.oauth) if cfg.imap.auth == "xoauth2" else None
    mailbox = ImapMailbox(cfg.imap, token_provider=provider)
    try:
        mailbox.connect()
        folder = mailbox.select(cfg.imap.folder, readonly=True)
    finally:
        mailbox.close()
    return (
        f"{cfg.imap.username}@{cfg.imap.host}:{cfg.imap.port} ({cfg.imap.security}, "
        f"{cfg.imap.auth}): {folder.name} holds {folder.exists} messages"
    )


def _smtp(cfg: Settings) -> str:
    from seftpilot.adapters.smtp import Mailer

    Mailer(cfg.smtp).check()
    return f"{cfg.smtp.host}:{cfg.smtp.port} ({cfg.smtp.security}) accepts us"


def _sftp(endpoint: SftpEndpoint, _cfg: Settings) -> str:
    from seftpilot.adapters.sftp import SftpClient

    with SftpClient(endpoint) as client:
        files = client.list()
    return (
        f"{endpoint.username}@{endpoint.host}:{endpoint.port} host key pinned, "
        f"{len(files)} file(s) in {endpoint.remote_dir}"
    )


def connect_checks(cfg: Settings) -> list[Check]:
    checks: list[Check] = [("imap", _imap), ("smtp", _smtp)]
    for agreement in cfg.agreement:
        if agreement.upload.transport == "sftp" and agreement.upload.sftp is not None:
            checks.append((f"{agreement.nic} upload", partial(_sftp, agreement.upload.sftp)))
        if agreement.download.source == "sftp" and agreement.download.sftp is not None:
            checks.append((f"{agreement.nic} download", partial(_sftp, agreement.download.sftp)))
    if cfg.partner.sftp is not None:
        checks.append(("partner drop", partial(_sftp, cfg.partner.sftp)))
    return checks
