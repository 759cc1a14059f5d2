"""The checks that capabilities add to ``seftpilot check``: rules offline, servers online.

Each check takes the settings and returns a one-line description of what it saw, or raises
a SeftpilotError whose message and hint the operator reads. Connection checks only log
in and look: they never flag, move, upload or send anything.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from seftpilot.config import Settings, SftpEndpoint
from seftpilot.errors import ConfigError

Check = tuple[str, Callable[[Settings], str]]


def offline_checks() -> list[Check]:
    from seftpilot.adapters.rules_files import check_configured_rules

    return [("rules", check_configured_rules)]


def _not_without_secrets(cfg: Settings, server: str) -> None:
    """A server whose secret is missing is not tried: the login would only be refused (an
    AuthenticationError, exit 1) for what is a configuration mistake (exit 2)."""
    from seftpilot.service.checks import missing_secrets

    keys = [m.key for m in missing_secrets(cfg) if m.server == server]
    if keys:
        raise ConfigError(f"not tried: {', '.join(keys)} missing (see the secrets lines)")


def _imap(cfg: Settings) -> str:
    from seftpilot.adapters.imap import ImapMailbox
    from seftpilot.adapters.oauth import OAuthTokenProvider

    _not_without_secrets(cfg, "imap")
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

    _not_without_secrets(cfg, "smtp")
    Mailer(cfg.smtp).check()
    return f"{cfg.smtp.host}:{cfg.smtp.port} ({cfg.smtp.security}) accepts us"


def _sftp(name: str, endpoint: SftpEndpoint, cfg: Settings) -> str:
    from seftpilot.adapters.sftp import SftpClient

    _not_without_secrets(cfg, name)
    with SftpClient(endpoint) as client:
        files = client.list()
    return (
        f"{endpoint.username}@{endpoint.host}:{endpoint.port} host key pinned, "
        f"{len(files)} file(s) in {endpoint.remote_dir}"
    )


def connect_checks(cfg: Settings) -> list[Check]:
    from seftpilot.service.checks import sftp_endpoints

    checks: list[Check] = [("imap", _imap), ("smtp", _smtp)]
    for use in sftp_endpoints(cfg):
        checks.append((use.name, partial(_sftp, use.name, use.endpoint)))
    return checks
